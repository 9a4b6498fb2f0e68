"""Readers: files on disk -> lists of examples.

One reader per file format, each small. Bad input raises ValueError naming the
file and line (1-based); examples that cannot be used but are not errors (a SQuAD
answer that does not match its context) are counted in `skipped`, never silently.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bertkit import io


@dataclass
class TextExample:
    """One sentence or sentence pair with a class id (int) or a score (float)."""

    text: str
    text_pair: str | None = None
    label: int | float | None = None


@dataclass
class TokenExample:
    """A pre-split sentence with one tag per word (CoNLL-style NER).

    `text` is the raw text the words came from (`from_text`), or else the words joined by
    spaces; `spans` holds each word's (start, end) characters in it.
    """

    words: list[str]
    tags: list[str] | None = None
    text: str | None = None
    spans: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        if self.text is None:
            self.text = " ".join(self.words)
            starts = [0]
            for w in self.words[:-1]:
                starts.append(starts[-1] + len(w) + 1)
            self.spans = [(s, s + len(w)) for s, w in zip(starts, self.words)]

    @classmethod
    def from_text(cls, text: str) -> TokenExample:
        """Raw text -> its whitespace-separated words, with their character spans.

        >>> TokenExample.from_text("Angela Merkel  visited Paris").spans
        [(0, 6), (7, 13), (15, 22), (23, 28)]
        """
        found = list(re.finditer(r"\S+", text))
        return cls([m.group() for m in found], text=text, spans=[m.span() for m in found])


@dataclass
class QAExample:
    """A SQuAD question. `answer_start` is a character offset into `context`."""

    qid: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)  # every gold answer text (for EM/F1)
    answer_text: str | None = None  # the training target; None when unknown (inference)
    answer_start: int | None = None  # character offset of answer_text in context
    title: str = ""


@dataclass
class Skipped:
    """Counts of examples dropped for a stated reason (reported, never silent)."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def __bool__(self) -> bool:
        return bool(self.counts)

    def __str__(self) -> str:
        return ", ".join(f"{n} {why}" for why, n in self.counts.items()) or "none"


def _lines(path: Path) -> Iterator[str]:
    """The file's lines with their line breaks, for csv.reader: io.read_lines names the file and
    line of invalid UTF-8 and drops a byte-order mark (GLUE's MRPC files start with one)."""
    for _, line in io.read_lines(path):
        yield line + "\n"


# Pass as `labels` to keep each label's text as written (to learn a user file's label set).
RAW = "raw"


def _parse_label(raw: str, labels: Sequence[str] | None, where: str) -> int | float | str:
    """Class id of `raw` in `labels`, a float score when `labels` is None (regression), or raw text (RAW)."""
    raw = raw.strip()
    if not raw:
        raise ValueError(f"{where}: empty label")
    if labels == RAW:
        return raw
    if labels is None:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{where}: label {raw!r} is not a number (regression task)") from None
    try:
        return list(labels).index(raw)
    except ValueError:
        raise ValueError(f"{where}: label {raw!r} is not one of {list(labels)}") from None


def read_table(path: str | Path, *, text_column: str | int, text_pair_column: str | int | None = None,
               label_column: str | int | None = None, labels: Sequence[str] | None = None,
               header: bool = True, delimiter: str | None = None) -> list[TextExample]:
    """CSV/TSV rows -> TextExample. Columns are header names, or 0-based indices.

    `labels` lists the label strings in class-id order; None with a label column
    means regression (float scores). Without a label column, labels are None
    (unlabelled test data, prediction input).
    """
    path = Path(path)
    if delimiter is None:
        delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    examples = []
    # GLUE files are not quoted (sentences contain bare '"'), CSV files may be.
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    rows = csv.reader(_lines(path), delimiter=delimiter, quoting=quoting)
    index: dict[str | int, int] = {}
    if header:
        head = next(rows, None)
        if head is None:
            raise ValueError(f"{path}: empty file")
        index = {name.strip(): i for i, name in enumerate(head)}
    cols = {}
    for role, col in (("text", text_column), ("text pair", text_pair_column), ("label", label_column)):
        if col is None:
            continue
        if isinstance(col, int) or (isinstance(col, str) and col.isdigit() and col not in index):
            cols[role] = int(col)
        elif col in index:
            cols[role] = index[col]
        else:
            raise ValueError(f"{path}:1: no column {col!r} for the {role} (columns: {list(index)})")
    need = max(cols.values())
    for row in rows:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line (e.g. a trailing newline)
        where = f"{path}:{rows.line_num}"  # the row's last line (a quoted CSV cell may span lines)
        if len(row) <= need:
            raise ValueError(f"{where}: expected at least {need + 1} columns, found {len(row)}")
        label = _parse_label(row[cols["label"]], labels, where) if "label" in cols else None
        pair = row[cols["text pair"]].strip() if "text pair" in cols else None
        examples.append(TextExample(row[cols["text"]].strip(), pair, label))
    if not examples:
        raise ValueError(f"{path}: no examples (empty file)")
    return examples


def read_jsonl(path: str | Path, *, text_column: str = "text", text_pair_column: str | None = None,
               label_column: str | None = "label", labels: Sequence[str] | None = None) -> list[TextExample]:
    """JSON lines -> TextExample. Labels may be strings or numbers (compared as strings)."""
    path = Path(path)
    examples = []
    for lineno, row in io.read_jsonl(path):
        where = f"{path}:{lineno}"
        for col in (text_column, text_pair_column, label_column):
            if col is not None and col not in row:
                raise ValueError(f"{where}: missing field {col!r}")
        label = None
        if label_column:
            raw = row[label_column]
            if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
                raise ValueError(f"{where}: label {raw!r} is not a string or a number")
            label = _parse_label(str(raw), labels, where)
        pair = io.json_field(row, text_pair_column, where) if text_pair_column else None
        examples.append(TextExample(io.json_field(row, text_column, where), pair, label))
    if not examples:
        raise ValueError(f"{path}: no examples (empty file)")
    return examples


def read_conll(path: str | Path, *, tags: Sequence[str] | None = None, tag_column: int = -1) -> list[TokenExample]:
    """CoNLL-2003 files: `token POS chunk NER` per line, blank line between sentences.

    `-DOCSTART-` lines separate documents and are not sentences. Tags are
    returned as written (CoNLL-2003 uses IOB1); `tags`, when given, is the
    allowed set and anything else is an error.
    """
    path = Path(path)
    allowed = set(tags) if tags is not None else None
    sentences: list[TokenExample] = []
    words: list[str] = []
    labels: list[str] = []
    for lineno, line in io.read_lines(path):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if words:
                sentences.append(TokenExample(words, labels))
                words, labels = [], []
            continue
        if len(parts) < 2:
            raise ValueError(f"{path}:{lineno}: expected 'token ... tag', found {line.strip()!r}")
        tag = parts[tag_column]
        if allowed is not None and tag not in allowed:
            raise ValueError(f"{path}:{lineno}: tag {tag!r} is not one of {sorted(allowed)}")
        words.append(parts[0])
        labels.append(tag)
    if words:
        sentences.append(TokenExample(words, labels))
    if not sentences:
        raise ValueError(f"{path}: no sentences (empty file)")
    return sentences


def read_squad(path: str | Path, skipped: Skipped | None = None) -> list[tuple[str, list[QAExample]]]:
    """SQuAD v1.1 json -> [(article title, [QAExample, ...]), ...] in file order.

    Articles are kept apart so a caller can split by article (no paragraph
    shared between train and evaluation). An answer whose text is not at its
    `answer_start` in the context is counted in `skipped` and dropped (the
    question is kept if another answer is usable).
    """
    path = Path(path)
    text = "\n".join(line for _, line in io.read_lines(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{path}: not a SQuAD file (no 'data' field)")
    skipped = skipped if skipped is not None else Skipped()
    articles = []
    try:
        for article in data["data"]:
            title = article.get("title", "")
            examples = []
            for para in article["paragraphs"]:
                context = para["context"]
                for qa in para["qas"]:
                    good = [a for a in qa["answers"]
                            if context[a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]]
                    for _ in range(len(qa["answers"]) - len(good)):
                        skipped.add("answers not found at their answer_start")
                    if qa["answers"] and not good:
                        skipped.add("questions without a usable answer")
                        continue
                    examples.append(QAExample(
                        qid=qa["id"], question=qa["question"], context=context,
                        answers=[a["text"] for a in qa["answers"]],  # all gold texts count for EM/F1
                        answer_text=good[0]["text"] if good else None,
                        answer_start=good[0]["answer_start"] if good else None, title=title))
            articles.append((title, examples))
    except KeyError as e:
        raise ValueError(f"{path}: not a SQuAD v1.1 file (an entry has no {e.args[0]!r} field)") from None
    except (TypeError, AttributeError):
        raise ValueError(f"{path}: not a SQuAD v1.1 file (an entry has the wrong type)") from None
    if not articles:
        raise ValueError(f"{path}: no articles")
    return articles
