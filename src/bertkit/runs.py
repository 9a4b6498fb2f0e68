"""A training run's folder: what the engine writes, and in which order, so that a run killed at
any moment resumes where it stopped and its exports are always whole models.

    out_dir/
      state.pt        weights, optimizer, schedule, RNG states, data position: what resuming needs
      metrics.jsonl   one strict-JSON record per log or evaluation: {"step": 50, "loss": 2.31, ...}
      curves.png      those records as curves (plots.py), redrawn every few minutes and at the end
      last/           the model at the last saved step, for from_pretrained; last/export.json: {"step": 900}
      best/           the model at the best evaluation; best/export.json: {"step": 600, "metric": .., "value": ..}

Every file and export folder is replaced atomically (bertkit.io). A save writes state.pt first,
then best/ (when the saved step is the best one), then last/: the exports are never ahead of
the state, so one that is behind it can be rebuilt from it. `open` puts back an export that a
crash left half-renamed and removes temporary files; `repair` rewrites an export older than the
state; `records` drops the records written after the state's step, which the resumed run writes again.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from bertkit.checkpoint import load_tensors
from bertkit.io import atomic_dir, atomic_write, recover_dir, remove_stale_temps, write_json, write_text
from bertkit.plots import plot_curves

STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"
EXPORT_INFO = "export.json"
EXPORTS = ("best", "last")
PLOT_EVERY_S = 300  # while training; drawing costs more than many steps of a small model

Export = Callable[[nn.Module, Path], Any]  # export(model, empty folder): write the model there


def save_model(model: nn.Module, folder: Path) -> None:
    """The default export: `save_pretrained` (Hugging Face layout) or, for a plain nn.Module, its weights."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
    else:
        from safetensors.torch import save_model as save_weights  # copes with tied tensors

        save_weights(model, str(folder / "model.safetensors"))


def strict_json(record: dict) -> dict:
    """NaN and infinities as null: strict JSON parsers reject them."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


class RunFolder:
    """out_dir of one training run. Only the writer (rank 0) changes files; every rank reads the state."""

    def __init__(self, path: str | Path, *, export: Export | None = None, writer: bool = True):
        self.dir = Path(path)
        if self.dir.exists() and not self.dir.is_dir():
            raise ValueError(f"{self.dir}: is a file; the run folder (train.out_dir) must be a folder")
        self.export = export or save_model
        self.writer = writer
        self._plotted = time.monotonic()
        if writer:
            self.dir.mkdir(parents=True, exist_ok=True)  # fails here, before training, on a bad path

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    # -- starting -------------------------------------------------------------

    def open(self, resume: bool | Literal["auto"]) -> dict | None:
        """Clean up after a crash, then: the saved state (resume=True, or "auto" when there is one),
        or None for a fresh run, which removes what an earlier run left here."""
        if self.writer:
            for name in EXPORTS:
                recover_dir(self.dir / name)
            remove_stale_temps(self.dir)
        if resume is True and not self.state_file.is_file():
            raise FileNotFoundError(f"{self.dir}: no {STATE_FILE} to resume from "
                                    "(resume=auto starts afresh when there is none)")
        if resume and self.state_file.is_file():
            return self.load_state()
        if self.writer:
            self.clear()
        return None

    def clear(self) -> None:
        if self.state_file.is_file():
            print(f"{self.dir}: starting afresh, replacing the run saved here")
        for name in (STATE_FILE, METRICS_FILE, PLOT_FILE):  # the state first: a crash here leaves no run
            (self.dir / name).unlink(missing_ok=True)
        for name in EXPORTS:
            shutil.rmtree(self.dir / name, ignore_errors=True)

    def load_state(self) -> dict:
        """state.pt, read with weights_only=True: loading never runs pickled code."""
        path = self.state_file
        try:
            state = load_tensors(path, "training state")
        except ValueError as e:
            raise ValueError(f"{e}; restore it, or start afresh with resume=false") from None
        missing = {"run", "step", "model", "optimizer", "rng"} - (state.keys() if isinstance(state, dict) else set())
        if missing:
            raise ValueError(f"{path}: not a bertkit training state (no {', '.join(sorted(missing))})")
        return state

    def repair(self, model: nn.Module, step: int, best: dict | None = None) -> None:
        """Rewrite the exports a crash left behind the state: `model` holds the state's weights (at
        `step`), and `best` is given as in `save` when that step is the best one."""
        if not self.writer:
            return
        for name, info in (("best", best), ("last", {})):
            held = self.export_step(name)
            if info is not None and held != step:
                print(f"{self.dir / name}: {'missing' if held is None else f'at step {held}'}, {STATE_FILE} at step "
                      f"{step}: rewriting it from the state")
                self._export(name, model, {"step": step, **strict_json(info)})

    def export_step(self, name: str) -> int | None:
        """The step of the model in export `name` (None when there is none)."""
        try:
            return json.loads((self.dir / name / EXPORT_INFO).read_text())["step"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # -- saving ---------------------------------------------------------------

    def save(self, state: dict, model: nn.Module, best: dict | None = None) -> None:
        """state.pt, then best/ when `best` ({"metric": .., "value": ..}) says this step is the best, then last/."""
        if not self.writer:
            return
        atomic_write(self.state_file, lambda tmp: torch.save(state, tmp))
        info = {"step": state["step"]}
        if best is not None:
            self._export("best", model, {**info, **strict_json(best)})
        self._export("last", model, info)

    def _export(self, name: str, model: nn.Module, info: dict) -> None:
        with atomic_dir(self.dir / name) as tmp:
            self.export(model, tmp)
            write_json(tmp / EXPORT_INFO, info)

    # -- records --------------------------------------------------------------

    def append(self, record: dict) -> None:
        if self.writer:
            with open(self.dir / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(strict_json(record), allow_nan=False) + "\n")

    def records(self, upto: int) -> list[dict]:
        """The records up to step `upto`; later ones (and a line a crash cut short) are removed from the file."""
        path = self.dir / METRICS_FILE
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        kept = []
        for lineno, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if lineno == len(lines):  # the last line, cut short by a kill
                    break
                raise ValueError(f"{path}:{lineno}: not a JSON record") from None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError(f"{path}:{lineno}: not a record with a step")
            if record["step"] <= upto:
                kept.append(record)
        if self.writer and len(kept) != len(lines):
            write_text(path, "".join(json.dumps(strict_json(r), allow_nan=False) + "\n" for r in kept))
        return kept

    def plot(self, history: list[dict], *, now: bool = False) -> None:
        """curves.png from the records, when `now` or when the last drawing is PLOT_EVERY_S old."""
        if self.writer and history and (now or time.monotonic() - self._plotted >= PLOT_EVERY_S):
            plot_curves(history, self.dir / PLOT_FILE)
            self._plotted = time.monotonic()
