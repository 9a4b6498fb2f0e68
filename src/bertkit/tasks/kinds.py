"""Task kinds: what fine-tuning, evaluation and prediction do differently for each kind of task.

    kind            predicts                           head (bertkit.heads)
    classification  a label per text or text pair      BertForSequenceClassification
    regression      a number per text or text pair     BertForSequenceClassification, num_labels=1
    token           a tag per word (NER)               BertForTokenClassification
    qa              an answer span in a context        BertForQuestionAnswering

A kind owns its head, the features of its examples, the predictions made from the model's
outputs (in the format `bertkit predict` prints), their scores and the train statistics.
Reading files, batching, training and loading are shared and never ask which kind they run.

This module needs no torch (the head class is imported when asked for), so the task table
and the command line can name tasks without loading it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from bertkit.batching import Prepared
from bertkit.tasks import metrics
from bertkit.tasks.features import text_features, token_features, word_tags
from bertkit.tasks.qa import DOC_STRIDE, Window, best_spans, qa_features
from bertkit.tasks.readers import QAExample, TextExample, TokenExample

# outputs[i][j]: the model's outputs for feature j of example i, {name: numpy array}
Outputs = Sequence[Sequence[dict[str, np.ndarray]]]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class TaskKind:
    """The base: one subclass per kind; an instance carries the task's label names."""

    name: ClassVar[str]
    head_name: ClassVar[str]  # its class in bertkit.heads (also config.json's "architectures")
    output_names: ClassVar[tuple[str, ...]] = ("logits",)  # the model outputs predictions read
    metric: ClassVar[str]  # the score that picks the best epoch unless the task says otherwise

    def __init__(self, labels: Sequence[str] | None = None):
        self.labels = tuple(labels) if labels is not None else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.labels) if self.labels else ''})"

    @property
    def head(self) -> type:
        from bertkit import heads  # here, not at the top: reading the task table needs no torch

        return getattr(heads, self.head_name)

    @classmethod
    def matches(cls, config) -> bool:
        """Is a model with this config (a fine-tuned checkpoint's) of this kind?"""
        return (config.extra.get("architectures") or [None])[0] == cls.head_name

    @classmethod
    def from_config(cls, config) -> TaskKind:
        labels = config.id2label or {i: f"LABEL_{i}" for i in range(config.num_labels)}
        return cls([labels[i] for i in range(config.num_labels)])

    def config_overrides(self) -> dict:
        """BertConfig fields the head needs: label names (config.json's id2label), or one output."""
        return {"id2label": dict(enumerate(self.labels)), "label2id": {n: i for i, n in enumerate(self.labels)}}

    def config_extra(self, max_length: int, doc_stride: int | None) -> dict:
        """What prediction needs to see inputs as training saw them (kept in config.json)."""
        return {"finetuning_max_length": max_length}

    def examples(self, inputs: Sequence) -> list:
        """Raw prediction inputs -> examples; a wrong kind of input is a TypeError naming it."""
        raise NotImplementedError

    def parse_line(self, line: str) -> str | tuple[str, str]:
        """One input from a line of text (`bertkit predict`): a text, or a pair split at the first tab."""
        return tuple(line.split("\t", 1)) if "\t" in line else line

    def features(self, examples: Sequence, tokenizer, max_length: int, doc_stride: int | None = None) -> list[Prepared]:
        raise NotImplementedError

    def predictions(self, outputs: Outputs, prepared: Sequence[Prepared]) -> list[dict]:
        """Model outputs -> one prediction per example, in the format `bertkit predict` prints."""
        raise NotImplementedError

    def scores(self, predictions: Sequence[dict], examples: Sequence) -> dict[str, float]:
        raise NotImplementedError

    def train_stats(self, batch: dict, out: dict) -> dict[str, tuple]:
        """{name: (sum, count)} from the logits a training step computed anyway (the engine's batch_stats)."""
        return {}


class _TextKind(TaskKind):
    """Sentences or sentence pairs, one output vector per input (on the pooled [CLS])."""

    head_name = "BertForSequenceClassification"

    def __init__(self, labels: Sequence[str] | None = None, head_tail: tuple[int, int] | None = None):
        super().__init__(labels)
        # Long inputs keep their head and tail in this proportion (IMDB reviews: Sun et al. 2019,
        # "How to fine-tune BERT for text classification", best was first 128 + last 382 tokens).
        self.head_tail = tuple(head_tail) if head_tail else None

    @classmethod
    def from_config(cls, config) -> TaskKind:
        kind = super().from_config(config)
        saved = config.extra.get("finetuning_head_tail")
        kind.head_tail = tuple(saved) if saved else None
        return kind

    def config_extra(self, max_length: int, doc_stride: int | None) -> dict:
        extra = super().config_extra(max_length, doc_stride)
        if self.head_tail:
            extra["finetuning_head_tail"] = list(self.head_tail)
        return extra

    def examples(self, inputs: Sequence) -> list[TextExample]:
        out = []
        for i, x in enumerate(inputs):
            if isinstance(x, str):
                out.append(TextExample(x))
            elif isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(t, str) for t in x):
                out.append(TextExample(x[0], x[1]))
            else:
                raise TypeError(f"input {i}: expected a text or a (text, text pair), got {type(x).__name__} {x!r:.60}")
        return out

    def features(self, examples: Sequence[TextExample], tokenizer, max_length: int,
                 doc_stride: int | None = None) -> list[Prepared]:
        head_tail = None
        if self.head_tail:  # the head:tail proportion, at this length
            head = round(self.head_tail[0] * (max_length - 2) / sum(self.head_tail))
            head_tail = (head, max_length - 2 - head)
        features, cut = text_features(examples, tokenizer, max_length, head_tail)
        return [Prepared([f], ex, truncated=c) for ex, f, c in zip(examples, features, cut)]


class Classification(_TextKind):
    name = "classification"
    metric = "accuracy"

    @classmethod
    def matches(cls, config) -> bool:
        return super().matches(config) and not Regression.matches(config)

    def predictions(self, outputs: Outputs, prepared: Sequence[Prepared]) -> list[dict]:
        results = []
        for (out,) in outputs:
            probs = softmax(out["logits"].astype(np.float64))  # [labels]
            best = int(out["logits"].argmax())
            results.append({"label": self.labels[best], "score": float(probs[best]),
                            "scores": {name: float(p) for name, p in zip(self.labels, probs)}})
        return results

    def scores(self, predictions: Sequence[dict], examples: Sequence[TextExample]) -> dict[str, float]:
        ids = {name: i for i, name in enumerate(self.labels)}
        preds, gold = [ids[p["label"]] for p in predictions], [ex.label for ex in examples]
        out = {"accuracy": metrics.accuracy(preds, gold)}
        if len(self.labels) == 2:
            out["f1"] = metrics.f1_binary(preds, gold)
            out["mcc"] = metrics.matthews_corrcoef(preds, gold)
        return out

    def train_stats(self, batch: dict, out: dict) -> dict[str, tuple]:
        return {"accuracy": ((out["logits"].argmax(-1) == batch["labels"]).sum(), len(batch["labels"]))}


class Regression(_TextKind):
    name = "regression"
    metric = "spearman"

    def __init__(self, labels: Sequence[str] | None = None, head_tail: tuple[int, int] | None = None):
        super().__init__(None, head_tail)  # no label names: the one output is the number

    @classmethod
    def matches(cls, config) -> bool:
        return super().matches(config) and (config.problem_type == "regression" or config.num_labels == 1)

    def config_overrides(self) -> dict:
        return {"num_labels": 1, "problem_type": "regression"}

    def predictions(self, outputs: Outputs, prepared: Sequence[Prepared]) -> list[dict]:
        return [{"score": float(out["logits"][0])} for (out,) in outputs]

    def scores(self, predictions: Sequence[dict], examples: Sequence[TextExample]) -> dict[str, float]:
        preds, gold = [p["score"] for p in predictions], [ex.label for ex in examples]
        return {"pearson": metrics.pearson(preds, gold), "spearman": metrics.spearman(preds, gold)}


class TokenClassification(TaskKind):
    """A tag per word, predicted on the word's first piece; entities are runs of B-/I- tags."""

    name = "token"
    head_name = "BertForTokenClassification"
    metric = "f1"

    def examples(self, inputs: Sequence) -> list[TokenExample]:
        for i, x in enumerate(inputs):
            if not isinstance(x, str):
                raise TypeError(f"input {i}: token classification takes raw text (a str), got {type(x).__name__}")
        return [TokenExample.from_text(x) for x in inputs]

    def parse_line(self, line: str) -> str:
        return line  # a tab is whitespace between words

    def features(self, examples: Sequence[TokenExample], tokenizer, max_length: int,
                 doc_stride: int | None = None) -> list[Prepared]:
        features, starts, _ = token_features(examples, tokenizer, self.labels, max_length)
        # Words past max_length have no position: they are predicted as "O".
        return [Prepared([f], ex, [s], truncated=len(s) < len(ex.words))
                for ex, f, s in zip(examples, features, starts)]

    def predictions(self, outputs: Outputs, prepared: Sequence[Prepared]) -> list[dict]:
        results = []
        for (out,), p in zip(outputs, prepared):
            ex, (starts,) = p.example, p.positions
            probs = softmax(out["logits"].astype(np.float64))  # [seq, labels]
            tags = word_tags(out["logits"].argmax(-1), starts, len(ex.words), self.labels)
            word_scores = [float(probs[s].max()) for s in starts]  # words past truncation have none
            entities = []
            for kind, a, b in metrics.entities(tags):
                start, end = ex.spans[a][0], ex.spans[b][1]
                scored = word_scores[a:b + 1]
                entities.append({"entity": kind, "text": ex.text[start:end], "start": start, "end": end,
                                 "score": float(np.mean(scored)) if scored else 0.0,
                                 "words": [a, b + 1]})  # word indices, end exclusive
            results.append({"tags": tags, "entities": entities})
        return results

    def scores(self, predictions: Sequence[dict], examples: Sequence[TokenExample]) -> dict[str, float]:
        return metrics.entity_scores([p["tags"] for p in predictions], [ex.tags for ex in examples])

    def train_stats(self, batch: dict, out: dict) -> dict[str, tuple]:
        real = batch["labels"] != -100
        return {"accuracy": ((out["logits"].argmax(-1) == batch["labels"])[real].sum(), real.sum())}


class QuestionAnswering(TaskKind):
    """Extractive QA: the best answer span over the windows of a long context (see qa.py)."""

    name = "qa"
    head_name = "BertForQuestionAnswering"
    output_names = ("start_logits", "end_logits")
    metric = "f1"

    @classmethod
    def from_config(cls, config) -> TaskKind:
        return cls()

    def config_overrides(self) -> dict:
        return {}

    def config_extra(self, max_length: int, doc_stride: int | None) -> dict:
        return {**super().config_extra(max_length, doc_stride), "finetuning_doc_stride": doc_stride or DOC_STRIDE}

    def examples(self, inputs: Sequence) -> list[QAExample]:
        out = []
        for i, x in enumerate(inputs):
            if not (isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(t, str) for t in x)):
                raise TypeError(f"input {i}: question answering takes (question, context) pairs, "
                                f"got {type(x).__name__} {x!r:.60}")
            out.append(QAExample(str(i), x[0], x[1]))
        return out

    def parse_line(self, line: str) -> tuple[str, str]:
        if "\t" not in line:
            raise ValueError("question answering needs 'question<TAB>context'")
        question, context = line.split("\t", 1)
        return question, context

    def features(self, examples: Sequence[QAExample], tokenizer, max_length: int,
                 doc_stride: int | None = None) -> list[Prepared]:
        features, windows = qa_features(examples, tokenizer, max_length, doc_stride or DOC_STRIDE)
        per_example: list[tuple[list, list]] = [([], []) for _ in examples]
        for f, w in zip(features, windows):
            per_example[w.example][0].append(f)
            per_example[w.example][1].append(w.offsets)
        return [Prepared(fs, ex, offsets) for ex, (fs, offsets) in zip(examples, per_example)]

    def predictions(self, outputs: Outputs, prepared: Sequence[Prepared]) -> list[dict]:
        results = []
        for outs, p in zip(outputs, prepared):
            windows = [Window(0, offsets) for offsets in p.positions]
            (best,) = best_spans([p.example], windows, [o["start_logits"] for o in outs],
                                 [o["end_logits"] for o in outs])
            results.append({"answer": best["answer"], "score": best["probability"], "start": best["start"],
                            "end": best["end"]})
        return results

    def scores(self, predictions: Sequence[dict], examples: Sequence[QAExample]) -> dict[str, float]:
        return metrics.squad_scores({ex.qid: p["answer"] for ex, p in zip(examples, predictions)},
                                    {ex.qid: ex.answers for ex in examples})

    def train_stats(self, batch: dict, out: dict) -> dict[str, tuple]:
        hit = (out["start_logits"].argmax(-1) == batch["start_positions"]) & (
            out["end_logits"].argmax(-1) == batch["end_positions"])
        return {"span_accuracy": (hit.sum(), len(hit))}


KINDS: tuple[type[TaskKind], ...] = (Classification, Regression, TokenClassification, QuestionAnswering)


def kind_of(config, where: str = "config.json") -> TaskKind:
    """The kind of a fine-tuned model, from its config (architectures, labels, saved settings)."""
    for kind in KINDS:
        if kind.matches(config):
            return kind.from_config(config)
    arch = (config.extra.get("architectures") or [None])[0]
    raise ValueError(f"{where}: architecture {arch!r} is not a fine-tuned task head "
                     f"({', '.join(sorted({k.head_name for k in KINDS}))})")
