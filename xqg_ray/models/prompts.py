"""The generator's input text: the prompt template filled for one passage and one language.

Its own module so that the generators and the vocabulary restriction (which tokenises the prompt
to find the language's name in it) share one definition without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence

from xqg_ray.config import GeneratorConfig
from xqg_ray.errors import ConfigError
from xqg_ray.languages import language_name


def build_prompt(template: str, language: str, title: str, passage: str) -> str:
    """The generator input: the template filled with the language's English name."""
    try:
        return template.format(language=language_name(language), title=title, passage=passage)
    except (KeyError, IndexError) as exc:
        raise ConfigError(
            f"generator.prompt {template!r}: only {{language}}, {{title}} and {{passage}} "
            f"may appear in braces (got {exc})"
        ) from exc


def prompts_for(
    cfg: GeneratorConfig, titles: Sequence[str], texts: Sequence[str], language: str
) -> list[str]:
    """One prompt per passage, in order."""
    if len(titles) != len(texts):
        raise ValueError(f"{len(titles)} titles for {len(texts)} passages")
    return [
        build_prompt(cfg.prompt, language, title, text)
        for title, text in zip(titles, texts, strict=True)
    ]
