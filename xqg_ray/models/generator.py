"""Query generators: passages in, n queries per passage in one target language out.

`HFGenerator` is the xQG generator: a seq2seq checkpoint (mT5 doc2query) prompted with
`Generate a {language} question for this passage: {title} {passage}` and sampled with top-k
(defaults in `GeneratorConfig` are the published settings). `CT2Generator` runs the same
checkpoint through CTranslate2 (converted once, int8 on the CPU), with the same inputs,
sampling and output; `generator.engine` picks one (`auto`: CTranslate2 when it is installed).
Every generator says which engine it runs in `engine` (e.g. `ctranslate2-int8`, `hf-float32`),
so callers can record which engine produced a figure. Other backends (the lead's
`question_split` stand-in) plug in through `register_generator`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import AutoModelForSeq2SeqLM, LogitsProcessorList

from xqg_ray.config import GeneratorConfig
from xqg_ray.errors import ConfigError, ModelError
from xqg_ray.models import ct2, vocabulary
from xqg_ray.models.device import resolve_device, resolve_dtype
from xqg_ray.models.loading import (
    from_pretrained,
    load_model_config,
    load_tokenizer,
    resolve_model_path,
)
from xqg_ray.models.prompts import build_prompt, prompts_for
from xqg_ray.models.vocabulary import AllowedTokensLogitsProcessor


class Generator(Protocol):
    name: str
    engine: str

    def generate(
        self, titles: Sequence[str], texts: Sequence[str], language: str
    ) -> list[list[str]]:
        """For each passage, its generated queries in `language` (ISO 639-1), in order."""
        ...


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
        path, _ = _seq2seq_checkpoint(cfg)
        self.device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, self.device)
        if cfg.dtype == "auto" and dtype == torch.float16:
            dtype = torch.float32  # T5-family activations overflow in fp16 and decode garbage
        self.engine = "hf-" + str(dtype).removeprefix("torch.")
        self.tokenizer = load_tokenizer(path)
        self.model = from_pretrained(AutoModelForSeq2SeqLM.from_pretrained, path, dtype=dtype)
        self.model.to(self.device).eval()
        self.allowed = _allowed_tokens(cfg, self.tokenizer)
        if self.allowed is not None:
            self.engine += "-restricted"

    def generate(
        self, titles: Sequence[str], texts: Sequence[str], language: str
    ) -> list[list[str]]:
        return _decode(self.tokenizer, self.generate_ids(titles, texts, language))

    def generate_ids(
        self, titles: Sequence[str], texts: Sequence[str], language: str
    ) -> list[list[list[int]]]:
        """For each passage, the token ids of its n queries (no decoder start, EOS or padding)."""
        prompts = prompts_for(self.cfg, titles, texts, language)
        n = self.cfg.queries_per_language
        results: list[list[list[int]]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(self.cfg.seed)
            for start in range(0, len(order), self.cfg.batch_size):
                index = order[start : start + self.cfg.batch_size]
                queries = self._generate_batch([prompts[i] for i in index], language)
                for position, i in enumerate(index):
                    results[i] = queries[position * n : (position + 1) * n]
        return results

    def _generate_batch(self, prompts: list[str], language: str) -> list[list[int]]:
        batch = self.tokenizer(
            prompts,
            padding=True,
            truncation=True,
            max_length=self.cfg.max_input_length,
            return_tensors="pt",
        ).to(self.device)
        sampling = {"do_sample": True, "top_k": self.cfg.top_k} if self.cfg.do_sample else {}
        fixed = self.cfg.fixed_output_tokens
        lengths = (
            {"max_new_tokens": fixed, "min_new_tokens": fixed}
            if fixed
            else {"max_new_tokens": self.cfg.max_new_tokens}
        )
        n = self.cfg.queries_per_language
        if self.allowed is not None:
            allowed = _allowed_for(self.allowed, language)
            sampling["logits_processor"] = LogitsProcessorList(
                [AllowedTokensLogitsProcessor(allowed, self.model.config.vocab_size)]
            )
        output = self.model.generate(
            **batch, **sampling, **lengths, num_return_sequences=n if self.cfg.do_sample else 1
        )
        if not self.cfg.do_sample:  # greedy: one sequence per passage, repeated n times
            output = output.repeat_interleave(n, dim=0)
        if fixed:  # every row has exactly `fixed` new tokens: keep them all, pad id included
            return output[:, 1:].tolist()
        return [_strip_row(row, self.tokenizer) for row in output[:, 1:].tolist()]


class CT2Generator:
    """The same checkpoint, inputs, sampling and output as `HFGenerator`, run by CTranslate2.

    The checkpoint is converted once per compute type (`ct2.ensure_converted`). Inputs are
    tokenized by the checkpoint's tokenizer with the same truncation (the last kept token is
    `</s>`); sampling is `beam_size=1, sampling_topk=top_k, num_hypotheses=n`;
    `max_decoding_length` = `max_new_tokens`, which, as in Hugging Face, counts new tokens
    including EOS and not the decoder start token. Passages are batched by tokens: up to
    `batch_size * max_input_length` input tokens per batch, sorted by length. CPU threads come
    from the actor's share (`ct2.cpu_threads`).

    CTranslate2 seeds a worker thread's random generator once, when the thread first samples;
    so that every call is seeded with `cfg.seed`, as `HFGenerator`'s is, each call runs on a
    translator that has not sampled yet (a fresh one after the first call: its weights load from
    the page cache in `translator_load_s`, small next to a part's generation time). Cost probes
    time generation without that reload (`keep_translator`) and account for it separately.
    """

    def __init__(self, cfg: GeneratorConfig):
        self.cfg = cfg
        self.name = cfg.name
        path, config = _seq2seq_checkpoint(cfg)
        self.device = resolve_device(cfg.device)
        self.compute_type = ct2.resolve_compute_type(cfg.compute_type, self.device)
        self.engine = f"ctranslate2-{self.compute_type}"
        self.tokenizer = load_tokenizer(path)
        self.model_dir = ct2.ensure_converted(
            path, config, self.compute_type, shown_as=cfg.model, kind="seq2seq"
        )
        self.allowed = _allowed_tokens(cfg, self.tokenizer)
        if self.allowed is not None:
            self.model_dir = _with_vmap(
                self.model_dir, path, config, cfg, self.tokenizer, self.allowed
            )
            self.engine += "-restricted"
        # a model that does not load fails here, not in the first call, which then uses it
        start = time.perf_counter()
        self._next_translator = self._translator()
        self.translator_load_s = time.perf_counter() - start  # what each later call reloads
        self.reload_per_call = True

    def keep_translator(self) -> None:
        """Cost probes only: from the next call on, every call reuses one translator, so that
        timing leaves out the per-call reload; calls after the next one are no longer seeded
        with `cfg.seed` (they continue the translator's random stream)."""
        self.reload_per_call = False

    def _translator(self):
        import ctranslate2

        return ctranslate2.Translator(
            self.model_dir,
            compute_type=self.compute_type,
            inter_threads=1,
            **ct2.device_args(self.device),
        )

    def generate(
        self, titles: Sequence[str], texts: Sequence[str], language: str
    ) -> list[list[str]]:
        return _decode(self.tokenizer, self.generate_ids(titles, texts, language))

    def generate_ids(
        self, titles: Sequence[str], texts: Sequence[str], language: str
    ) -> list[list[list[int]]]:
        """For each passage, the token ids of its n queries (no decoder start, EOS or padding)."""
        import ctranslate2

        prompts = prompts_for(self.cfg, titles, texts, language)
        if not prompts:
            return []
        if self.allowed is not None:
            _allowed_for(self.allowed, language)  # the vocabulary map knows cfg.languages only
        ids = self.tokenizer(prompts, truncation=True, max_length=self.cfg.max_input_length)
        source = [self.tokenizer.convert_ids_to_tokens(row) for row in ids["input_ids"]]
        ctranslate2.set_random_seed(self.cfg.seed)  # read by a fresh translator's thread
        translator = self._next_translator or self._translator()
        self._next_translator = None if self.reload_per_call else translator
        results = translator.translate_batch(
            source,
            max_batch_size=self.cfg.batch_size * self.cfg.max_input_length,
            batch_type="tokens",
            use_vmap=self.allowed is not None,
            **decoding_options(self.cfg),
        )
        n = self.cfg.queries_per_language
        out = []
        for result in results:
            hypotheses = [self.tokenizer.convert_tokens_to_ids(h) for h in result.hypotheses]
            out.append(hypotheses * n if len(hypotheses) == 1 and n > 1 else hypotheses)
        return out


def decoding_options(cfg: GeneratorConfig) -> dict:
    """`translate_batch` options equal to HFGenerator's decoding: top-k sampling (or greedy),
    n hypotheses, new-token limits (exact with `fixed_output_tokens`), no input truncation
    (inputs arrive truncated by the tokenizer, `</s>` kept)."""
    fixed = cfg.fixed_output_tokens
    options: dict = {
        "beam_size": 1,
        "max_input_length": 0,
        "max_decoding_length": fixed or cfg.max_new_tokens,
        "min_decoding_length": fixed or 1,
    }
    if cfg.do_sample:
        options |= {"sampling_topk": cfg.top_k, "num_hypotheses": cfg.queries_per_language}
    else:  # greedy: one hypothesis, repeated n times as Hugging Face returns it
        options |= {"sampling_topk": 1, "num_hypotheses": 1}
    return options


def _allowed_tokens(cfg: GeneratorConfig, tokenizer: Any) -> dict[str, list[int]] | None:
    """Each configured language's output token ids when `restrict_vocabulary` is on."""
    if not cfg.restrict_vocabulary:
        return None
    if not cfg.vocabulary_samples:
        raise ConfigError(
            "generator.restrict_vocabulary needs generator.vocabulary_samples: a folder of "
            "<lang>.txt files or a JSONL file of {lang, text} rows"
        )
    samples = vocabulary.load_samples(cfg.vocabulary_samples, cfg.languages)
    return {lang: vocabulary.allowed_token_ids(tokenizer, texts) for lang, texts in samples.items()}


def _allowed_for(allowed: dict[str, list[int]], language: str) -> list[int]:
    if language not in allowed:
        raise ConfigError(
            f"restrict_vocabulary: {language!r} is not in generator.languages "
            f"({', '.join(sorted(allowed))}), so it has no output vocabulary"
        )
    return allowed[language]


def _with_vmap(
    model_dir: str,
    path: str,
    config: Any,
    cfg: GeneratorConfig,
    tokenizer: Any,
    allowed: dict[str, list[int]],
) -> str:
    """The converted model plus a vocabulary map of the configured languages (cached)."""
    text = vocabulary.vmap_text(tokenizer, cfg.prompt, allowed)
    return ct2.cached_build(
        ct2.ct2_cache_dir(),
        path,
        config,
        {"base": Path(model_dir).name, "vmap": vocabulary.digest({"vmap": [text]})},
        lambda out: vocabulary.add_vmap(model_dir, text, out),
        name=Path(model_dir).name.rsplit("-", 1)[0] + "-vmap",
        complete="vmap.txt",
    )


def _seq2seq_checkpoint(cfg: GeneratorConfig) -> tuple[str, Any]:
    build_prompt(cfg.prompt, "en", "", "")  # a bad template fails before any model loads
    path = resolve_model_path(cfg.model)
    config = load_model_config(path)
    if not config.is_encoder_decoder:
        raise ModelError(
            f"{cfg.model} is a {config.model_type} checkpoint; the generator needs a "
            "sequence-to-sequence model (mT5 / T5 style)"
        )
    return path, config


def _strip_row(row: list[int], tokenizer: Any) -> list[int]:
    """New tokens up to (not including) the first EOS; padding after it dropped."""
    eos = tokenizer.eos_token_id
    return row[: row.index(eos)] if eos in row else row


def _decode(tokenizer: Any, ids: list[list[list[int]]]) -> list[list[str]]:
    """Special tokens stripped, whitespace trimmed; an empty query stays `""`."""
    return [
        [text.strip() for text in tokenizer.batch_decode(group, skip_special_tokens=True)]
        for group in ids
    ]


def hf_backend(cfg: GeneratorConfig) -> Generator:
    """`generator.backend: hf` on the engine `generator.engine` names (`auto`: CTranslate2 when
    the package imports, Hugging Face generate otherwise)."""
    engine = cfg.engine
    if engine == "auto":
        engine = "ctranslate2" if ct2.available() else "hf"
    if engine == "ctranslate2":
        if not ct2.available():
            raise ConfigError(
                "generator.engine: ctranslate2 is not installed (pip install ctranslate2)"
            )
        return CT2Generator(cfg)
    return HFGenerator(cfg)


GENERATOR_BACKENDS: dict[str, Callable[[GeneratorConfig], Generator]] = {"hf": hf_backend}


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
