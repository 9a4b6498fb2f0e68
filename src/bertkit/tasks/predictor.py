"""Predictor: a fine-tuned model and its tokenizer held together: load once, predict many times.

inputs -> examples -> features (one Prepared per input: QA has a feature per window) ->
length-sorted batches (batching.sorted_batches: each batch pads only to its own
longest) -> model -> outputs per feature, back in input order -> predictions
(labels, scores, entities or answer spans: see kinds.py for each format).

A server's dynamic batcher calls the two stages apart: `prepare` as each request arrives
(tokenization; `n_tokens` to budget a batch by), `run` on a batch of prepared inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from bertkit.batching import Prepared, sorted_batches
from bertkit.config import BertConfig
from bertkit.hub import resolve
from bertkit.infer import load_model, ready
from bertkit.onnx_model import OnnxModel
from bertkit.tasks.kinds import TaskKind, kind_of
from bertkit.tasks.qa import DOC_STRIDE
from bertkit.tokenizer import Tokenizer


def forward(model: nn.Module | OnnxModel, prepared: Sequence[Prepared], names: Sequence[str],
            batch_size: int = 32, device: torch.device | None = None
            ) -> tuple[list[list[dict[str, np.ndarray]]], float | None]:
    """Run `model` on every feature of `prepared` -> (outputs, mean loss or None).

    outputs[i][j] holds feature j of input i as {name: fp32 numpy array} for each output name
    (padded to its batch's length). The loss, when the features carry labels, is the mean
    over features. device: where the model runs (default: where its parameters are).
    """
    device = device or next(model.parameters()).device
    n_features = sum(len(p.features) for p in prepared)
    flat: list[dict] = [{}] * n_features
    loss_sum, n = 0.0, 0
    with torch.inference_mode():
        for idx, batch in sorted_batches(prepared, batch_size, device):
            out = model(**batch)
            if "loss" in out:
                loss_sum, n = loss_sum + float(out["loss"]) * len(idx), n + len(idx)
            arrays = {k: out[k].float().cpu().numpy() for k in names}
            for row, i in enumerate(idx):
                flat[i] = {k: a[row] for k, a in arrays.items()}
    outputs, start = [], 0
    for p in prepared:
        outputs.append(flat[start:start + len(p.features)])
        start += len(p.features)
    return outputs, (loss_sum / n if n else None)


class Predictor:
    """Predictions of a fine-tuned model for raw inputs, as dicts in input order.

    >>> p = Predictor.from_pretrained("runs/sst2")        # a run folder, or its best/
    >>> p(["a gorgeous film", "two hours I will never get back"])
    [{'label': 'positive', 'score': 0.98, 'scores': {...}}, {'label': 'negative', ...}]

    Inputs by kind: classification and regression take texts or (text, text pair) tuples;
    token classification takes raw texts (words are split on whitespace); QA takes
    (question, context) tuples. A bare string where a list is meant is a TypeError:
    wrap one text in a list.
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, *, dtype: str | None = None, device: str = "cpu",
                 max_length: int | None = None, doc_stride: int | None = None):
        config = model.config
        self.task_kind: TaskKind = kind_of(config, f"{getattr(model, 'source_dir', 'model')}/config.json")
        self.kind = self.task_kind.name
        self.labels = self.task_kind.labels
        positions = config.max_position_embeddings
        if max_length is None:  # as in training, else as long as the model allows
            max_length = config.extra.get("finetuning_max_length") or min(positions, tokenizer.model_max_length)
        if not 8 <= max_length <= positions:
            raise ValueError(f"max_length must be between 8 and the model's {positions} positions, got {max_length}")
        self.max_length = max_length
        stride = doc_stride or config.extra.get("finetuning_doc_stride") or DOC_STRIDE
        self.doc_stride = stride if stride < max_length // 2 else max_length // 4  # a window must move on
        self.device = torch.device(device)
        self.model, self.dtype = ready(model, dtype, self.device, inplace=True)
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, *, dtype: str | None = None, device: str = "cpu",
                        max_length: int | None = None, backend: str = "torch") -> Predictor:
        """Load a fine-tuned checkpoint: a folder with config.json, or a fine-tuning run folder (its best/);
        backend "onnx": its `bertkit export` folder, run by ONNX Runtime."""
        model_dir = resolve(model)
        kind = kind_of(BertConfig.from_json(model_dir / "config.json"), str(model_dir / "config.json"))
        net = load_model(kind.head, model_dir, backend, dtype)  # the kind is checked before any weight is read
        return cls(net, Tokenizer.from_pretrained(model_dir), dtype=dtype, device=device, max_length=max_length)

    def prepare(self, inputs: Sequence) -> list[Prepared]:
        """Raw inputs -> tokenized features, one Prepared per input (each with its n_tokens)."""
        if isinstance(inputs, (str, tuple)):
            raise TypeError(f"inputs must be a list; wrap one input in a list: [{inputs!r:.40}]")
        examples = self.task_kind.examples(list(inputs))
        return self.task_kind.features(examples, self.tokenizer, self.max_length, self.doc_stride)

    def run(self, prepared: Sequence[Prepared], batch_size: int = 32) -> list[dict]:
        """Prepared inputs -> one prediction dict each, in their order."""
        outputs, _ = forward(self.model, prepared, self.task_kind.output_names, batch_size, self.device)
        return self.task_kind.predictions(outputs, prepared)

    def __call__(self, inputs: Sequence, batch_size: int = 32) -> list[dict]:
        return self.run(self.prepare(inputs), batch_size)
