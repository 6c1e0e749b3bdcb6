"""Matmul FLOPs of encoding and of xQG generation, from a model's sizes.

The GPU and engine benchmarks report achieved FLOP/s and a share of the device's peak; both count
work with this one arithmetic (checked against torch's FLOP counter in the tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import BertConfig, MT5Config


@dataclass(frozen=True)
class EncoderShape:
    """The sizes of a BERT encoder that its forward FLOPs depend on."""

    layers: int
    d_model: int
    d_attn: int
    d_ff: int

    @classmethod
    def from_config(cls, config: BertConfig) -> EncoderShape:
        return cls(
            config.num_hidden_layers,
            config.hidden_size,
            config.hidden_size,
            config.intermediate_size,
        )

    @property
    def linear_params(self) -> int:
        """Weights every token is multiplied by: Q, K, V, O and the two FFN matrices."""
        return self.layers * (4 * self.d_model * self.d_attn + 2 * self.d_model * self.d_ff)

    def forward_flops(self, lengths: Sequence[int]) -> int:
        """Matmul FLOPs of encoding passages of these (unpadded) token lengths."""
        return sum(
            2 * self.linear_params * s + 4 * self.layers * self.d_attn * s * s for s in lengths
        )


@dataclass(frozen=True)
class Seq2SeqShape:
    """The sizes of a T5-style encoder-decoder that its generation FLOPs depend on."""

    layers: int
    decoder_layers: int
    d_model: int
    d_attn: int
    d_ff: int
    vocab: int
    gated: bool

    @classmethod
    def from_config(cls, config: MT5Config) -> Seq2SeqShape:
        return cls(
            config.num_layers,
            config.num_decoder_layers,
            config.d_model,
            config.num_heads * config.d_kv,
            config.d_ff,
            config.vocab_size,
            config.is_gated_act,
        )

    @property
    def _ffn_params(self) -> int:
        return (3 if self.gated else 2) * self.d_model * self.d_ff

    @property
    def encoder_linear_params(self) -> int:
        return self.layers * (4 * self.d_model * self.d_attn + self._ffn_params)

    @property
    def decoder_token_params(self) -> int:
        """Weights each generated token is multiplied by: self-attention Q K V O, cross-attention
        Q and O, the FFN, and the LM head."""
        per_layer = 6 * self.d_model * self.d_attn + self._ffn_params
        return self.decoder_layers * per_layer + self.d_model * self.vocab

    def generation_flops(
        self, input_lengths: Sequence[int], new_tokens: int, sequences_per_input: int
    ) -> int:
        """Matmul FLOPs of sampling `sequences_per_input` sequences of `new_tokens` tokens for
        each input (KV cache; encoder and cross-attention K/V once per input)."""
        m, n = new_tokens, sequences_per_input
        enc_layers, dec_layers, a = self.layers, self.decoder_layers, self.d_attn
        total = 0
        for s in input_lengths:
            encoder = 2 * self.encoder_linear_params * s + 4 * enc_layers * a * s * s
            cross_kv = 4 * dec_layers * self.d_model * a * s
            sequence = (
                2 * self.decoder_token_params * m
                + 2 * dec_layers * a * m * (m + 1)
                + 4 * dec_layers * a * s * m
            )
            total += encoder + cross_kv + n * sequence
        return total
