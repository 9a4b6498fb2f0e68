"""Reading a pre-training corpus as a stream of documents, each a list of sentences.

Three input layouts:
- "sentences": the original BERT format, one sentence per line, a blank line between documents;
- "paragraphs": one document per line (a paragraph, a review), split into sentences here;
- "jsonl": one JSON object per line whose `text_field` holds a document, split into sentences.
"auto" picks jsonl for *.jsonl / *.json files and sentences otherwise.

Documents are yielded one at a time: the corpus is never held in memory. Nothing is dropped
silently: every skipped or repaired item is counted in `CorpusStats`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

FORMATS = ("auto", "sentences", "paragraphs", "jsonl")


@dataclass
class CorpusStats:
    files: int = 0
    empty_files: int = 0  # no document at all (empty or blank-only)
    documents: int = 0
    empty_documents: int = 0  # jsonl/paragraph documents with no text: skipped
    sentences: int = 0
    single_sentence_documents: int = 0  # kept; as in Google's code they only yield random-B (NotNext) pairs
    undecodable_lines: int = 0  # invalid UTF-8; bad bytes replaced by U+FFFD, the line kept
    empty_sentences: int = 0  # no word pieces after tokenization (e.g. only control characters): skipped
    long_sentences: int = 0  # longer than a sequence allows: cut into pieces, nothing lost
    instances: int = 0
    next_instances: int = 0  # B really follows A (IsNext)

    def add(self, other: CorpusStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ---------------------------------------------------------------------------- sentence splitting

# Words that end with a period without ending a sentence ("Mr. Smith", "e.g. this").
# "etc." is left out on purpose: it ends sentences more often than not.
ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt vs no nos fig figs vol vols gen col lt sgt capt cpt rev hon gov pres
sen rep inc ltd co corp bros dept est approx ca cf al jan feb mar apr jun jul aug sep sept oct nov dec
e.g i.e a.m p.m u.s u.k u.n a.k.a ph.d
""".split())

# A candidate boundary: sentence-final punctuation, optional closing quotes/brackets, whitespace,
# then something that can start a sentence (capital letter, digit, opening quote or bracket).
# A decimal ("3.14") or a URL ("bertkit.org") has no whitespace after the period, so never matches.
_BOUNDARY = re.compile(r"""([.!?\u2026]+)(["'\u201d\u2019)\]]*)\s+(?=["'\u201c\u2018(\[]*[A-Z0-9\u00c0-\u00de])""")
_LINE_BREAK = re.compile(r"\s*(?:\n|\r|<br\s*/?>)+\s*", re.IGNORECASE)  # HTML <br> as in web text (IMDB)
_LAST_WORD = re.compile(r"(\S+)$")


def split_sentences(text: str) -> list[str]:
    """Split running text into sentences with a rule-based splitter.

    Line breaks (and <br> tags) always end a sentence. A period does not end one after a
    known abbreviation, a single-letter initial ("J. R. R. Tolkien") or dotted initials ("U.S.").
    """
    out: list[str] = []
    for block in _LINE_BREAK.split(text):
        start = 0
        for m in _BOUNDARY.finditer(block):
            if m.group(1) == ".":
                word = _LAST_WORD.search(block, start, m.start())
                word = word.group(1).lstrip("\"'([") if word else ""
                initial = len(word) == 1 and word.isupper()  # "J. R. R. Tolkien"
                lower = word.lower()
                if initial or lower in ABBREVIATIONS or re.fullmatch(r"([a-z]\.)+[a-z]", lower):
                    continue
            out.append(block[start:m.end(2)].strip())
            start = m.end()
        tail = block[start:].strip()
        if tail:
            out.append(tail)
    return [s for s in out if s]


# ---------------------------------------------------------------------------- reading files


def _lines(path: Path, stats: CorpusStats) -> Iterator[tuple[int, str]]:
    """(line number, text) of a file, decoding each line on its own so one bad byte costs one line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.undecodable_lines += 1
                line = raw.decode("utf-8", errors="replace")
            yield lineno, line.rstrip("\r\n")


def _sentence_documents(path: Path, stats: CorpusStats) -> Iterator[list[str]]:
    doc: list[str] = []
    for _, line in _lines(path, stats):
        line = line.strip()
        if line:
            doc.append(line)
        elif doc:
            yield doc
            doc = []
    if doc:
        yield doc


def _text_documents(path: Path, fmt: str, text_field: str, stats: CorpusStats) -> Iterator[list[str]]:
    for lineno, line in _lines(path, stats):
        if not line.strip():
            continue
        if fmt == "jsonl":
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or text_field not in obj:
                raise ValueError(f"{path}:{lineno}: no {text_field!r} field")
            text = obj[text_field]
            if not isinstance(text, str):
                raise ValueError(f"{path}:{lineno}: field {text_field!r} is {type(text).__name__}, not a string")
        else:
            text = line
        sentences = split_sentences(text)
        if sentences:
            yield sentences
        else:
            stats.empty_documents += 1


def resolve_format(path: Path, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "auto":
        return "jsonl" if path.suffix.lower() in (".jsonl", ".json") else "sentences"
    return fmt


def read_documents(paths: Iterable[str | Path], fmt: str = "auto", text_field: str = "text",
                   stats: CorpusStats | None = None) -> Iterator[list[str]]:
    """Yield each document of each file as a list of sentences, counting into `stats`."""
    stats = stats if stats is not None else CorpusStats()
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"no corpus file at {path}")
        kind = resolve_format(path, fmt)
        stats.files += 1
        before = stats.documents
        docs = _sentence_documents(path, stats) if kind == "sentences" \
            else _text_documents(path, kind, text_field, stats)
        for doc in docs:
            stats.documents += 1
            stats.sentences += len(doc)
            stats.single_sentence_documents += len(doc) == 1
            yield doc
        if stats.documents == before:
            stats.empty_files += 1
