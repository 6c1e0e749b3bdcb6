"""The model work the GPU and engine benchmarks time: small shapes, random inputs, the steps.

Both benchmarks run the same xQG generation step and the same encoder step on the same kind of
random token inputs, so their figures are comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import MT5ForConditionalGeneration

FIRST_TOKEN_ID = 5  # random ids stay clear of pad (0), eos (1) and the other special ids


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


MT5_SMALL = {
    "vocab_size": 1024,
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 128,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
}
MBERT_SMALL = {
    "vocab_size": 1024,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 256,
}


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
