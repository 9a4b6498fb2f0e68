"""Weight precision for inference: fp32, bf16, or int8 (dynamic quantization of every nn.Linear).

int8: each Linear's weight is stored as int8 with one scale per output channel; activations
are quantized per batch at run time. Embeddings, LayerNorm and attention's softmax stay fp32.
(Training precision is a different thing: TrainConfig.mixed_precision, autocast.)
"""

from __future__ import annotations

import copy
import functools
import warnings

import torch
from torch import nn

DTYPES = ("fp32", "bf16", "int8")


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return dtype


def dtype_of(model: nn.Module) -> str:
    """The precision a model is in now: int8 if any Linear is quantized, else its weights' dtype."""
    if any(isinstance(m, _full_range_linear()) for m in model.modules()):
        return "int8"
    first = next(model.parameters(), None)
    return "bf16" if first is not None and first.dtype == torch.bfloat16 else "fp32"


def cast_model(model: nn.Module, dtype: str, *, inplace: bool = False) -> nn.Module:
    """`model` ready for inference in `dtype` (eval mode); a no-op when it is in `dtype` already.

    bf16 and int8 return a converted copy, or with inplace=True convert `model` itself tensor by
    tensor (Linear by Linear for int8), so that memory never holds the fp32 and the converted
    weights side by side. (from_pretrained(dtype=...) does better still: it converts each weight
    as it is read.)
    """
    check_dtype(dtype)
    model = model.eval()
    current = dtype_of(model)
    if dtype == current:
        return model
    if current != "fp32":
        raise ValueError(f"cannot convert a {current} model to {dtype}: load it again in {dtype}")
    model = model if inplace else copy.deepcopy(model)
    if dtype == "bf16":
        return model.to(torch.bfloat16)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                setattr(parent, name, quantize_linear(child))
    return model


def quantize_linear(linear: nn.Linear) -> nn.Module:
    """An nn.Linear as torch's dynamic int8 Linear: int8 weights with one scale per output
    channel (so one outlier row does not coarsen a whole matrix), activations quantized per
    batch at run time, to all 8 bits (see _full_range_linear). The weights are packed for
    int8_engine()'s kernels, which then run them whatever the global engine is."""
    with warnings.catch_warnings():
        # torch.ao.quantization warns of a future move to torchao; it still works and needs no new dependency.
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig

        linear.qconfig = per_channel_dynamic_qconfig
        engine = torch.backends.quantized.engine
        torch.backends.quantized.engine = int8_engine()
        try:
            return _full_range_linear().from_float(linear)
        finally:
            torch.backends.quantized.engine = engine


@functools.cache
def int8_engine() -> str:
    """oneDNN on CPUs with AMX int8 tiles, whose kernels use them (fbgemm's do not; the integer
    results are the same); torch's default engine (fbgemm) everywhere else."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()  # private, hence the fallback
    if amx and "onednn" in torch.backends.quantized.supported_engines:
        return "onednn"
    return torch.backends.quantized.engine


@functools.cache
def _full_range_linear() -> type:
    """torch's dynamic int8 Linear, but quantizing activations to all 8 bits instead of 7.

    torch always passes reduce_range=True, a guard against int16 overflow in fbgemm's AVX2
    kernel. BERT's activations have outlier channels (|x| ~ 30 against a median of ~1.5), and on
    all-MiniLM-L6-v2 the lost bit costs more than overflow does (see BENCHMARKS.md, Inference).
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    class FullRangeDynamicLinear(DynamicLinear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
            return y.to(x.dtype)

    return FullRangeDynamicLinear
