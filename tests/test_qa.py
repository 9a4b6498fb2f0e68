"""QA: window labels and n-best decoding round-trip on real SQuAD questions."""

from __future__ import annotations

import numpy as np
import pytest

from bertkit.tasks.datasets import TASKS
from bertkit.tasks.metrics import squad_scores
from bertkit.tasks.qa import best_spans, qa_features, span_labels
from conftest import DATA_DIR, data_path


@pytest.mark.parametrize("max_length,stride", [(384, 128), (96, 32)])
def test_qa_gold_spans_decode_to_gold_answers(tok, max_length, stride):
    data_path("squad_v1.1")
    examples = TASKS["squad"].examples("dev", DATA_DIR)[:400]
    features, windows = qa_features(examples, tok, max_length=max_length, doc_stride=stride)
    assert all(len(f["input_ids"]) <= max_length for f in features)
    if max_length == 96:
        assert len(features) > 2 * len(examples)  # really windowed
    found = set()
    starts, ends = [], []
    for f, w in zip(features, windows):
        s, e = f["start_positions"], f["end_positions"]
        ex = examples[w.example]
        if (s, e) != (0, 0):
            found.add(w.example)
            # The labelled pieces cover the answer and nothing outside its first/last piece.
            text = ex.context[w.offsets[s][0]:w.offsets[e][1]]
            assert ex.answer_text in text, (ex.answer_text, text)
        # Logits that point at the labels; windows without the answer point at [CLS].
        sl, el = np.full(len(f["input_ids"]), -10.0), np.full(len(f["input_ids"]), -10.0)
        sl[s], el[e] = 10.0, 10.0
        starts.append(sl)
        ends.append(el)
    assert len(found) >= 0.99 * len(examples)
    spans = best_spans(examples, windows, starts, ends)
    exact = np.mean([p["answer"] == ex.answer_text for p, ex in zip(spans, examples)])
    assert exact >= 0.97  # misses: answers that end inside a word piece ("1960s" vs "1960")
    scores = squad_scores({ex.qid: p["answer"] for ex, p in zip(examples, spans)},
                          {ex.qid: ex.answers for ex in examples})
    assert scores["f1"] > 98.0
    for p, ex in zip(spans, examples):
        assert ex.context[p["start"]:p["end"]] == p["answer"]


def test_qa_span_labels_point_at_cls_outside_window():
    offsets = [None, None, None, (0, 5), (6, 10), (10, 11), None]  # [CLS] q [SEP] ctx... [SEP]
    assert span_labels(offsets, 6, 11) == (4, 5)
    assert span_labels(offsets, 7, 9) == (4, 4)  # inside one piece
    assert span_labels(offsets, 20, 25) == (0, 0)  # after the window
    assert span_labels(offsets, 8, 25) == (0, 0)  # only partly inside
