"""bertkit.precision: bf16 and int8 copies of a model, and knowing which one a model is."""

from __future__ import annotations

import pytest
import torch

from bertkit.config import BertConfig
from bertkit.heads import BertModel
from bertkit.precision import cast_model, dtype_of, int8_engine, quantize_linear


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return BertModel(BertConfig.preset("tiny", vocab_size=99, max_position_embeddings=32)).eval()


def test_cast_copies_and_reports_the_precision(tiny):
    ids = torch.randint(5, 99, (2, 9))
    ref = tiny(ids).last_hidden_state
    for dtype, tol in (("bf16", 0.1), ("int8", 0.1)):
        low = cast_model(tiny, dtype)
        assert dtype_of(low) == dtype and dtype_of(tiny) == "fp32"  # a copy: the original is untouched
        assert (low(ids).last_hidden_state.float() - ref).abs().max() < tol


def test_casting_to_the_same_precision_is_a_no_op_and_low_to_low_is_refused(tiny):
    low = cast_model(tiny, "bf16")
    assert cast_model(low, "bf16") is low
    with pytest.raises(ValueError, match="cannot convert a bf16 model to int8"):
        cast_model(low, "int8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        cast_model(tiny, "fp8")


def test_quantized_linear_uses_all_eight_bits():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(4, 64) * 10
    q = quantize_linear(linear)
    err = (q(x) - linear(x)).abs().max() / linear(x).abs().max()
    assert err < 0.02


def test_int8_engine_packs_for_the_fastest_kernels_with_the_same_results():
    """oneDNN where the CPU has AMX (its int8 kernels use the tiles), fbgemm elsewhere; either way the integer
    matmul is exact, so the two engines' outputs agree to float rounding."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    assert (int8_engine() == "onednn") == (amx and "onednn" in torch.backends.quantized.supported_engines)
    torch.manual_seed(0)
    linear, x = torch.nn.Linear(384, 1536), torch.randn(64, 384) * 3
    before = torch.backends.quantized.engine
    fast = quantize_linear(linear)
    assert torch.backends.quantized.engine == before  # the global setting is left alone
    torch.backends.quantized.engine = "fbgemm"
    try:
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

        reference = type(fast).from_float(linear)  # packed for fbgemm
        assert isinstance(reference, DynamicLinear)
    finally:
        torch.backends.quantized.engine = before
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), reference(x), atol=1e-4, rtol=1e-5)
