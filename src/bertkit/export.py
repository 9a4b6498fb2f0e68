"""ONNX export: a bertkit model -> a self-contained folder for ONNX Runtime, Triton and the other
runtimes that do not run PyTorch.

    bertkit export sentence-transformers/all-MiniLM-L6-v2 --format onnx --output minilm-onnx [--int8]

The folder holds model.onnx, config.json, the tokenizer files and SHA256SUMS.
Inputs: input_ids, attention_mask, token_type_ids, int64 [batch, sequence], both axes dynamic.
Outputs: every tensor the torch model returns, under the same name (the encoder's last_hidden_state
and pooler_output, a head's logits, QA's start_logits and end_logits), and for the encoder also
sentence_embedding [batch, hidden]: infer.pool of last_hidden_state, with the pooling the model's
sentence-transformers config declares (mean over real tokens when it has none).
int8: ONNX Runtime's dynamic quantization of every MatMul (int8 weights, one scale per output
channel; activations quantized per batch at run time), as precision.py does for torch.

The exporter is torch.onnx.export's TorchScript tracer (dynamo=False): it needs no package beyond
onnx, its graph has dynamic batch and sequence axes, and ONNX Runtime's optimizer fuses its
bias+GELU pattern at load; the dynamo exporter needs onnxscript and leaves GELU unfused. Tracing
records one path through the model, so the example batch is padded (extended_mask always masks
under tracing) and the result is checked against the torch model at another batch and length.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from bertkit.checkpoint import config_json, read_config, write_manifest, write_tokenizer
from bertkit.heads import model_class
from bertkit.hub import resolve
from bertkit.infer import pool, sentence_transformers_options
from bertkit.io import atomic_dir, write_json
from bertkit.model import Bert
from bertkit.onnx_model import INPUTS, ONNX_FILE, OnnxModel, require
from bertkit.precision import dtype_of

FORMATS = ("onnx",)
OPSET = 17  # the first with LayerNormalization as one op; ONNX Runtime 1.16+ and TensorRT 8.6+ run it
OPSETS = range(17, 21)  # up to the last one the TorchScript exporter writes
TOLERANCE = 1e-4  # largest difference from the torch model that an fp32 export may show


def check_opset(opset: int) -> None:
    if opset not in OPSETS:
        raise ValueError(f"opset {opset}: bertkit exports opsets {OPSETS[0]} to {OPSETS[-1]}")


def export(name_or_dir: str | os.PathLike, output: str | os.PathLike, *, format: str = "onnx",
           int8: bool = False, opset: int = OPSET) -> Path:
    """A model folder (its config.json names the class: encoder or head) -> an ONNX folder at `output`."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    check_opset(opset)  # before the model loads: a bad option fails at once
    folder = resolve(name_or_dir)
    model = model_class(read_config(folder), str(folder / "config.json")).from_pretrained(folder)
    return export_onnx(model, output, int8=int8, opset=opset)


class Traced(nn.Module):
    """The model with the export's calling convention: the three inputs by position, a tuple out."""

    def __init__(self, model: nn.Module, pooling: str | None):
        super().__init__()
        self.model, self.pooling = model, pooling

    def outputs(self, input_ids, attention_mask, token_type_ids) -> dict[str, torch.Tensor]:
        out = dict(self.model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask))
        if self.pooling is not None:
            out["sentence_embedding"] = pool(out["last_hidden_state"], attention_mask, self.pooling)
        return out

    def forward(self, input_ids, attention_mask, token_type_ids) -> tuple[torch.Tensor, ...]:
        return tuple(self.outputs(input_ids, attention_mask, token_type_ids).values())


def example(config, batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic inputs [batch, seq] with every row after the first padded to a shorter length."""
    ids = (torch.arange(batch * seq).view(batch, seq) * 7919 + 101) % config.vocab_size
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row in range(1, batch):
        mask[row, seq - row * seq // (batch + 1):] = 0
    return ids, mask, torch.zeros_like(ids)


def export_onnx(model: nn.Module, output: str | os.PathLike, *, int8: bool = False, opset: int = OPSET,
                tokenizer=None) -> Path:
    """An fp32 bertkit model (BertModel or any head) -> folder `output`, written atomically:
    model.onnx (fp32, or int8 with int8=True), config.json, the tokenizer files, SHA256SUMS.

    Tokenizer files come from `tokenizer` when given, else from the folder the model was loaded from.
    """
    output = Path(output)
    source = getattr(model, "source_dir", None)
    if source is not None and output.resolve() == Path(source).resolve():
        raise ValueError(f"{output}: is the model's own folder; export into a new one")
    if output.exists() and any(output.iterdir()) and not (output / ONNX_FILE).is_file():
        raise FileExistsError(f"{output}: exists and is not an ONNX export; choose a new folder")
    require("onnx"), require("onnxruntime")  # before any work: both are needed to write and check the file
    check_opset(opset)
    if dtype_of(model) != "fp32":
        raise ValueError(f"export from the fp32 model (this one is {dtype_of(model)}); int8 is int8=True (--int8)")
    pooling = None
    if isinstance(model, Bert):  # the pooling the encoder's embeddings are made with
        pooling = sentence_transformers_options(source).get("pooling", "mean") if source else "mean"
    # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards, recursively.
    traced = Traced(model, pooling).eval()
    with torch.inference_mode():
        first, second = traced.outputs(*example(model.config, 2, 8)), traced.outputs(*example(model.config, 3, 11))
    names = list(first)
    # An output axis is dynamic where its size follows the inputs': batch 2 -> 3, sequence 8 -> 11.
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    for name in names:
        axes[name] = {i: {2: "batch", 8: "sequence"}[a] for i, (a, b) in
                      enumerate(zip(first[name].shape, second[name].shape)) if a != b}
    with atomic_dir(output) as tmp, tempfile.TemporaryDirectory(dir=tmp.parent) as scratch:
        fp32_path = Path(scratch if int8 else tmp) / ONNX_FILE
        with warnings.catch_warnings(), torch.no_grad():
            # The tracer warns of the legacy exporter and of the Python-side length check it skips.
            warnings.simplefilter("ignore")
            torch.onnx.export(traced, example(model.config, 2, 8), str(fp32_path), dynamo=False,
                              opset_version=opset, input_names=list(INPUTS), output_names=names,
                              dynamic_axes=axes, do_constant_folding=True)
        check(fp32_path, traced, model.config)
        if int8:
            quantize(fp32_path, tmp / ONNX_FILE)
        set_metadata(tmp / ONNX_FILE, {"bertkit_dtype": "int8" if int8 else "fp32", "bertkit_pooling": pooling})
        write_json(tmp / "config.json", config_json(model))
        write_tokenizer(tmp, tokenizer, source)
        write_manifest(tmp)
    return output


def check(path: Path, traced: Traced, config) -> None:
    """The exported graph must give the torch model's outputs on a batch it was not traced on."""
    inputs = example(config, 3, 11)
    with torch.inference_mode():
        expected = traced.outputs(*inputs)
    got = OnnxModel(path, config)(input_ids=inputs[0], attention_mask=inputs[1], token_type_ids=inputs[2])
    for name, want in expected.items():
        diff = float((got[name] - want).abs().max())
        if not diff <= TOLERANCE:
            raise RuntimeError(f"{path}: output {name} differs from the torch model by {diff:.2e}: "
                               f"the export is wrong (torch {torch.__version__})")


def quantize(fp32_path: Path, int8_path: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization of every MatMul's weight, one scale per output channel."""
    quantization = require("onnxruntime.quantization")
    # It logs advice to run its shape-inference pre-pass first, which does not complete on dynamic BERT graphs.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        quantization.quantize_dynamic(fp32_path, int8_path, weight_type=quantization.QuantType.QInt8,
                                      per_channel=True, op_types_to_quantize=["MatMul"])
    finally:
        logging.disable(previous)


def set_metadata(path: Path, values: dict[str, str | None]) -> None:
    """Record what the file holds in its own metadata (OnnxModel reads it back)."""
    onnx = require("onnx")
    proto = onnx.load(str(path))
    for key, value in values.items():
        if value is not None:
            proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
