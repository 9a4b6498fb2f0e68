"""Extractive question answering (SQuAD): windows over long contexts, span labels, span decoding.

A context longer than the model's window is cut into overlapping windows of
`[CLS] question [SEP] context-piece [SEP]` (max 384 tokens; consecutive
windows share `doc_stride`=128 context tokens, Hugging Face run_qa's meaning of
the stride). Each window is trained on the answer's start/end token when the
whole answer lies inside it, else on [CLS] (position 0). At prediction time the
best span over all windows of a question wins; spans are mapped back to the
original context through the word pieces' character offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bertkit.tasks.readers import QAExample

DOC_STRIDE = 128  # context tokens shared by consecutive windows, unless a recipe says otherwise


@dataclass
class Window:
    """What is needed to map one window's logits back to its example's text."""

    example: int  # index into the examples list
    offsets: list[tuple[int, int] | None]  # per token: (char start, char end) in the context, None outside it


def span_labels(offsets: Sequence[tuple[int, int] | None], char_start: int, char_end: int) -> tuple[int, int]:
    """(start token, end token) of characters [char_start, char_end) in this window, or (0, 0).

    (0, 0) points at [CLS]: the answer is not (wholly) inside the window.
    """
    ctx = [i for i, o in enumerate(offsets) if o is not None]
    if not ctx or offsets[ctx[0]][0] > char_start or offsets[ctx[-1]][1] < char_end:
        return 0, 0
    start = next(i for i in ctx if offsets[i][1] > char_start)  # first piece reaching into the answer
    end = next(i for i in reversed(ctx) if offsets[i][0] < char_end)  # last piece starting inside it
    return start, end


def qa_features(examples: Sequence[QAExample], tokenizer, max_length: int = 384,
                doc_stride: int = DOC_STRIDE) -> tuple[list[dict], list[Window]]:
    """Windows of every example; labels (start/end_positions) when the example has an answer."""
    features, windows = [], []
    for i, ex in enumerate(examples):
        # only_second: the question stays whole, the context overflows into further windows.
        first = tokenizer.encode(ex.question, ex.context, max_length=max_length, truncation="only_second",
                                 stride=doc_stride, return_overflowing=True, return_offsets=True)
        for enc in (first, *first.overflowing):
            offsets = [tuple(o) if seq == 1 else None for o, seq in zip(enc.offsets, enc.sequence_ids)]
            f = {"input_ids": enc.input_ids, "token_type_ids": enc.token_type_ids,
                 "attention_mask": enc.attention_mask}
            if ex.answer_start is not None:
                f["start_positions"], f["end_positions"] = span_labels(
                    offsets, ex.answer_start, ex.answer_start + len(ex.answer_text))
            features.append(f)
            windows.append(Window(i, offsets))
    return features, windows


def best_spans(examples: Sequence[QAExample], windows: Sequence[Window], start_logits: Sequence[np.ndarray],
               end_logits: Sequence[np.ndarray], n_best: int = 20, max_answer_tokens: int = 30) -> list[dict]:
    """The highest-scoring span of each example over all its windows.

    Per window, the n_best start and n_best end positions are paired; a pair
    counts if both lie in the context, end >= start and it spans at most
    max_answer_tokens pieces. Score = start logit + end logit. Returns, per
    example, {"answer", "score", "probability", "start", "end"} (character
    offsets; probability = P(start) * P(end) under its window's softmax); an
    example whose windows hold no valid span gets an empty answer.
    """
    best = [{"answer": "", "score": float("-inf"), "probability": 0.0, "start": 0, "end": 0} for _ in examples]
    for w, s_log, e_log in zip(windows, start_logits, end_logits):
        n = len(w.offsets)
        s_log, e_log = np.asarray(s_log)[:n], np.asarray(e_log)[:n]  # drop batch padding
        starts = np.argsort(s_log)[::-1][:n_best]
        ends = np.argsort(e_log)[::-1][:n_best]
        for s in starts:
            if w.offsets[s] is None:
                continue
            for e in ends:
                if w.offsets[e] is None or e < s or e - s + 1 > max_answer_tokens:
                    continue
                score = float(s_log[s] + e_log[e])
                if score > best[w.example]["score"]:
                    a, b = w.offsets[s][0], w.offsets[e][1]
                    prob = float(np.exp(s_log[s] + e_log[e] - _logsumexp(s_log) - _logsumexp(e_log)))
                    best[w.example] = {"answer": examples[w.example].context[a:b], "score": score,
                                       "probability": prob, "start": a, "end": b}
    return best


def _logsumexp(x: np.ndarray) -> float:
    m = float(x.max())
    return m + float(np.log(np.exp(x - m).sum()))
