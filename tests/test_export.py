"""export.py: the ONNX export of the encoder and of every head equals bertkit fp32 on padded batches of real
text; int8 stays close; the folder is self-contained, written atomically, and bad requests are one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit import heads
from bertkit.batching import collate
from bertkit.checkpoint import MANIFEST
from bertkit.cli import main
from bertkit.heads import BertModel
from bertkit.infer import pool
from bertkit.tokenizer import Tokenizer
from conftest import real_texts

ort = pytest.importorskip("onnxruntime")

from bertkit.export import export, export_onnx  # noqa: E402  (needs the onnx extra)
from bertkit.onnx_model import OnnxModel  # noqa: E402

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tokenizer(minilm) -> Tokenizer:
    return Tokenizer.from_pretrained(minilm)


@pytest.fixture(scope="module")
def batches(tokenizer) -> list[dict[str, torch.Tensor]]:
    """Padded batches of real texts at several lengths: short SST-2 sentences mixed with long ones, sentence
    pairs (token type 1), and IMDB reviews cut at 128 and at 512 tokens beside short sentences."""
    texts = real_texts(24, 4)
    sst2, imdb = texts[:24], texts[24:]

    def batch(items, max_length):
        return collate([{k: getattr(e, k) for k in ("input_ids", "attention_mask", "token_type_ids")}
                        for e in (tokenizer.encode(*(t if isinstance(t, tuple) else (t,)), max_length=max_length)
                                  for t in items)])

    return [batch(sst2[::3], 128),                           # 8 sentences of every length: heavy padding
            batch(list(zip(sst2[1::4], sst2[2::4])), 128),   # pairs: token_type_ids 1 on the second text
            batch(imdb[:2] + sst2[:2], 128),
            batch(imdb + sst2[-2:], 512)]


def assert_outputs_equal(onnx_model: OnnxModel, torch_model, batches, extra: tuple[str, ...] = ()) -> None:
    """Every output the torch model gives, under the same name, equal within TOLERANCE on every batch
    (and the encoder's sentence_embedding equal to infer.pool's mean over real tokens)."""
    for b in batches:
        with torch.inference_mode():
            want = dict(torch_model(**b))
        got = onnx_model(**b)
        assert list(got) == list(want) + list(extra)
        if extra:
            want["sentence_embedding"] = pool(want["last_hidden_state"], b["attention_mask"], "mean")
        for name, value in want.items():
            assert got[name].shape == value.shape, name
            diff = float((got[name] - value).abs().max())
            assert diff <= TOLERANCE, f"{name} differs by {diff:.2e} at shape {tuple(b['input_ids'].shape)}"


def test_encoder_matches_bertkit(minilm, minilm_onnx, batches):
    ours = BertModel.from_pretrained(minilm)
    onnx_model = OnnxModel.from_pretrained(minilm_onnx)
    assert onnx_model.dtype == "fp32" and onnx_model.pooling == "mean"  # from the model's 1_Pooling/config.json
    assert [i.name for i in onnx_model.session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    for node in list(onnx_model.session.get_inputs()) + list(onnx_model.session.get_outputs()):
        assert node.shape[:2] == ["batch", "sequence"] or node.shape[:1] == ["batch"], node  # dynamic axes
    assert_outputs_equal(onnx_model, ours, batches, extra=("sentence_embedding",))


HEADS = [
    (heads.BertForSequenceClassification, {"num_labels": 3}),
    (heads.BertForTokenClassification, {"num_labels": 9}),
    (heads.BertForQuestionAnswering, {}),
    (heads.BertForMaskedLM, {}),
    (heads.BertForPreTraining, {}),
    (heads.BertForNextSentencePrediction, {}),
]


@pytest.mark.parametrize("cls, overrides", HEADS, ids=[c.__name__ for c, _ in HEADS])
def test_every_head_matches_bertkit(cls, overrides, minilm, batches, tmp_path):
    torch.manual_seed(0)  # the new head weights
    model = cls.from_pretrained(minilm, **overrides)
    folder = export_onnx(model, tmp_path / "out")
    onnx_model = OnnxModel.from_pretrained(folder)
    assert onnx_model.config.extra["architectures"] == [cls.__name__]
    assert_outputs_equal(onnx_model, model, batches[:3])  # the vocabulary-wide MLM logits: 128 tokens is enough


def test_int8_stays_close_to_fp32(minilm_onnx, minilm_onnx_int8, batches):
    fp32, int8 = OnnxModel.from_pretrained(minilm_onnx), OnnxModel.from_pretrained(minilm_onnx_int8)
    assert int8.dtype == "int8"
    assert os.path.getsize(minilm_onnx_int8 / "model.onnx") < 0.7 * os.path.getsize(minilm_onnx / "model.onnx")
    cos = torch.cat([torch.nn.functional.cosine_similarity(fp32(**b).sentence_embedding, int8(**b).sentence_embedding)
                     for b in batches])
    assert cos.min() > 0.95 and cos.mean() > 0.985, cos  # torch's own int8 (precision.py) is as close
    assert cos.max() < 0.99999  # it is really quantized


def test_the_folder_is_self_contained(minilm, minilm_onnx):
    names = {p.name for p in minilm_onnx.iterdir()}
    assert {"model.onnx", "config.json", "vocab.txt", "tokenizer_config.json", MANIFEST} <= names
    assert Tokenizer.from_pretrained(minilm_onnx).encode("A test.").input_ids == \
        Tokenizer.from_pretrained(minilm).encode("A test.").input_ids
    config = OnnxModel.from_pretrained(minilm_onnx).config
    assert config.hidden_size == 384 and config.extra["architectures"] == ["BertModel"]
    # A runtime that knows nothing of bertkit reads it as it is.
    session = ort.InferenceSession(str(minilm_onnx / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[101, 2023, 2003, 102]], dtype=np.int64)
    hidden, *_ = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                    "token_type_ids": np.zeros_like(ids)})
    assert hidden.shape == (1, 4, 384)


def test_a_changed_file_is_refused(minilm_onnx, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(minilm_onnx, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the weights
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 differs"):
        OnnxModel.from_pretrained(copy)
    (copy / MANIFEST).unlink()
    (copy / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load it"):
        OnnxModel.from_pretrained(copy)


def test_refuses_to_overwrite_what_is_not_an_export(minilm, tmp_path):
    model = BertModel.from_pretrained(minilm)
    with pytest.raises(ValueError, match="the model's own folder"):
        export_onnx(model, minilm)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an ONNX export"):
        export_onnx(model, tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="fp32 model"):
        export_onnx(BertModel.from_pretrained(minilm, dtype="bf16"), tmp_path / "bf16")
    with pytest.raises(ValueError, match="opsets 17 to 20"):
        export_onnx(model, tmp_path / "old", opset=11)
    with pytest.raises(ValueError, match="format must be one of"):
        export(minilm, tmp_path / "x", format="tflite")
    assert not any((tmp_path / name).exists() for name in ("bf16", "old", "x"))


def test_cli_export_and_embed(minilm, tmp_path, capsys):
    out = tmp_path / "cli-export"
    assert main(["export", "--model", str(minilm), "--output", str(out), "--int8"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert OnnxModel.from_pretrained(out).dtype == "int8"
    texts = tmp_path / "texts.txt"
    texts.write_text("a happy film\nthe plot drags on and on\n", encoding="utf-8")
    assert main(["embed", "--model", str(out), "--input", str(texts), "--output", str(tmp_path / "v.npy"),
                 "--backend", "onnx", "--no-progress"]) == 0
    vectors = np.load(tmp_path / "v.npy", allow_pickle=False)
    assert vectors.shape == (2, 384)
    # Bad requests: one line on stderr, exit 2.
    assert main(["export", str(minilm), "--model", str(tmp_path), "--output", str(tmp_path / "y")]) == 2
    assert "two models given" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "--output", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err
    assert main(["embed", "--model", str(out), "--input", str(texts), "--output", str(tmp_path / "w.npy"),
                 "--dtype", "fp32", "--backend", "onnx", "--no-progress"]) == 2
    assert "int8 ONNX model" in capsys.readouterr().err


def test_without_onnxruntime_the_error_says_what_to_install(minilm_onnx, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when it is absent
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'bertkit\[onnx\]'"):
        OnnxModel.from_pretrained(minilm_onnx)
    (tmp_path / "in.txt").write_text("a text\n", encoding="utf-8")
    assert main(["embed", "--model", str(minilm_onnx), "--input", str(tmp_path / "in.txt"), "--output", "-",
                 "--backend", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bertkit[onnx]" in err


@pytest.mark.slow
def test_a_killed_export_leaves_no_half_folder(minilm, tmp_path):
    out = tmp_path / "killed"
    code = f"from bertkit.export import export; export({str(minilm)!r}, {str(out)!r}, int8=True)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 120
    while not any(tmp_path.glob(".killed*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # well into the export
    proc.send_signal(signal.SIGKILL)
    if proc.wait(timeout=30) == -signal.SIGKILL:
        assert not out.exists()  # the folder appears whole or not at all
    else:
        assert OnnxModel.from_pretrained(out).dtype == "int8"  # it finished first: whole
    export(minilm, out)  # and a new export over the leftovers succeeds
    assert OnnxModel.from_pretrained(out).dtype == "fp32"
