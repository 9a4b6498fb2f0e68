"""An exported model.onnx run by ONNX Runtime, called like the torch model it came from.

    model = OnnxModel.from_pretrained("minilm-onnx")   # a folder written by `bertkit export`
    out = model(input_ids=ids, attention_mask=mask)      # ModelOutput of torch tensors
    out.last_hidden_state                                # [batch, seq, hidden], as BertModel gives it

Same inputs, same output names, same ModelOutput as the torch model, so `infer.Embedder` and the
task code batch it through their one path unchanged. onnxruntime is imported on first use:
the rest of bertkit runs without it.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import torch

from bertkit.checkpoint import verify_manifest
from bertkit.config import BertConfig
from bertkit.hub import resolve
from bertkit.model import ModelOutput

ONNX_FILE = "model.onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the names the ONNX ecosystem uses for BERT


def require(module: str):
    """An optional dependency of ONNX export and the ONNX backend (onnx, onnxruntime, ...), or a
    one-line error saying how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"ONNX export and the ONNX backend need {module.split('.')[0]}: "
                                  f"pip install 'bertkit[onnx]'", name=module.split(".")[0]) from None


class OnnxModel:
    """model.onnx in an ONNX Runtime session on the CPU, with the folder's config.json.

    `dtype` ("fp32" or "int8") and `pooling` (how `sentence_embedding` was pooled, for an encoder)
    are what `bertkit export` wrote into the file's metadata.
    """

    def __init__(self, path: str | os.PathLike, config: BertConfig, threads: int | None = None):
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        # Every graph rewrite ONNX Runtime knows (bias+GELU, residual+LayerNorm, ...), done once at load.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # As many threads as torch uses, so that the two backends compare like for like.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.path, self.config = Path(path), config
        self.source_dir = self.path.parent  # as a loaded torch model has: the folder its files came from
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a damaged or foreign file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"{path}: ONNX Runtime cannot load it ({first})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if "input_ids" not in self.input_names or not set(self.input_names) <= set(INPUTS):
            raise ValueError(f"{path}: inputs {', '.join(self.input_names)}: a BERT export takes "
                             f"input_ids (and attention_mask, token_type_ids)")
        meta = self.session.get_modelmeta().custom_metadata_map
        self.dtype = meta.get("bertkit_dtype", "fp32")
        self.pooling = meta.get("bertkit_pooling")

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, *, threads: int | None = None) -> OnnxModel:
        """Load the folder `bertkit export --format onnx` wrote (model.onnx + config.json)."""
        folder = resolve(name_or_dir)
        path = folder / ONNX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {ONNX_FILE}; make one with "
                                    f"`bertkit export {name_or_dir} --format onnx --output DIR`")
        verify_manifest(folder)
        return cls(path, BertConfig.from_json(folder / "config.json"), threads)

    def eval(self) -> OnnxModel:
        return self  # inference only: there is no training mode to leave

    def __call__(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **_unused) -> ModelOutput:
        """input_ids [batch, seq] (attention_mask and token_type_ids default to all ones and all
        zeros, as in the torch model) -> the exported outputs as torch tensors, by name."""
        positions = self.config.max_position_embeddings
        if input_ids.shape[1] > positions:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings {positions}")
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        defaults = {"attention_mask": torch.ones_like, "token_type_ids": torch.zeros_like}
        feed = {}
        for name in self.input_names:
            value = given[name] if given.get(name) is not None else defaults[name](input_ids)
            feed[name] = np.ascontiguousarray(value.cpu().numpy(), dtype=np.int64)
        outputs = self.session.run(self.output_names, feed)
        return ModelOutput(**{name: torch.from_numpy(array) for name, array in zip(self.output_names, outputs)})
