"""Query generators: passages in, n queries per passage in one target language out.

`HFGenerator` is the xQG generator: a seq2seq checkpoint (mT5 doc2query) prompted with
`Generate a {language} question for this passage: {title} {passage}` and sampled with top-k
(defaults in `GeneratorConfig` are the published settings). Other backends (the lead's
`question_split` stand-in) plug in through `register_generator`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from transformers import AutoModelForSeq2SeqLM

from xqg_ray.config import GeneratorConfig
from xqg_ray.errors import ConfigError, ModelError
from xqg_ray.languages import language_name
from xqg_ray.models.device import resolve_device, resolve_dtype
from xqg_ray.models.loading import (
    from_pretrained,
    load_model_config,
    load_tokenizer,
    resolve_model_path,
)


class Generator(Protocol):
    name: str

    def generate(
        self, titles: Sequence[str], texts: Sequence[str], language: str
    ) -> list[list[str]]:
        """For each passage, its generated queries in `language` (ISO 639-1), in order."""
        ...


def build_prompt(template: str, language: str, title: str, passage: str) -> str:
    """The generator input: the template filled with the language's English name."""
    try:
        return template.format(language=language_name(language), title=title, passage=passage)
    except (KeyError, IndexError) as exc:
        raise ConfigError(
            f"generator.prompt {template!r}: only {{language}}, {{title}} and {{passage}} "
            f"may appear in braces (got {exc})"
        ) from exc


class HFGenerator:
    """A Hugging Face seq2seq model sampling `queries_per_language` queries per passage.

    Inputs are truncated to `max_input_length` tokens and batched by length. Sampling is seeded
    with `cfg.seed` at every call (inside a forked RNG, so the caller's random state is left
    alone): the same inputs and settings give the same queries, whichever worker runs them.
    Special tokens are stripped; a query that decodes to an empty string is returned as `""`,
    and the caller decides whether to drop it.
    """

    def __init__(self, cfg: GeneratorConfig):
        self.cfg = cfg
        self.name = cfg.name
        build_prompt(cfg.prompt, "en", "", "")  # a bad template fails before any model loads
        path = resolve_model_path(cfg.model)
        config = load_model_config(path)
        if not config.is_encoder_decoder:
            raise ModelError(
                f"{cfg.model} is a {config.model_type} checkpoint; the generator needs a "
                "sequence-to-sequence model (mT5 / T5 style)"
            )
        self.device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, self.device)
        if cfg.dtype == "auto" and dtype == torch.float16:
            dtype = torch.float32  # T5-family activations overflow in fp16 and decode garbage
        self.tokenizer = load_tokenizer(path)
        self.model = from_pretrained(AutoModelForSeq2SeqLM.from_pretrained, path, dtype=dtype)
        self.model.to(self.device).eval()

    def generate(
        self, titles: Sequence[str], texts: Sequence[str], language: str
    ) -> list[list[str]]:
        if len(titles) != len(texts):
            raise ValueError(f"{len(titles)} titles for {len(texts)} passages")
        prompts = [
            build_prompt(self.cfg.prompt, language, title, text)
            for title, text in zip(titles, texts, strict=True)
        ]
        n = self.cfg.queries_per_language
        results: list[list[str]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(self.cfg.seed)
            for start in range(0, len(order), self.cfg.batch_size):
                index = order[start : start + self.cfg.batch_size]
                queries = self._generate_batch([prompts[i] for i in index])
                for position, i in enumerate(index):
                    results[i] = queries[position * n : (position + 1) * n]
        return results

    def _generate_batch(self, prompts: list[str]) -> list[str]:
        batch = self.tokenizer(
            prompts,
            padding=True,
            truncation=True,
            max_length=self.cfg.max_input_length,
            return_tensors="pt",
        ).to(self.device)
        sampling = {"do_sample": True, "top_k": self.cfg.top_k} if self.cfg.do_sample else {}
        output = self.model.generate(
            **batch,
            **sampling,
            max_new_tokens=self.cfg.max_new_tokens,
            num_return_sequences=self.cfg.queries_per_language,
        )
        decoded = self.tokenizer.batch_decode(output, skip_special_tokens=True)
        return [text.strip() for text in decoded]


GENERATOR_BACKENDS: dict[str, Callable[[GeneratorConfig], Generator]] = {"hf": HFGenerator}


def register_generator(backend: str, factory: Callable[[GeneratorConfig], Generator]) -> None:
    """Make `generator.backend: <backend>` build `factory(cfg)`."""
    GENERATOR_BACKENDS[backend] = factory


def load_generator(cfg: GeneratorConfig) -> Generator:
    """The generator the configuration names; an unknown backend is a configuration error."""
    factory = GENERATOR_BACKENDS.get(cfg.backend)
    if factory is None:
        known = ", ".join(sorted(GENERATOR_BACKENDS))
        raise ConfigError(
            f"generator.backend {cfg.backend!r} is not available; registered backends: {known}"
        )
    return factory(cfg)
