"""FinetuneConfig: every setting of a fine-tuning run, in one dataclass.

    bertkit finetune --task rte --lr 3e-5
    bertkit finetune --config ft.yaml epochs=2 labels=[neg,pos]     # config.load_settings
    finetune(FinetuneConfig(task="rte", lr=3e-5))

Fields left None take the task's recipe (datasets.py). Values are checked here, so a bad
one fails in one line before any data is read, from Python, a config file or the command line.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass
from typing import Literal

from bertkit.hub import DEFAULT_MODEL
from bertkit.tasks.datasets import get_task

MixedPrecision = Literal["no", "bf16", "fp16"]


@dataclass
class FinetuneConfig:
    task: str | None = None  # a built-in task (sst2, cola, ...); None: your own train_file / dev_file
    model: str = DEFAULT_MODEL  # checkpoint folder, run folder or installed model name
    output: str = "runs/finetune"  # state.pt, last/, best/, metrics.jsonl, curves.png, finetune.json
    # The recipe (None: the task's).
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    warmup: float | None = None  # < 1: a fraction of the steps; >= 1: a number of steps
    weight_decay: float | None = None
    max_steps: int | None = None  # when set, the run stops there (mid-epoch if need be) instead of after epochs
    grad_accum: int = 1  # micro-batches per optimizer step: batch_size each
    max_length: int | None = None  # word pieces per input (QA: per window)
    doc_stride: int | None = None  # QA: context tokens shared by consecutive windows
    seed: int = 42  # the head's initial weights, the data order, dropout, the example subsets
    mixed_precision: MixedPrecision = "no"  # bf16 autocast (CPU, CUDA), fp16 (CUDA only)
    device: str = "auto"  # auto (cuda when there is one), cpu, cuda, cuda:N
    freeze_encoder: bool = False  # train only the pooler and the head (the feature-based use; wants lr ~1e-3)
    # The data.
    max_train_examples: int | None = None  # a fixed random subset of the train split
    max_eval_examples: int | None = None  # ... and of the dev split
    data_dir: str | None = None  # folder with glue/, conll2003/, imdb/, squad_v1.1/ (default $BERTKIT_DATA)
    train_file: str | None = None  # your own .csv / .tsv / .jsonl
    dev_file: str | None = None  # your own validation file: picks the best epoch
    text_column: str = "text"  # header name or 0-based index
    text_pair_column: str | None = None
    label_column: str = "label"
    regression: bool = False  # your labels are numbers (one output, MSE)
    labels: list[str] | None = None  # your label set in class-id order (default: those in train_file, sorted)
    dev_split: float | None = None  # without a dev file: this fraction of train (a fixed random subset) validates
    # The run.
    resume: bool | Literal["auto"] = False  # True: continue output's run; "auto": when there is one
    progress: bool = True

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, must: str) -> None:
            if not ok:
                raise ValueError(f"{name} {getattr(self, name)!r} {must}")

        for name in ("epochs", "batch_size", "max_steps", "grad_accum", "doc_stride", "max_train_examples",
                     "max_eval_examples"):
            value = getattr(self, name)
            check(name, value is None or value >= 1, "must be at least 1")
        for name in ("lr", "warmup", "weight_decay", "dev_split"):
            value = getattr(self, name)
            check(name, value is None or math.isfinite(value), "must be a finite number")
        check("lr", self.lr is None or self.lr > 0, "must be positive")
        check("warmup", self.warmup is None or self.warmup >= 0, "must be 0 or more")
        check("weight_decay", self.weight_decay is None or self.weight_decay >= 0, "must be 0 or more")
        check("max_length", self.max_length is None or self.max_length >= 8, "must be at least 8 tokens")
        check("dev_split", self.dev_split is None or 0 < self.dev_split < 1, "must be between 0 and 1")
        check("seed", self.seed >= 0, "must be 0 or more")
        check("mixed_precision", self.mixed_precision in typing.get_args(MixedPrecision),
              f"is not one of {', '.join(typing.get_args(MixedPrecision))}")
        check("device", re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
              "is not a device: use auto, cpu, cuda or cuda:N")
        check("resume", self.resume in (True, False, "auto"), "is not true, false or auto")
        if self.labels is not None:
            check("labels", len(self.labels) >= 2, "must name at least two labels")
            check("labels", len(set(self.labels)) == len(self.labels), "name a label twice")
            check("labels", all(isinstance(x, str) and x.strip() for x in self.labels), "must be non-empty texts")
            check("labels", not self.regression, "do not apply to regression")
        if self.task is not None:
            self.task = get_task(self.task).name
            given = [f"{k}" for k in ("train_file", "dev_file", "labels", "dev_split") if getattr(self, k) is not None]
            given += ["regression"] if self.regression else []
            if given:
                raise ValueError(f"{', '.join(given)}: for your own files, not with a built-in task ({self.task})")
        if self.dev_file is not None and self.dev_split is not None:
            raise ValueError("give dev_file or dev_split, not both")
