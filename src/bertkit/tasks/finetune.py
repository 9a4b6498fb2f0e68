"""Glue between a task and the engine: finetune, evaluate, predict.

finetune: reader -> features -> head (from a pre-trained checkpoint) ->
`bertkit.train.train` with this task's evaluate and train-accuracy functions.
The engine keeps the best epoch in out_dir/best (Hugging Face layout, label
names in config.json's id2label, task name in `finetuning_task`); evaluate and
predict load such a directory.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bertkit.batching import Batches, collate, length_batches
from bertkit.config import BertConfig
from bertkit.heads import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification
from bertkit.hub import resolve
from bertkit.tasks import metrics, readers
from bertkit.tasks.datasets import TASKS, Task
from bertkit.tasks.features import text_features, token_features, word_tags
from bertkit.tasks.qa import best_spans, qa_features
from bertkit.tokenizer import Tokenizer
from bertkit.train import TrainConfig, train

HEADS = {"classification": BertForSequenceClassification, "regression": BertForSequenceClassification,
         "token": BertForTokenClassification, "qa": BertForQuestionAnswering}
SUMMARY_FILE = "finetune.json"


# ---------------------------------------------------------------------------- tasks from user files


def custom_task(train_file: str | Path | None, dev_file: str | Path | None = None, *, text_column: str = "text",
                text_pair_column: str | None = None, label_column: str = "label", regression: bool = False,
                labels: Sequence[str] | None = None) -> Task:
    """A classification/regression task over the user's CSV, TSV or JSON-lines files.

    The label set is `labels` when given, else every label text in train_file, sorted.
    """
    def read(path: Path, split: str, labels=labels):
        kw = dict(text_column=text_column, text_pair_column=text_pair_column, label_column=label_column,
                  labels=None if regression else labels)
        return (readers.read_jsonl(path, **kw) if Path(path).suffix in (".jsonl", ".json")
                else readers.read_table(path, **kw))

    if not regression and labels is None:
        if train_file is None:
            raise ValueError("a user task needs --labels or a train file to learn its label set from")
        raw = read(Path(train_file), "train", labels=readers.RAW)
        labels = tuple(sorted({ex.label for ex in raw}))
    files = {k: str(Path(v).resolve()) for k, v in (("train", train_file), ("dev", dev_file)) if v is not None}
    return Task("custom", "regression" if regression else "classification", "spearman" if regression else "accuracy",
                files, partial(read, labels=labels), labels=None if regression else tuple(labels))


def get_task(task: str | Task | None, **custom) -> Task:
    if isinstance(task, Task):
        return task
    if task in (None, "custom"):
        if task is None and not (custom.get("train_file") or custom.get("dev_file")):
            raise ValueError(f"give --task (one of {', '.join(TASKS)}) or your own --train-file/--dev-file")
        return custom_task(**custom)
    key = task.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)} or give --train-file")
    return TASKS[key]


def _limit(examples: list, n: int | None, seed: int) -> list:
    """A fixed random subset (files like IMDB are sorted by label: the first n would be one class)."""
    if n is None or n >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


# ---------------------------------------------------------------------------- features and scores


class Prepared:
    """A task's examples turned into features, plus what scoring needs to map outputs back."""

    def __init__(self, task: Task, examples: list, tokenizer: Tokenizer, max_length: int | None = None):
        self.task, self.examples = task, examples
        length = max_length or task.max_length
        if task.kind in ("classification", "regression"):
            head_tail = task.head_tail
            if head_tail and length != task.max_length:  # keep the head:tail proportion
                head = round(head_tail[0] * (length - 2) / sum(head_tail))
                head_tail = (head, length - 2 - head)
            self.features = text_features(examples, tokenizer, length, head_tail)
        elif task.kind == "token":
            self.features, self.word_starts, truncated = token_features(examples, tokenizer, task.labels, length)
            if truncated:
                print(f"{task.name}: {truncated} words past {length} tokens are predicted as 'O'", file=sys.stderr)
        else:
            self.features, self.windows = qa_features(examples, tokenizer, length)

    def outputs(self, model: torch.nn.Module, batch_size: int = 64) -> tuple[list[dict], float | None]:
        """Per-feature numpy outputs in feature order, and the mean loss when labels are present."""
        per_feature: list[dict] = [{}] * len(self.features)
        loss_sum, n = 0.0, 0
        for idx in length_batches([len(f["input_ids"]) for f in self.features], batch_size):
            batch = collate([self.features[i] for i in idx])
            with torch.no_grad():
                out = model(**batch)
            if "loss" in out:
                loss_sum, n = loss_sum + float(out["loss"]) * len(idx), n + len(idx)
            keys = ("start_logits", "end_logits") if self.task.kind == "qa" else ("logits",)
            arrays = {k: out[k].float().numpy() for k in keys}
            for row, i in enumerate(idx):
                per_feature[i] = {k: a[row] for k, a in arrays.items()}
        return per_feature, (loss_sum / n if n else None)

    def predictions(self, outs: list[dict]) -> list:
        """Outputs -> one prediction per example (class id, score, word tags, or answer span)."""
        kind = self.task.kind
        if kind == "classification":
            return [int(o["logits"].argmax()) for o in outs]
        if kind == "regression":
            return [float(o["logits"][0]) for o in outs]
        if kind == "token":
            return [word_tags(o["logits"].argmax(-1), starts, len(ex.words), self.task.labels)
                    for o, starts, ex in zip(outs, self.word_starts, self.examples)]
        return best_spans(self.examples, self.windows, [o["start_logits"] for o in outs],
                          [o["end_logits"] for o in outs])

    def scores(self, preds: list) -> dict[str, float]:
        kind, exs = self.task.kind, self.examples
        if kind == "classification":
            gold = [ex.label for ex in exs]
            out = {"accuracy": metrics.accuracy(preds, gold)}
            if len(self.task.labels) == 2:
                out["f1"] = metrics.f1_binary(preds, gold)
                out["mcc"] = metrics.matthews_corrcoef(preds, gold)
            return out
        if kind == "regression":
            gold = [ex.label for ex in exs]
            return {"pearson": metrics.pearson(preds, gold), "spearman": metrics.spearman(preds, gold)}
        if kind == "token":
            return metrics.entity_scores(preds, [ex.tags for ex in exs])
        return metrics.squad_scores({ex.qid: p["answer"] for ex, p in zip(exs, preds)},
                                    {ex.qid: ex.answers for ex in exs})

    def evaluate(self, model: torch.nn.Module, batch_size: int = 64) -> dict[str, float]:
        outs, loss = self.outputs(model, batch_size)
        result = self.scores(self.predictions(outs))
        if loss is not None:
            result["loss"] = loss
        return result


def train_stats(kind: str, batch: dict, out: dict) -> dict[str, tuple[float, float]]:
    """Train accuracy from the logits the training step computed anyway (engine's batch_stats)."""
    if kind == "classification":
        return {"accuracy": ((out["logits"].argmax(-1) == batch["labels"]).sum(), len(batch["labels"]))}
    if kind == "token":
        mask = batch["labels"] != -100
        return {"accuracy": ((out["logits"].argmax(-1) == batch["labels"])[mask].sum(), mask.sum())}
    if kind == "qa":
        hit = (out["start_logits"].argmax(-1) == batch["start_positions"]) & (
            out["end_logits"].argmax(-1) == batch["end_positions"])
        return {"span_accuracy": (hit.sum(), len(hit))}
    return {}


# ---------------------------------------------------------------------------- the three commands


def finetune(task: str | Task | None, model: str | Path, out_dir: str | Path, *, epochs: int = 3, lr: float = 2e-5,
             batch_size: int = 32, warmup: float = 0.1, bf16: bool = False, freeze_encoder: bool = False,
             max_train_examples: int | None = None, max_eval_examples: int | None = None,
             max_length: int | None = None, seed: int = 42, data_dir: str | Path | None = None,
             train_file: str | Path | None = None, dev_file: str | Path | None = None,
             text_column: str = "text", text_pair_column: str | None = None, label_column: str = "label",
             regression: bool = False, labels: Sequence[str] | None = None, weight_decay: float = 0.01,
             progress: bool = True) -> dict:
    """Fine-tune `model` on `task`; the best epoch (by the task's metric on dev) lands in out_dir/best.

    freeze_encoder trains only the pooler and the head on frozen BERT features (the feature-based
    alternative of the BERT paper, section 5.3); it wants a larger lr (e.g. 1e-3).
    Returns the summary also written to out_dir/finetune.json.
    """
    t = get_task(task, train_file=train_file, dev_file=dev_file, text_column=text_column,
                 text_pair_column=text_pair_column, label_column=label_column, regression=regression, labels=labels)
    if t.name == "custom" and dev_file is None:
        raise ValueError("a user task needs --dev-file to pick the best epoch")
    model_dir = resolve(model)
    tokenizer = Tokenizer.from_pretrained(model_dir)
    t0 = time.perf_counter()
    train_ex = _limit(t.examples("train", data_dir), max_train_examples, seed)
    dev_ex = _limit(t.examples("dev", data_dir), max_eval_examples, seed)
    train_set = Prepared(t, train_ex, tokenizer, max_length)
    dev_set = Prepared(t, dev_ex, tokenizer, max_length)
    prep_seconds = time.perf_counter() - t0

    head = HEADS[t.kind]
    overrides: dict = {}
    if t.kind == "regression":
        overrides = dict(num_labels=1, problem_type="regression")
    elif t.labels is not None:
        overrides = dict(id2label=dict(enumerate(t.labels)), label2id={n: i for i, n in enumerate(t.labels)})
    config = BertConfig.from_json(model_dir / "config.json")
    if freeze_encoder:  # fixed features: no dropout inside the frozen encoder, the head keeps its own
        overrides.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         classifier_dropout=config.classifier_dropout if config.classifier_dropout is not None
                         else config.hidden_dropout_prob)
    # The task and input length travel with the model, so evaluate/predict see what training saw.
    config = config.replace(**overrides, extra={**config.extra, "finetuning_task": t.name,
                                                "finetuning_max_length": max_length or t.max_length})
    torch.manual_seed(seed)  # the new head's initial weights
    net = head.from_pretrained(model_dir, config=config)
    if freeze_encoder:
        # Embeddings and Transformer layers stay fixed. The pooler (dense + tanh on [CLS]) trains with
        # the classifier, a small MLP over the frozen features: models trained without NSP (such as
        # sentence-transformers' all-MiniLM-L6-v2) carry a pooler that was never trained.
        for name, p in net.bert.named_parameters():
            p.requires_grad_(name.startswith("pooler."))

    out_dir = Path(out_dir)
    cfg = TrainConfig(lr=lr, epochs=epochs, warmup=warmup, weight_decay=weight_decay, seed=seed,
                      mixed_precision="bf16" if bf16 else "no", out_dir=str(out_dir), metric=t.metric,
                      greater_is_better=True, progress=progress)
    batches = Batches(train_set.features, batch_size, shuffle=True, seed=seed)
    result = train(net, batches, cfg, dev_set.evaluate, batch_stats=partial(train_stats, t.kind))

    # One row per epoch: the engine's end-of-epoch records, with the epoch's own train time.
    rows, last_elapsed = [], 0.0
    for rec in result.history:
        if any(k.startswith("val_") for k in rec):
            row = {k: v for k, v in rec.items() if k not in ("elapsed", "best")}
            row["epoch_seconds"] = rec["elapsed"] - last_elapsed
            last_elapsed = rec["elapsed"]
            rows.append(row)
    summary = {
        "task": t.name, "model": str(model), "metric": t.metric, "best": result.best_metric,
        "best_step": result.best_step, "best_dir": str(out_dir / "best"), "epochs": rows,
        "train_examples": len(train_ex), "train_features": len(train_set.features), "dev_examples": len(dev_ex),
        "prep_seconds": prep_seconds, "train_seconds": last_elapsed,
        "settings": dict(epochs=epochs, lr=lr, batch_size=batch_size, warmup=warmup, bf16=bf16, seed=seed,
                         freeze_encoder=freeze_encoder, max_length=max_length or t.max_length,
                         weight_decay=weight_decay),
    }
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_finetuned(model_dir: str | Path) -> tuple[torch.nn.Module, Tokenizer, Path]:
    """A fine-tuned model directory (out_dir or out_dir/best) -> (model in eval mode, tokenizer, its path)."""
    d = Path(model_dir)
    if not (d / "config.json").exists() and (d / "best" / "config.json").exists():
        d = d / "best"
    config = BertConfig.from_json(resolve(d) / "config.json")
    arch = (config.extra.get("architectures") or [""])[0]
    heads = {h.__name__: h for h in HEADS.values()}
    if arch not in heads:
        raise ValueError(f"{d}/config.json: architecture {arch!r} is not a fine-tuned task head "
                         f"({', '.join(heads)})")
    return heads[arch].from_pretrained(d), Tokenizer.from_pretrained(d), d


def _task_of(model: torch.nn.Module, task: str | Task | None, **custom) -> Task:
    config = model.config
    name = task or config.extra.get("finetuning_task")
    if name in (None, "custom"):
        labels = None if config.problem_type == "regression" else [config.id2label[i] for i in range(config.num_labels)]
        return get_task("custom", train_file=None, regression=labels is None, labels=labels, **custom)
    return get_task(name)


def evaluate(model_dir: str | Path, task: str | Task | None = None, *, split: str = "dev",
             data_dir: str | Path | None = None, max_examples: int | None = None, batch_size: int = 64,
             max_length: int | None = None, seed: int = 42, **custom) -> dict[str, float]:
    """Score a fine-tuned model on a task's split (task defaults to the one it was trained on)."""
    model, tokenizer, _ = load_finetuned(model_dir)
    t = _task_of(model, task, **custom)
    max_length = max_length or model.config.extra.get("finetuning_max_length")
    data = Prepared(t, _limit(t.examples(split, data_dir), max_examples, seed), tokenizer, max_length)
    return data.evaluate(model, batch_size)


def predict(model_dir: str | Path, inputs: Sequence[str | tuple[str, str]], *, batch_size: int = 64,
            max_length: int | None = None) -> list[dict]:
    """Predictions for raw inputs: texts or (text, pair) for classification, (question, context) for QA,
    whitespace-split words for NER. Each result carries scores (softmax probabilities)."""
    model, tokenizer, _ = load_finetuned(model_dir)
    kind = {BertForQuestionAnswering: "qa", BertForTokenClassification: "token"}.get(type(model))
    config = model.config
    kind = kind or ("regression" if config.problem_type == "regression" or config.num_labels == 1 else "classification")
    labels = None if kind in ("regression", "qa") else tuple(config.id2label[i] for i in range(config.num_labels))
    t = Task("predict", kind, "", {}, lambda path, split: [], labels=labels,
             max_length=config.extra.get("finetuning_max_length") or (384 if kind == "qa" else 128))
    pairs = [x if isinstance(x, tuple) else (x, None) for x in inputs]
    if kind == "qa":
        if any(p[1] is None for p in pairs):
            raise ValueError("question answering needs 'question<TAB>context' inputs")
        examples = [readers.QAExample(str(i), q, c) for i, (q, c) in enumerate(pairs)]
    elif kind == "token":
        examples = [readers.TokenExample(text.split()) for text, _ in pairs]
    else:
        examples = [readers.TextExample(text, pair) for text, pair in pairs]
    data = Prepared(t, examples, tokenizer, max_length)
    outs, _ = data.outputs(model, batch_size)
    preds = data.predictions(outs)
    results = []
    for ex, o, p in zip(examples, outs, preds):
        if kind == "classification":
            probs = torch.softmax(torch.from_numpy(o["logits"]), -1)
            results.append({"label": labels[p], "score": float(probs[p]),
                            "scores": {n: float(s) for n, s in zip(labels, probs)}})
        elif kind == "regression":
            results.append({"score": p})
        elif kind == "token":
            probs = torch.softmax(torch.from_numpy(o["logits"]), -1).max(-1).values  # [seq]
            word_scores = [float(probs[s]) for s in data.word_starts[len(results)]]
            results.append({"tags": p, "entities": [
                {"entity": k, "text": " ".join(ex.words[a:b + 1]), "start_word": a, "end_word": b,
                 "score": float(np.mean(word_scores[a:b + 1])) if word_scores[a:b + 1] else 0.0}
                for k, a, b in metrics.entities(p)]})
        else:
            results.append({"answer": p["answer"], "score": p["probability"], "start": p["start"], "end": p["end"]})
    return results
