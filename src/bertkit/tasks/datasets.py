"""The built-in tasks: where each one's files are, how to read them, what to score.

Paths are relative to a data directory laid out like /work/shared/data
(glue/<TASK>/, conll2003/, imdb/, squad_v1.1/). Two tasks have no train file
here and are split from their dev file, always the same way:
- QNLI: rows whose index % 5 == 0 are the evaluation split (1,093), the rest train (4,370).
- SQuAD v1.1: the first 80% of the 48 dev articles (38) train, the last 10 evaluate,
  so no paragraph is shared between the two.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bertkit.tasks import readers
from bertkit.tasks.metrics import iob1_to_iob2

# CoNLL-2003 is tagged IOB1; the model learns IOB2 (every entity starts with B-),
# which names the same entities (see metrics.iob1_to_iob2).
NER_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "classification" | "regression" | "token" | "qa"
    metric: str  # the score that picks the best epoch (higher is better)
    files: dict[str, str]  # split -> path under the data directory
    read: Callable[[Path], list]  # path -> examples
    labels: tuple[str, ...] | None = None  # label names in class-id order (config.json id2label)
    max_length: int = 128
    # Long inputs keep their head and tail (IMDB reviews: Sun et al. 2019, "How to
    # fine-tune BERT for text classification", best was first 128 + last 382 tokens).
    head_tail: tuple[int, int] | None = None

    def examples(self, split: str, data_dir: str | Path | None = None) -> list:
        if split not in self.files:
            raise ValueError(f"task {self.name} has no {split!r} split (has {sorted(self.files)})")
        path = Path(self.files[split])  # absolute for a user's files
        return self.read(path if path.is_absolute() else resolve_data_dir(data_dir) / path, split=split)


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    d = data_dir or os.environ.get("BERTKIT_DATA")
    if not d:
        raise ValueError("no data directory: pass --data-dir (or set BERTKIT_DATA) for built-in tasks")
    d = Path(d)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: data directory not found")
    return d


def _table(path, split, **kw):
    return readers.read_table(path, **kw)


def _qnli(path, split):
    """QNLI has only dev.tsv here: split it by row index (see module doc)."""
    rows = readers.read_table(path, text_column="question", text_pair_column="sentence",
                              label_column="label", labels=("entailment", "not_entailment"))
    keep = (lambda i: i % 5 == 0) if split == "dev" else (lambda i: i % 5 != 0)
    return [ex for i, ex in enumerate(rows) if keep(i)]


def _squad(path, split):
    """Questions of the first 80% of articles (train) or of the rest (dev)."""
    skipped = readers.Skipped()
    articles = readers.read_squad(path, skipped)
    if skipped:
        print(f"{path}: skipped {skipped}", file=sys.stderr)
    cut = int(len(articles) * 0.8)
    chosen = articles[:cut] if split == "train" else articles[cut:]
    return [ex for _, exs in chosen for ex in exs]


def _conll(path, split):
    examples = readers.read_conll(path, tags=NER_TAGS)
    for ex in examples:
        ex.tags = iob1_to_iob2(ex.tags)
    return examples


_BINARY = ("0", "1")

TASKS: dict[str, Task] = {t.name: t for t in [
    Task("sst2", "classification", "accuracy",
         {"train": "glue/SST-2/train.tsv", "dev": "glue/SST-2/dev.tsv"},
         partial(_table, text_column="sentence", label_column="label", labels=_BINARY),
         labels=("negative", "positive")),
    Task("cola", "classification", "mcc",
         {"train": "glue/CoLA/train.tsv", "dev": "glue/CoLA/dev.tsv"},
         partial(_table, text_column=3, label_column=1, labels=_BINARY, header=False),
         labels=("unacceptable", "acceptable")),
    Task("rte", "classification", "accuracy",
         {"train": "glue/RTE/train.tsv", "dev": "glue/RTE/dev.tsv"},
         partial(_table, text_column="sentence1", text_pair_column="sentence2", label_column="label",
                 labels=("entailment", "not_entailment")),
         labels=("entailment", "not_entailment")),
    Task("mrpc", "classification", "f1",
         {"train": "glue/MRPC/train.tsv", "dev": "glue/MRPC/dev.tsv"},
         partial(_table, text_column="#1 String", text_pair_column="#2 String", label_column="Quality",
                 labels=_BINARY),
         labels=("not_equivalent", "equivalent")),
    Task("qnli", "classification", "accuracy",
         {"train": "glue/QNLI/dev.tsv", "dev": "glue/QNLI/dev.tsv"}, _qnli,
         labels=("entailment", "not_entailment")),
    Task("stsb", "regression", "spearman",
         {"train": "glue/STS-B/train.tsv", "dev": "glue/STS-B/dev.tsv"},
         partial(_table, text_column="sentence1", text_pair_column="sentence2", label_column="score",
                 labels=None)),
    Task("imdb", "classification", "accuracy",
         {"train": "imdb/train.jsonl", "dev": "imdb/test.jsonl"},
         lambda path, split: readers.read_jsonl(path, labels=_BINARY),
         labels=("neg", "pos"), max_length=512, head_tail=(128, 382)),
    Task("conll2003", "token", "f1",
         {"train": "conll2003/eng.train.txt", "dev": "conll2003/eng.testa.txt",
          "test": "conll2003/eng.testb.txt"}, _conll, labels=NER_TAGS,
         max_length=192),  # the longest sentence is 164 pieces: nothing is cut
    Task("squad", "qa", "f1",
         {"train": "squad_v1.1/dev-v1.1.json", "dev": "squad_v1.1/dev-v1.1.json"}, _squad,
         max_length=384),
]}
