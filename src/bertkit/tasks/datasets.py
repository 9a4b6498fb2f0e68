"""The built-in tasks: where each one's files are, how to read them, what to score.

Each task is one row of the table below: its kind (classification, regression, token, qa;
see kinds.py), its files, their reader, the metric that picks the best epoch, and the default
recipe. Paths are relative to a data directory (glue/<TASK>/, conll2003/, imdb/, squad_v1.1/):
--data-dir, else $BERTKIT_DATA, else ./data or ../shared/data when one exists. Two tasks have no train file
here and are split from their dev file, always the same way:
- QNLI: rows whose index % 5 == 0 are the evaluation split (1,093), the rest train (4,370).
- SQuAD v1.1: the first 80% of the 48 dev articles (38) train, the last 10 evaluate,
  so no paragraph is shared between the two.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bertkit.tasks import readers
from bertkit.tasks.kinds import Classification, QuestionAnswering, Regression, TaskKind, TokenClassification
from bertkit.tasks.metrics import iob1_to_iob2

# CoNLL-2003 is tagged IOB1; the model learns IOB2 (every entity starts with B-),
# which names the same entities (see metrics.iob1_to_iob2).
NER_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


@dataclass(frozen=True)
class Recipe:
    """A task's default fine-tuning settings: what a FinetuneConfig field left None becomes."""

    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 128
    doc_stride: int | None = None  # QA only: context tokens shared by consecutive windows
    warmup: float = 0.1  # fraction of the steps
    weight_decay: float = 0.01


@dataclass(frozen=True)
class Task:
    name: str
    kind: TaskKind  # head, features, predictions, scores (and the label names)
    files: dict[str, str]  # split -> path under the data directory (absolute for a user's files)
    read: Callable[[Path, str], list]  # (path, split) -> examples
    recipe: Recipe = Recipe()
    metric: str | None = None  # the score that picks the best epoch (higher is better); None: the kind's

    def __post_init__(self) -> None:
        if self.metric is None:
            object.__setattr__(self, "metric", self.kind.metric)

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.kind.labels

    def examples(self, split: str, data_dir: str | Path | None = None) -> list:
        if split not in self.files:
            raise ValueError(f"task {self.name} has no {split!r} split (has {', '.join(sorted(self.files))})")
        path = Path(self.files[split])
        return self.read(path if path.is_absolute() else resolve_data_dir(data_dir) / path, split)


DATA_DIRS = ("data", "../shared/data")  # looked for, in this order, from the working directory
DATA_FOLDERS = ("glue", "conll2003", "imdb", "squad_v1.1")


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    found = (p for p in DATA_DIRS if any(Path(p, f).is_dir() for f in DATA_FOLDERS))
    d = data_dir or os.environ.get("BERTKIT_DATA") or next(found, None)
    if not d:
        raise ValueError(f"no data directory: pass --data-dir or set BERTKIT_DATA (neither ./data nor "
                         f"../shared/data holds {', '.join(DATA_FOLDERS)})")
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

# The built-in tasks and their default recipes (AdamW, 10% warmup then linear decay, weight decay 0.01).
TASKS: dict[str, Task] = {t.name: t for t in [
    Task("sst2", Classification(("negative", "positive")),
         {"train": "glue/SST-2/train.tsv", "dev": "glue/SST-2/dev.tsv"},
         partial(_table, text_column="sentence", label_column="label", labels=_BINARY),
         Recipe(epochs=3, lr=5e-5)),
    Task("cola", Classification(("unacceptable", "acceptable")),
         {"train": "glue/CoLA/train.tsv", "dev": "glue/CoLA/dev.tsv"},
         partial(_table, text_column=3, label_column=1, labels=_BINARY, header=False),
         Recipe(epochs=5, lr=5e-5), metric="mcc"),
    Task("rte", Classification(("entailment", "not_entailment")),
         {"train": "glue/RTE/train.tsv", "dev": "glue/RTE/dev.tsv"},
         partial(_table, text_column="sentence1", text_pair_column="sentence2", label_column="label",
                 labels=("entailment", "not_entailment")),
         Recipe(epochs=5, lr=5e-5, batch_size=16)),
    Task("mrpc", Classification(("not_equivalent", "equivalent")),
         {"train": "glue/MRPC/train.tsv", "dev": "glue/MRPC/dev.tsv"},
         partial(_table, text_column="#1 String", text_pair_column="#2 String", label_column="Quality",
                 labels=_BINARY),
         Recipe(epochs=3, lr=1e-4), metric="f1"),
    Task("qnli", Classification(("entailment", "not_entailment")),
         {"train": "glue/QNLI/dev.tsv", "dev": "glue/QNLI/dev.tsv"}, _qnli,
         Recipe(epochs=3, lr=1e-4)),
    Task("stsb", Regression(),
         {"train": "glue/STS-B/train.tsv", "dev": "glue/STS-B/dev.tsv"},
         partial(_table, text_column="sentence1", text_pair_column="sentence2", label_column="score",
                 labels=None),
         Recipe(epochs=3, lr=1e-4)),
    Task("imdb", Classification(("neg", "pos"), head_tail=(128, 382)),
         {"train": "imdb/train.jsonl", "dev": "imdb/test.jsonl"},
         lambda path, split: readers.read_jsonl(path, labels=_BINARY),
         Recipe(epochs=1, lr=1e-4, max_length=256)),
    Task("conll2003", TokenClassification(NER_TAGS),
         {"train": "conll2003/eng.train.txt", "dev": "conll2003/eng.testa.txt",
          "test": "conll2003/eng.testb.txt"}, _conll,
         Recipe(epochs=4, lr=1e-4, max_length=192)),  # the longest sentence is 164 pieces: nothing is cut
    Task("squad", QuestionAnswering(),
         {"train": "squad_v1.1/dev-v1.1.json", "dev": "squad_v1.1/dev-v1.1.json"}, _squad,
         Recipe(epochs=4, lr=1e-4, max_length=384, doc_stride=128)),  # BENCHMARKS.md, fine-tuning: the SQuAD run
]}
USER_FILES_RECIPE = Recipe(epochs=3, lr=5e-5)


# ---------------------------------------------------------------------------- tasks from user files


def user_task(train_file: str | Path | None, dev_file: str | Path | None = None, *, text_column: str = "text",
              text_pair_column: str | None = None, label_column: str = "label", regression: bool = False,
              labels: Sequence[str] | None = None) -> Task:
    """A classification or regression task over your own CSV, TSV or JSON-lines files.

    The label set is `labels` when given, else every label text in train_file, sorted.
    """
    def read(path: Path, split: str, labels=labels):
        kw = dict(text_column=text_column, text_pair_column=text_pair_column, label_column=label_column,
                  labels=None if regression else labels)
        return (readers.read_jsonl(path, **kw) if Path(path).suffix in (".jsonl", ".json")
                else readers.read_table(path, **kw))

    if not regression and labels is None:
        if train_file is None:
            raise ValueError("your own files need a label set: give --labels, or a train file to learn it from")
        raw = read(Path(train_file), "train", labels=readers.RAW)
        labels = tuple(sorted({ex.label for ex in raw}))
    files = {k: str(Path(v).resolve()) for k, v in (("train", train_file), ("dev", dev_file)) if v is not None}
    kind = Regression() if regression else Classification(labels)
    return Task("custom", kind, files, partial(read, labels=labels), USER_FILES_RECIPE)


def get_task(name: str) -> Task:
    """A built-in task by name (case and dashes ignored: SST-2 is sst2)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[key]
