"""onnx_model.py: an exported model is called like the torch model (same inputs, defaults and output names),
so the task code's batching path runs it unchanged; bad folders are one-line errors."""

from __future__ import annotations

import pytest
import torch

from bertkit.heads import BertForSequenceClassification, BertModel
from conftest import real_texts

pytest.importorskip("onnxruntime")

from bertkit.export import export_onnx  # noqa: E402  (needs the onnx extra)
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


def test_the_task_batching_path_runs_it_unchanged(minilm, tmp_path):
    from bertkit.tasks.finetune import Prepared, get_task
    from bertkit.tasks.readers import TextExample
    from bertkit.tokenizer import Tokenizer

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm, num_labels=2)
    onnx = OnnxModel.from_pretrained(export_onnx(model, tmp_path / "sst2"))
    examples = [TextExample(t, label=i % 2) for i, t in enumerate(real_texts(20, 2))]
    data = Prepared(get_task("sst2"), examples, Tokenizer.from_pretrained(minilm))
    want, loss = data.outputs(model, batch_size=8)
    got, no_loss = data.outputs(onnx, batch_size=8)
    assert loss is not None and no_loss is None  # the export computes outputs, not losses
    for a, b in zip(got, want):
        assert abs(a["logits"] - b["logits"]).max() <= 1e-4
    assert data.predictions(got) == data.predictions(want)


def test_a_folder_without_model_onnx_says_how_to_make_one(minilm):
    with pytest.raises(FileNotFoundError, match="bertkit export .* --format onnx"):
        OnnxModel.from_pretrained(minilm)
