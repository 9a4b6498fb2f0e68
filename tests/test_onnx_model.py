"""onnx_model.py: an exported model is called like the torch model (same inputs, defaults and output names),
so the task code's batching path runs it unchanged; bad folders are one-line errors."""

from __future__ import annotations

import pytest
import torch

from bertkit.heads import BertForSequenceClassification, BertModel
from conftest import real_texts

pytest.importorskip("onnxruntime")

from bertkit.onnx_model import OnnxModel  # noqa: E402


def test_called_like_the_torch_model(minilm, minilm_onnx):
    ours, onnx = BertModel.from_pretrained(minilm), OnnxModel.from_pretrained(minilm_onnx)
    assert onnx.eval() is onnx
    assert (onnx.config.hidden_size, onnx.config.vocab_size) == (ours.config.hidden_size, ours.config.vocab_size)
    ids = torch.tensor([[101, 7592, 2088, 2003, 2204, 102], [101, 2919, 3185, 102, 0, 0]])
    mask = (ids != 0).long()
    with torch.inference_mode():
        for args, kwargs in [((ids,), {}),                                      # masks and segments default
                             ((ids,), {"attention_mask": mask}),
                             ((ids, torch.zeros_like(ids), mask), {}),          # positional, torch's order
                             ((ids,), {"attention_mask": mask, "labels": torch.tensor([0, 1])})]:
            want = ours(*args, **{k: v for k, v in kwargs.items() if k != "labels"})
            got = onnx(*args, **kwargs)  # batch fields it does not use are ignored, as the heads do
            assert isinstance(got["last_hidden_state"], torch.Tensor)
            torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=1e-4, rtol=0)
            torch.testing.assert_close(got[1], want[1], atol=1e-4, rtol=0)  # index access: pooler_output
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 512"):
        onnx(torch.ones(1, 513, dtype=torch.long))


def test_the_predictor_runs_it_through_the_same_batching(minilm, tmp_path):
    from bertkit.export import export
    from bertkit.tasks.predictor import Predictor

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm, id2label={0: "neg", 1: "pos"},
                                                          label2id={"neg": 0, "pos": 1})
    saved = model.save_pretrained(tmp_path / "sst2")
    texts = real_texts(20, 2)
    want = Predictor.from_pretrained(saved)(texts, batch_size=8)
    onnx = Predictor.from_pretrained(export(saved, tmp_path / "sst2-onnx"), backend="onnx")
    assert type(onnx.model) is OnnxModel and onnx.dtype == "fp32"
    got = onnx(texts, batch_size=8)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want):
        assert max(abs(g["scores"][k] - w["scores"][k]) for k in w["scores"]) <= 1e-4
    with pytest.raises(ValueError, match="apply to the torch backend"):
        Predictor.from_pretrained(tmp_path / "sst2-onnx", backend="onnx", dtype="int8")


def test_a_folder_without_model_onnx_says_how_to_make_one(minilm):
    with pytest.raises(FileNotFoundError, match="bertkit export .* --format onnx"):
        OnnxModel.from_pretrained(minilm)
