"""Restricted output vocabulary per target language (off by default: `restrict_vocabulary`).

mT5's 250k-row LM head is most of a decoding step's FLOPs (docs/engines.md). A query in one
language needs only that language's tokens, so generation may pick from them alone:
- the output vocabulary of a language is every token of its sample texts
  (`generator.vocabulary_samples`) plus the special tokens;
- CTranslate2 computes only those rows of the LM head: a vocabulary map (`vmap.txt`) maps the
  language's name as the prompt tokenizes it (`▁German`) to its tokens, and `use_vmap=True`
  restricts each batch to the candidates of the names its inputs contain (a generate call is one
  language, so that is the language's set; a passage that itself names another language widens
  it to the union);
- Hugging Face generate masks every other token's logit to -inf (same distribution, no speed-up).

Restriction changes what the model may say. `vocabulary_fidelity` measures how much of the
unrestricted model's sampling mass the restriction keeps: at each decoding step, the share of
the top-k tokens' probability that falls inside the language's set (1.0: top-k sampling is
unchanged at that step).

Samples: a folder of `<lang>.txt` files (one text per line), or a JSONL file of
`{"lang": ..., "text": ...}` rows; local paths or any fsspec URL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor

from xqg_ray import storage
from xqg_ray.errors import ConfigError, ModelError
from xqg_ray.languages import language_name
from xqg_ray.models.prompts import build_prompt, prompts_for


def load_samples(source: str, languages: Iterable[str]) -> dict[str, list[str]]:
    """Sample texts per language from a folder of `<lang>.txt` or a JSONL file."""
    languages = list(languages)
    fs, path = storage.url_to_fs(source)
    samples: dict[str, list[str]] = {lang: [] for lang in languages}
    if fs.isdir(path):
        for lang in languages:
            file = f"{path.rstrip('/')}/{lang}.txt"
            if fs.exists(file):
                with fs.open(file, "r", encoding="utf-8") as handle:
                    samples[lang] = [line.strip() for line in handle if line.strip()]
    elif fs.exists(path):
        with fs.open(path, "r", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    lang, text = row["lang"], row["text"]
                except (ValueError, KeyError, TypeError) as exc:
                    raise ConfigError(
                        f"{source}:{number}: a vocabulary sample row needs lang and text"
                    ) from exc
                if lang in samples and str(text).strip():
                    samples[lang].append(str(text))
    else:
        raise ConfigError(f"generator.vocabulary_samples: {source} does not exist")
    missing = [lang for lang in languages if not samples[lang]]
    if missing:
        raise ConfigError(
            f"generator.vocabulary_samples: {source} has no sample text for {', '.join(missing)}"
        )
    return samples


def allowed_token_ids(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Every token id of the texts, plus the tokenizer's special tokens (EOS, pad, unk)."""
    ids: set[int] = set(tokenizer.all_special_ids)
    for start in range(0, len(texts), 512):
        for row in tokenizer(list(texts[start : start + 512]))["input_ids"]:
            ids.update(row)
    return sorted(ids)


def language_key(tokenizer: Any, prompt_template: str, language: str) -> list[str]:
    """The tokens that spell the language's name inside the prompt (the vmap key)."""
    name = language_name(language)
    prompt = tokenizer.tokenize(build_prompt(prompt_template, language, "", ""))
    for candidate in (tokenizer.tokenize(" " + name), tokenizer.tokenize(name)):
        candidate = [t for t in candidate if t != "▁"] or candidate
        width = len(candidate)
        if any(prompt[i : i + width] == candidate for i in range(len(prompt) - width + 1)):
            return candidate
    raise ModelError(
        f"restrict_vocabulary: the prompt does not spell {name!r} as its own tokens, so the "
        "vocabulary map has no key for it; the prompt must contain {language}"
    )


def vmap_text(tokenizer: Any, prompt_template: str, allowed: dict[str, list[int]]) -> str:
    """CTranslate2's vocabulary map: `<name tokens>\\t<allowed tokens>` per language."""
    lines = []
    for language, ids in sorted(allowed.items()):
        key = " ".join(language_key(tokenizer, prompt_template, language))
        tokens = tokenizer.convert_ids_to_tokens(ids)
        if any(" " in t or "\t" in t for t in tokens):
            tokens = [t for t in tokens if " " not in t and "\t" not in t]
        lines.append(f"{key}\t{' '.join(tokens)}")
    return "\n".join(lines) + "\n"


def digest(allowed: dict[str, list[int]]) -> str:
    return hashlib.sha256(json.dumps(allowed, sort_keys=True).encode()).hexdigest()[:16]


def add_vmap(model_dir: str, vmap: str, out_dir: Path) -> None:
    """A model folder that is `model_dir` plus `vmap.txt` (files linked, not copied)."""
    out_dir.mkdir(parents=True)
    for file in Path(model_dir).iterdir():
        if file.is_file() and file.name != "vmap.txt":
            (out_dir / file.name).symlink_to(file.resolve())
    (out_dir / "vmap.txt").write_text(vmap, encoding="utf-8")


class AllowedTokensLogitsProcessor(LogitsProcessor):
    """Hugging Face logits processor: every token outside `allowed` gets -inf."""

    def __init__(self, allowed: Sequence[int], vocab_size: int):
        self.mask = torch.full((vocab_size,), float("-inf"))
        self.mask[torch.as_tensor(list(allowed), dtype=torch.long)] = 0.0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(device=scores.device, dtype=scores.dtype)
        width = min(mask.shape[0], scores.shape[-1])
        scores = scores.clone()
        scores[..., :width] = scores[..., :width] + mask[:width]
        return scores


def vocabulary_fidelity(
    generator: Any,
    titles: Sequence[str],
    texts: Sequence[str],
    language: str,
    allowed: Sequence[int],
) -> dict[str, float]:
    """Sample without restriction with an `HFGenerator` and report, over all decoding steps of
    unfinished sequences, the share of each step's top-k probability mass inside `allowed`
    (mean, 5th percentile, minimum) and the share of sampled tokens inside it."""
    cfg = generator.cfg
    prompts = prompts_for(cfg, titles, texts, language)
    allowed_mask = torch.zeros(generator.model.config.vocab_size, dtype=torch.bool)
    allowed_mask[torch.as_tensor(list(allowed), dtype=torch.long)] = True
    shares: list[torch.Tensor] = []
    inside = total = 0
    eos = generator.tokenizer.eos_token_id
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(cfg.seed)
        for start in range(0, len(prompts), cfg.batch_size):
            batch = generator.tokenizer(
                prompts[start : start + cfg.batch_size],
                padding=True,
                truncation=True,
                max_length=cfg.max_input_length,
                return_tensors="pt",
            ).to(generator.device)
            output = generator.model.generate(
                **batch,
                do_sample=True,
                top_k=cfg.top_k,
                max_new_tokens=cfg.max_new_tokens,
                num_return_sequences=cfg.queries_per_language,
                output_logits=True,
                return_dict_in_generate=True,
            )
            sequences = output.sequences[:, 1:].cpu()
            alive = torch.ones(sequences.shape[0], dtype=torch.bool)
            for step, logits in enumerate(output.logits):
                probs = torch.softmax(logits.float().cpu(), dim=-1)
                top = probs.topk(cfg.top_k, dim=-1)
                in_set = allowed_mask[top.indices.clamp(max=allowed_mask.shape[0] - 1)]
                share = (top.values * in_set).sum(-1) / top.values.sum(-1)
                shares.append(share[alive])
                token = sequences[:, step]
                inside += int(allowed_mask[token.clamp(max=allowed_mask.shape[0] - 1)][alive].sum())
                total += int(alive.sum())
                alive &= token != eos
                if not alive.any():
                    break
    values = torch.cat(shares) if shares else torch.ones(1)
    return {
        "topk_mass_inside_mean": round(float(values.mean()), 4),
        "topk_mass_inside_p05": round(float(values.quantile(0.05)), 4),
        "topk_mass_inside_min": round(float(values.min()), 4),
        "sampled_tokens_inside": round(inside / total, 4) if total else 1.0,
        "steps": int(values.numel()),
        "allowed_tokens": len(allowed),
    }
