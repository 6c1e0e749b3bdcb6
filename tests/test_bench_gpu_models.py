"""The GPU model benchmark: its --small CPU path runs and reports, and its FLOP formulas agree
with a hand computation and with torch's FLOP counter on real (tiny) Hugging Face models."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertModel, MT5ForConditionalGeneration

from xqg_ray.bench.flops import EncoderShape, Seq2SeqShape
from xqg_ray.bench.gpu_models import main, peak_bf16_tflops
from xqg_ray.models.shapes import MBERT_MINI, MT5_MINI, bert_config, mt5_config


def test_encoder_flops_match_a_hand_computation():
    shape = EncoderShape(layers=1, d_model=2, d_attn=2, d_ff=4)
    # linear weights: Q K V O 4*2*2 = 16, FFN 2*2*4 = 16 -> 32 per token
    # s = 3: 2*32*3 = 192 matmul FLOPs + attention 4*1*2*3*3 = 72 -> 264
    assert shape.forward_flops([3]) == 264
    assert shape.forward_flops([3, 3]) == 528


def test_generation_flops_match_a_hand_computation():
    shape = Seq2SeqShape(
        layers=1, decoder_layers=1, d_model=2, d_attn=2, d_ff=2, vocab=3, gated=True
    )
    # gated FFN 3*2*2 = 12; encoder weights 4*2*2 + 12 = 28; per decoder token: self Q K V O and
    # cross Q O 6*2*2 = 24, FFN 12, LM head 2*3 = 6 -> 42.
    # s = 2 input tokens, m = 2 new tokens:
    #   encoder 2*28*2 + 4*1*2*2*2 = 112 + 32 = 144; cross K/V 4*1*2*2*2 = 32 (once per input)
    #   per sequence 2*42*2 + self-attention 2*1*2*2*3 + cross-attention 4*1*2*2*2
    #              = 168 + 24 + 32 = 224
    assert shape.generation_flops([2], new_tokens=2, sequences_per_input=1) == 144 + 32 + 224
    assert shape.generation_flops([2], new_tokens=2, sequences_per_input=3) == 144 + 32 + 3 * 224


def test_encoder_flops_equal_torch_flop_counter_on_a_real_bert():
    torch.manual_seed(0)
    config = bert_config(MBERT_MINI)
    model = BertModel(config, add_pooling_layer=False).eval()
    model.set_attn_implementation("eager")  # plain matmuls, which the counter sees
    ids = torch.randint(5, config.vocab_size, (1, 37))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert EncoderShape.from_config(config).forward_flops([37]) == counter.get_total_flops()


def test_generation_flops_equal_torch_flop_counter_on_a_real_mt5():
    torch.manual_seed(0)
    config = mt5_config(MT5_MINI)
    model = MT5ForConditionalGeneration(config).eval()
    model.set_attn_implementation("eager")
    shape = Seq2SeqShape.from_config(config)
    s, m = 23, 7
    ids = torch.randint(5, config.vocab_size, (1, s))
    measured = {}
    for n in (1, 3):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                top_k=10,
                max_new_tokens=m,
                min_new_tokens=m,
                num_return_sequences=n,
            )
        assert out.shape == (n, m + 1)
        measured[n] = counter.get_total_flops()
    assert shape.generation_flops([s], m, 1) == measured[1]
    # Hugging Face projects the encoder states to cross-attention K and V once per returned
    # sequence; the formula counts that once per input (the work actually needed).
    cross_kv = 4 * config.num_decoder_layers * config.d_model * config.num_heads * config.d_kv * s
    assert shape.generation_flops([s], m, 3) == measured[3] - 2 * cross_kv


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", None),
        ("Tesla T4", None),
    ],
)
def test_peak_table_matches_device_names(name, peak):
    assert peak_bf16_tflops(name) == peak


@pytest.mark.timeout(120)
def test_small_cpu_run_writes_a_complete_report(tmp_path):
    out = tmp_path / "gpu_models.json"
    printed = main(["--small", "--device", "cpu", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(printed))
    assert report["small"] is True
    assert report["device"]["type"] == "cpu"
    assert report["torch"] == torch.__version__
    assert report["peak_bf16_tflops"] is None
    assert report["shapes"]["mt5"]["d_model"] == MT5_MINI["d_model"]
    assert report["shapes"]["mbert"]["hidden_size"] == MBERT_MINI["hidden_size"]
    workload = report["workload"]
    for key, unit in (("generation", "generated tokens"), ("encoding", "passages")):
        section = report[key]
        assert section["unit"] == unit
        for name in ("naive", "naive_batched", "optimised"):
            row = section[name]
            assert row["seconds"] > 0
            assert row["units_per_s"] > 0
            assert row["achieved_gflops"] > 0
            assert row["flops"] > 0
            assert row["fraction_of_peak"] is None  # no peak on the CPU
        assert section["naive"]["batch_size"] == 1
        assert section["naive"]["dtype"] == "float32"
        assert section["optimised"]["sort_by_length"] is True
        assert section["speedup_vs_naive"] == pytest.approx(
            section["optimised"]["units_per_s"] / section["naive"]["units_per_s"], rel=0.01
        )
    generation = report["generation"]
    tokens_per_input = workload["new_tokens"] * workload["sequences_per_input"]
    assert generation["optimised"]["units"] == workload["generate_inputs"] * tokens_per_input
    assert generation["naive"]["units"] == workload["generate_naive_inputs"] * tokens_per_input
    assert report["encoding"]["optimised"]["units"] == workload["encode_inputs"]
    assert report["goals"]["encoding_met"] is None
    assert isinstance(report["goals"]["generation_met"], bool)
