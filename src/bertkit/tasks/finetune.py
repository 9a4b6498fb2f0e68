"""Fine-tuning glue: finetune, evaluate, predict.

finetune: FinetuneConfig -> task (datasets.py) -> examples -> features (the task's kind) ->
its head on a pre-trained checkpoint -> the training engine (`bertkit.train.train`) with the
kind's evaluation and train statistics. The engine keeps the best epoch in output/best and
the latest in output/last (Hugging Face layout; config.json carries the label names, the task
and the input length, so evaluate and predict see inputs as training saw them).

A run can be continued: output/finetune.json holds the settings that define it (with a
fingerprint of its data; "status" is running until the run finishes or is stopped by a signal)
and output/state.pt the engine's state; `resume` compares the settings and refuses a run that
would not be the same one.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bertkit import io
from bertkit.batching import Batches
from bertkit.config import BertConfig
from bertkit.hub import resolve
from bertkit.runs import STATE_FILE
from bertkit.tasks.datasets import Task, get_task, user_task
from bertkit.tasks.kinds import Prepared, TaskKind
from bertkit.tasks.predictor import Predictor, forward
from bertkit.tasks.settings import FinetuneConfig
from bertkit.tokenizer import Tokenizer
from bertkit.train import TrainConfig, train

SUMMARY_FILE = "finetune.json"
# Settings that may change when a run is resumed: where and how it runs, not what it computes.
# (Files may move: their contents are compared through the data fingerprints.)
RESUMABLE_CHANGES = {"output", "resume", "progress", "device", "mixed_precision", "data_dir", "train_file",
                     "dev_file"}


# ---------------------------------------------------------------------------- data


def subset(examples: list, n: int | None, seed: int) -> list:
    """A fixed random subset of n examples, in file order (files like IMDB are sorted by label:
    the first n would be one class)."""
    if n is None or n >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def task_of(cfg: FinetuneConfig) -> Task:
    if cfg.task is not None:
        return get_task(cfg.task)
    if cfg.train_file is None:
        raise ValueError("give a built-in task (--task sst2, ...) or your own --train-file")
    return user_task(cfg.train_file, cfg.dev_file, text_column=cfg.text_column,
                     text_pair_column=cfg.text_pair_column, label_column=cfg.label_column,
                     regression=cfg.regression, labels=cfg.labels)


def split_examples(task: Task, cfg: FinetuneConfig) -> tuple[list, list]:
    """(train, dev) examples: the task's splits, or train and a held-out fraction of it (dev_split)."""
    train_ex = task.examples("train", cfg.data_dir)
    if "dev" in task.files:
        dev_ex = task.examples("dev", cfg.data_dir)
    elif cfg.dev_split is None:
        raise ValueError("your own files need a --dev-file (or --dev-split) to pick the best epoch")
    else:
        held = set(random.Random(cfg.seed).sample(range(len(train_ex)), max(1, round(cfg.dev_split * len(train_ex)))))
        if len(held) == len(train_ex):
            raise ValueError(f"dev_split {cfg.dev_split} of {len(train_ex)} examples leaves none to train on")
        dev_ex = [ex for i, ex in enumerate(train_ex) if i in held]
        train_ex = [ex for i, ex in enumerate(train_ex) if i not in held]
    return subset(train_ex, cfg.max_train_examples, cfg.seed), subset(dev_ex, cfg.max_eval_examples, cfg.seed)


def fingerprint(prepared: Sequence[Prepared]) -> str:
    """A short hash of model inputs and labels: equal for the same data, whatever its path."""
    h = hashlib.sha256()
    for p in prepared:
        for f in p.features:
            h.update(json.dumps(f, sort_keys=True).encode())
    return h.hexdigest()[:16]


def score(model: torch.nn.Module, kind: TaskKind, prepared: Sequence[Prepared], batch_size: int = 64) -> dict:
    """The kind's scores (and the mean loss) of `model` on labelled prepared examples."""
    outputs, loss = forward(model, prepared, kind.output_names, batch_size)
    result = kind.scores(kind.predictions(outputs, prepared), [p.example for p in prepared])
    if loss is not None:
        result["loss"] = loss
    return result


# ---------------------------------------------------------------------------- the run folder


def _resolve_settings(cfg: FinetuneConfig, task: Task, positions: int) -> FinetuneConfig:
    """cfg with every recipe field filled in (the task's default where cfg left None)."""
    recipe = {k: v for k, v in dataclasses.asdict(task.recipe).items() if getattr(cfg, k) is None}
    cfg = dataclasses.replace(cfg, **recipe)
    if cfg.max_length > positions:
        raise ValueError(f"max_length {cfg.max_length} is more than the model's {positions} positions")
    if cfg.doc_stride is not None:
        if task.recipe.doc_stride is None:
            raise ValueError(f"doc_stride: task {task.name} has no windows over long contexts (QA has)")
        if cfg.doc_stride >= cfg.max_length // 2:
            raise ValueError(f"doc_stride {cfg.doc_stride} must be less than half of max_length {cfg.max_length}")
    if cfg.mixed_precision == "fp16" and not (cfg.device.startswith("cuda") or
                                              (cfg.device == "auto" and torch.cuda.is_available())):
        raise ValueError("mixed_precision fp16 needs a CUDA device (use bf16 on the CPU)")
    return cfg


def _open_output(out: Path, resume: bool | str) -> bool:
    """Check the output folder before any work; returns whether to resume the run in it."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: output is a file, not a folder")
    has_state = (out / STATE_FILE).is_file()
    if resume is True and not has_state:
        raise ValueError(f"{out}: no fine-tuning state to resume (no {STATE_FILE}: the first is saved at the end "
                         "of the first epoch); run without --resume to start")
    if resume is False and has_state:
        raise ValueError(f"{out}: holds a fine-tuning run already; continue it with --resume, or choose another "
                         "--output to start a new one")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise PermissionError(errno.EACCES, "output folder is not writable", str(out))
    return has_state


def _check_resume(out: Path, settings: dict) -> None:
    """Refuse to continue a run whose defining settings (batch size, schedule, data ...) changed."""
    path = out / SUMMARY_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: missing or unreadable: cannot check that the run to resume is this one") from None
    changed = [f"{k} was {saved.get(k)!r}, now {v!r}" for k, v in settings.items()
               if k not in RESUMABLE_CHANGES and saved.get(k) != v]
    if changed:
        raise ValueError(f"cannot resume {out}: the run's settings changed: {'; '.join(changed)}")


def _finite(x):
    """x with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _train_config(cfg: FinetuneConfig, metric: str) -> TrainConfig:
    options = dict(lr=cfg.lr, epochs=cfg.epochs, max_steps=cfg.max_steps, warmup=cfg.warmup,
                   weight_decay=cfg.weight_decay, grad_accum_steps=cfg.grad_accum, seed=cfg.seed,
                   device=cfg.device, out_dir=cfg.output, metric=metric, greater_is_better=True,
                   progress=cfg.progress, mixed_precision=cfg.mixed_precision)
    return TrainConfig(**options)


def _head(task: Task, model_dir: Path, cfg: FinetuneConfig) -> torch.nn.Module:
    """The task's head on the checkpoint; the label names, task and input length go into its config."""
    config = BertConfig.from_json(model_dir / "config.json")
    overrides = task.kind.config_overrides()
    if cfg.freeze_encoder:  # fixed features: no dropout inside the frozen encoder, the head keeps its own
        overrides.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         classifier_dropout=config.classifier_dropout if config.classifier_dropout is not None
                         else config.hidden_dropout_prob)
    extra = {**config.extra, "finetuning_task": task.name, **task.kind.config_extra(cfg.max_length, cfg.doc_stride)}
    torch.manual_seed(cfg.seed)  # the new head's initial weights
    net = task.kind.head.from_pretrained(model_dir, config=config.replace(**overrides, extra=extra))
    if cfg.freeze_encoder:
        # Embeddings and Transformer layers stay fixed. The pooler (dense + tanh on [CLS]) trains with
        # the classifier, a small MLP over the frozen features: models trained without NSP (such as
        # sentence-transformers' all-MiniLM-L6-v2) carry a pooler that was never trained.
        for name, p in net.bert.named_parameters():
            p.requires_grad_(name.startswith("pooler."))
    return net


# ---------------------------------------------------------------------------- the three functions


def finetune(cfg: FinetuneConfig | None = None, **settings) -> dict:
    """Fine-tune cfg.model on cfg.task (or your files) -> the run's summary, also in output/finetune.json.

        finetune(FinetuneConfig(task="rte", output="runs/rte"))
        finetune(task="rte", output="runs/rte", lr=3e-5)       # the same, fields as keywords

    The best epoch (by the task's metric on dev) lands in output/best. The summary has
    "status": "finished", or "stopped" (with "signal") when SIGTERM/SIGINT ended the run early:
    its state is saved, and resume=True continues it exactly where it stopped.
    """
    cfg = dataclasses.replace(cfg or FinetuneConfig(), **settings)
    task = task_of(cfg)
    model_dir = resolve(cfg.model)
    positions = BertConfig.from_json(model_dir / "config.json").max_position_embeddings
    cfg = _resolve_settings(cfg, task, positions)
    out = Path(cfg.output)
    resuming = _open_output(out, cfg.resume)
    settings = {**dataclasses.asdict(cfg), "task": task.name, "labels": list(task.labels) if task.labels else None}
    if resuming:
        _check_resume(out, settings)

    tokenizer = Tokenizer.from_pretrained(model_dir)
    t0 = time.perf_counter()
    train_ex, dev_ex = split_examples(task, cfg)
    train_set = task.kind.features(train_ex, tokenizer, cfg.max_length, cfg.doc_stride)
    dev_set = task.kind.features(dev_ex, tokenizer, cfg.max_length, cfg.doc_stride)
    prep_seconds = time.perf_counter() - t0
    settings.update(train_data=fingerprint(train_set), dev_data=fingerprint(dev_set))
    if resuming:
        _check_resume(out, settings)
    else:
        io.write_json(out / SUMMARY_FILE, {"status": "running", "settings": settings})

    net = _head(task, model_dir, cfg)
    batches = Batches([f for p in train_set for f in p.features], cfg.batch_size, shuffle=True, seed=cfg.seed)
    result = train(net, batches, _train_config(cfg, task.metric), lambda model: score(model, task.kind, dev_set),
                   batch_stats=task.kind.train_stats, resume=resuming)

    # One row per evaluation (the end of each epoch): the engine's records, with the epoch's own train time.
    rows, last_elapsed = [], 0.0
    for rec in result.history:
        if any(k.startswith("val_") for k in rec):
            row = {k: v for k, v in rec.items() if k not in ("elapsed", "best")}
            row["epoch_seconds"] = rec["elapsed"] - last_elapsed
            last_elapsed = rec["elapsed"]
            rows.append(row)
    summary = {
        "status": "stopped" if result.stopped else "finished", "signal": result.stopped,
        "step": result.step, "task": task.name, "model": cfg.model, "metric": task.metric,
        "best": result.best_metric, "best_step": result.best_step, "best_dir": str(out / "best"), "epochs": rows,
        "train_examples": len(train_ex), "train_features": len(batches.features), "dev_examples": len(dev_ex),
        "prep_seconds": prep_seconds, "train_seconds": last_elapsed, "settings": settings,
    }
    summary = _finite(summary)
    io.write_json(out / SUMMARY_FILE, summary)
    return summary


def evaluate(model: str | os.PathLike | Predictor, task: str | None = None, split: str = "dev", *,
             data_dir: str | os.PathLike | None = None, dev_file: str | os.PathLike | None = None,
             text_column: str | None = None, text_pair_column: str | None = None, label_column: str | None = None,
             max_examples: int | None = None, batch_size: int = 64, max_length: int | None = None,
             dtype: str = "fp32", device: str = "cpu", seed: int = 42) -> dict[str, float]:
    """Scores of a fine-tuned model on a task's split -> {metric: value, ..., "loss"}.

    task defaults to the one the model was fine-tuned on. dev_file scores your own labelled
    file instead (with the model's label names; the columns default to text and label).
    max_examples takes the same fixed subset as fine-tuning's max_eval_examples (same seed).
    """
    predictor = model if isinstance(model, Predictor) else \
        Predictor.from_pretrained(model, dtype=dtype, device=device, max_length=max_length)
    config = predictor.model.config
    if dev_file is not None:
        if task not in (None, "custom") or split != "dev":
            raise ValueError("dev_file is the split to score: give it without a task or split")
        t = user_task(None, dev_file, text_column=text_column or "text", text_pair_column=text_pair_column,
                      label_column=label_column or "label", regression=predictor.labels is None,
                      labels=predictor.labels)
    else:
        if any(c is not None for c in (text_column, text_pair_column, label_column)):
            raise ValueError("text_column, text_pair_column and label_column apply to a dev_file only")
        name = task or config.extra.get("finetuning_task")
        if name in (None, "custom"):
            raise ValueError("this model was fine-tuned on your own files: give the dev_file to score it on")
        t = get_task(name)
    if type(t.kind) is not type(predictor.task_kind) or t.labels != predictor.labels:
        raise ValueError(f"the model predicts {predictor.kind} {list(predictor.labels or [])}, task {t.name} "
                         f"wants {t.kind.name} {list(t.labels or [])}")
    examples = subset(t.examples(split, data_dir), max_examples, seed)
    prepared = predictor.task_kind.features(examples, predictor.tokenizer, predictor.max_length, predictor.doc_stride)
    return score(predictor.model, predictor.task_kind, prepared, batch_size)


def predict(model: str | os.PathLike | Predictor, inputs: Sequence, *, batch_size: int = 32,
            max_length: int | None = None, dtype: str = "fp32", device: str = "cpu") -> list[dict]:
    """Predictions for raw inputs (see Predictor) -> one dict per input, in order.

    Loads the model on every call: hold a Predictor to predict repeatedly.
    """
    if not isinstance(model, Predictor):
        model = Predictor.from_pretrained(model, dtype=dtype, device=device, max_length=max_length)
    return model(inputs, batch_size)
