"""The inputs the GPU and engine benchmarks time: random token ids and the xQG steps that run
a model on them; texts of known token lengths for the product's classes.

The GPU benchmark calls the Hugging Face models directly (naive against optimised use of one
model) on random token ids. The engine benchmark calls the product's generator and encoder
classes, which read text: its texts are made of pseudo-words that the random-weight checkpoints'
offline tokenizer, trained on them, reads as one token each, so a text of n words is n tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
from transformers import MT5ForConditionalGeneration

from xqg_ray.bench.synthetic import vocabulary

FIRST_TOKEN_ID = 5  # random ids stay clear of pad (0), eos (1) and the other special ids
WORDS = 600  # pseudo-words of the engine benchmark's texts; the tokenizer keeps most whole


@dataclass(frozen=True)
class Workload:
    """What is measured: model shapes, the xQG decoding settings and how many inputs each
    variant processes (naive variants are slow, so they see a prefix of the same inputs)."""

    mt5: dict
    mbert: dict
    generate_input_length: int = 256
    new_tokens: int = 32
    sequences_per_input: int = 5
    top_k: int = 10
    encode_length: int = 128
    min_length_fraction: float = 0.5
    generate_inputs: int = 512
    generate_batch_size: int = 128
    generate_naive_inputs: int = 16
    generate_naive_batch_size: int = 16
    encode_inputs: int = 16384
    encode_batch_size: int = 512
    encode_naive_inputs: int = 512
    encode_naive_batch_size: int = 32


def random_inputs(
    rng: np.random.Generator, count: int, max_length: int, min_fraction: float, vocab: int
) -> list[torch.Tensor]:
    """Token-id sequences with lengths uniform in [min_fraction * max_length, max_length]."""
    low = max(1, int(round(min_fraction * max_length)))
    lengths = rng.integers(low, max_length + 1, size=count)
    return [
        torch.from_numpy(rng.integers(FIRST_TOKEN_ID, vocab, size=int(n), dtype=np.int64))
        for n in lengths
    ]


def encode_step(model: Callable) -> Callable[[torch.Tensor, torch.Tensor], int]:
    """One encoder batch: CLS vectors back on the host, as the encode stage uses them."""

    def step(ids: torch.Tensor, mask: torch.Tensor) -> int:
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden[:, 0].float().cpu()  # the copy to the host waits for the GPU, as in the pipeline
        return ids.shape[0]

    return step


def generate_step(
    model: MT5ForConditionalGeneration, workload: Workload
) -> Callable[[torch.Tensor, torch.Tensor], int]:
    """One generation batch with the xQG decoding settings; returns generated tokens."""
    m = workload.new_tokens

    def step(ids: torch.Tensor, mask: torch.Tensor) -> int:
        output = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            top_k=workload.top_k,
            max_new_tokens=m,
            min_new_tokens=m,
            num_return_sequences=workload.sequences_per_input,
        )
        if output.shape[1] != m + 1:  # decoder start token + m new tokens
            raise RuntimeError(f"generated {output.shape[1] - 1} tokens, expected {m}")
        return output.shape[0] * m

    return step


@cache
def word_corpus() -> tuple[str, ...]:
    """What the engine benchmark's offline tokenizer is trained on: 2,000 sentences of 20 of the
    `WORDS` pseudo-words drawn evenly, so that its pieces are mostly those words, whole."""
    words = vocabulary(WORDS)
    rng = np.random.default_rng(0)
    return tuple(" ".join(rng.choice(words, 20)) for _ in range(2000))


def whole_words(tokenizer: Any) -> list[str]:
    """The distinct pseudo-words `tokenizer` reads as one token each."""
    words = list(dict.fromkeys(vocabulary(WORDS).tolist()))
    ids = tokenizer(words, add_special_tokens=False)["input_ids"]
    return [word for word, row in zip(words, ids, strict=True) if len(row) == 1]


def word_texts(rng: np.random.Generator, words: Sequence[str], counts: Sequence[int]) -> list[str]:
    """One text per count, of that many words drawn from `words` (n whole words: n tokens)."""
    return [" ".join(rng.choice(words, int(n))) for n in counts]
