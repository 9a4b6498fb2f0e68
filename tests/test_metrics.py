"""Metrics against the reference implementations (sklearn, scipy, seqeval) on random and real data."""

from __future__ import annotations

import numpy as np
import pytest

from bertkit.tasks import metrics
from bertkit.tasks.readers import read_conll
from conftest import data_path


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p = np.where(rng.random(300) < 0.7, y, 1 - y)  # correlated with y, not equal
    assert metrics.accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p))
    assert metrics.f1_binary(p, y) == pytest.approx(skm.f1_score(y, p))
    assert metrics.matthews_corrcoef(p, y) == pytest.approx(skm.matthews_corrcoef(y, p))
    # Multi-class MCC and the degenerate one-class case.
    y3, p3 = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    assert metrics.matthews_corrcoef(p3, y3) == pytest.approx(skm.matthews_corrcoef(y3, p3))
    assert metrics.matthews_corrcoef([1] * 10, y[:10]) == skm.matthews_corrcoef(y[:10], [1] * 10) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy_with_ties(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    # STS-B-like scores: few distinct values, so many ties for Spearman.
    y = rng.integers(0, 21, 500) / 4.0
    x = y + rng.normal(0, 1.5, 500)
    x[::7] = np.round(x[::7])
    assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_squad_normalisation_and_scores():
    # The official rules: case, punctuation and articles do not count.
    assert metrics.normalize_answer("The  Broncos!") == "broncos"
    assert metrics.squad_exact("the Denver Broncos.", "Denver Broncos") == 1.0
    assert metrics.squad_f1("Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)
    assert metrics.squad_f1("Carolina", "Denver Broncos") == 0.0
    s = metrics.squad_scores({"a": "Denver", "b": "x"}, {"a": ["Denver Broncos", "Denver"], "b": ["y"]})
    assert s == {"exact_match": 50.0, "f1": 50.0}


HAND_CASES = [
    # IOB1: an entity starts with I-; B- only where two of the same type touch.
    (["I-PER", "I-PER", "O", "I-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    (["I-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)]),
    (["I-ORG", "I-LOC"], [("ORG", 0, 0), ("LOC", 1, 1)]),
    # IOB2 and a stray I- after O.
    (["B-MISC", "I-MISC", "O", "I-MISC", "B-MISC"], [("MISC", 0, 1), ("MISC", 3, 3), ("MISC", 4, 4)]),
    (["O", "O"], []),
]


@pytest.mark.parametrize("tags,spans", HAND_CASES)
def test_entities_conlleval_chunking(tags, spans):
    assert metrics.entities(tags) == spans
    # IOB1 -> IOB2 keeps the same chunks.
    assert metrics.entities(metrics.iob1_to_iob2(tags)) == spans


def test_entity_scores_match_seqeval_on_real_conll():
    seqeval = pytest.importorskip("seqeval.metrics")
    gold = [ex.tags for ex in read_conll(data_path("conll2003", "eng.testb.txt"))]
    rng = np.random.default_rng(0)
    kinds = ["O", "I-PER", "I-LOC", "I-ORG", "I-MISC", "B-LOC", "B-ORG"]
    # Corrupt 10% of the tags so precision/recall are not trivial.
    pred = [[t if rng.random() > 0.1 else kinds[rng.integers(len(kinds))] for t in s] for s in gold]
    ours = metrics.entity_scores(pred, gold)
    # seqeval's default mode is conlleval-compatible (handles IOB1's I- starts).
    assert ours["f1"] == pytest.approx(100 * seqeval.f1_score(gold, pred), abs=1e-9)
    assert ours["precision"] == pytest.approx(100 * seqeval.precision_score(gold, pred), abs=1e-9)
    assert ours["recall"] == pytest.approx(100 * seqeval.recall_score(gold, pred), abs=1e-9)
    # Entity count of the real test set (Tjong Kim Sang & De Meulder 2003: 5,648).
    assert sum(len(metrics.entities(s)) for s in gold) == 1668 + 702 + 1661 + 1617
    assert metrics.entity_scores(gold, gold)["f1"] == 100.0
