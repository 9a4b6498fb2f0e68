"""Evaluation metrics, written out with numpy (scipy/sklearn/seqeval only check them in tests).

Classification: accuracy, binary F1, Matthews correlation. Regression:
Pearson and Spearman. SQuAD: the official v1.1 exact match and token F1.
NER: entity-level precision/recall/F1 with conlleval's chunking rules.
Scales follow each metric's usual report: classification and correlations as
fractions (0-1); SQuAD and entity scores in percent, as their official scripts print.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def f1_binary(preds: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    p, y = np.asarray(preds) == positive, np.asarray(labels) == positive
    tp = float(np.sum(p & y))
    denom = float(np.sum(p) + np.sum(y))
    return 2 * tp / denom if denom else 0.0


def matthews_corrcoef(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Multi-class MCC (Gorodkin's R_K, as sklearn computes it); 0 when undefined."""
    p, y = np.asarray(preds), np.asarray(labels)
    classes = np.union1d(p, y)
    cm = np.array([[np.sum((y == a) & (p == b)) for b in classes] for a in classes], dtype=np.float64)
    t, q = cm.sum(axis=1), cm.sum(axis=0)  # true counts, predicted counts per class
    c, s = np.trace(cm), cm.sum()
    denom = np.sqrt((s * s - q @ q) * (s * s - t @ t))
    return float((c * s - t @ q) / denom) if denom else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denom) if denom else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (scipy's 'average' method)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start of each run of equal values, then the mean rank over the run.
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    run_id = np.cumsum(starts) - 1
    bounds = np.r_[np.flatnonzero(starts), len(x)]
    mean_rank = (bounds[:-1] + bounds[1:] + 1) / 2.0
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = mean_rank[run_id]
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(_ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64)))


# --- SQuAD v1.1 (the official evaluate-v1.1.py rules) ---

def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, squeeze whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_exact(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], answers: dict[str, list[str]]) -> dict[str, float]:
    """Exact match and F1 in percent, each the max over a question's gold answers."""
    em = f1 = 0.0
    for qid, golds in answers.items():
        pred = predictions.get(qid, "")
        em += max(squad_exact(pred, g) for g in golds)
        f1 += max(squad_f1(pred, g) for g in golds)
    n = max(len(answers), 1)
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n}


# --- Entity-level scores, conlleval semantics ---

def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O" or "-" not in tag:
        return "O", ""
    prefix, kind = tag.split("-", 1)
    return prefix, kind


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) spans. Works for IOB1 and IOB2 alike.

    As conlleval: a chunk starts at B-, or at I- after O or after a chunk of
    another type (IOB1's normal start); it ends before O, B-, or a type change.
    E-/S- (IOBES) are honoured too.
    """
    spans = []
    start, kind = None, ""
    prev_prefix, prev_kind = "O", ""
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, k = _split_tag(tag)
        ends = start is not None and (
            prefix in ("O", "B", "S") or k != prev_kind or prev_prefix in ("E", "S"))
        if ends:
            spans.append((kind, start, i - 1))
            start = None
        begins = prefix in ("B", "S") or (prefix in ("I", "E") and (
            prev_prefix == "O" or k != prev_kind or prev_prefix in ("E", "S")))
        if begins:
            start, kind = i, k
        prev_prefix, prev_kind = prefix, k
    return spans


def entity_scores(pred_tags: Iterable[Sequence[str]], gold_tags: Iterable[Sequence[str]]) -> dict[str, float]:
    """Micro precision/recall/F1 (in percent) over exactly matching entity spans."""
    tp = n_pred = n_gold = 0
    for pred, gold in zip(pred_tags, gold_tags, strict=True):
        if len(pred) != len(gold):
            raise ValueError(f"prediction has {len(pred)} tags, gold has {len(gold)}")
        p, g = set(entities(pred)), set(entities(gold))
        tp += len(p & g)
        n_pred += len(p)
        n_gold += len(g)
    precision = 100 * tp / n_pred if n_pred else 0.0
    recall = 100 * tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """Rewrite an entity-initial I- as B-, so every entity starts with B- (same spans)."""
    out = []
    for i, tag in enumerate(tags):
        prefix, kind = _split_tag(tag)
        if prefix == "I":
            prev_prefix, prev_kind = _split_tag(tags[i - 1]) if i else ("O", "")
            if prev_prefix == "O" or prev_kind != kind:
                tag = f"B-{kind}"
        out.append(tag)
    return out
