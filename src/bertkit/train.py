"""The one training engine: pre-training and every fine-tuning task run through `train`.

A task hands over a model (an nn.Module whose forward returns {"loss": ..., ...}),
a re-iterable batch source (`set_epoch(e)`, `len()`; `Batches` or the pre-training
loader), an optional `evaluate(model) -> dict[str, float]` and a `TrainConfig`.
The engine never knows which task it runs.

One optimizer update ("step") consumes `grad_accum_steps` micro-batches per process.
Under torchrun every process takes every `world_size`-th micro-batch, so N processes
with accumulation k see exactly the batches of one process with accumulation N*k.

Everything needed to continue bit-for-bit (weights, optimizer, schedule, RNG states,
data position, running sums) lives in one file, `out_dir/state.pt`, written atomically
and holding only tensors and plain values (torch.load(weights_only=True) reads it).
"""

from __future__ import annotations

import json
import math
import os
import queue
import random
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"

Evaluate = Callable[[nn.Module], dict[str, float]]
# batch_stats(batch, out) -> {name: (sum, count)}; the engine reports sum/count per name,
# e.g. {"accuracy": (n_correct, n_examples)} is printed as train_accuracy.
BatchStats = Callable[[dict, dict], dict[str, tuple[Any, Any]]]


@dataclass
class TrainConfig:
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6  # BERT's value; 1e-8 gives the same results but is less forgiving in bf16
    weight_decay: float = 0.01  # never applied to biases and LayerNorm weights (1-D tensors)
    warmup: float = 0.1  # < 1: fraction of all steps; >= 1: a number of steps. Then linear decay to 0.
    epochs: int = 3
    max_steps: int | None = None  # when set, overrides epochs (training stops mid-epoch if needed)
    max_minutes: float | None = None  # time box: stop (evaluate, save) once this much training time has passed;
    # evaluation is not counted, and the lr schedule still spans max_steps/epochs, so runs compare at equal time
    grad_accum_steps: int = 1  # micro-batches per optimizer step, per process
    max_grad_norm: float | None = 1.0  # total-norm clipping before every step; None disables
    dtype: str = "fp32"  # fp32 | bf16 (autocast, CPU and CUDA) | fp16 (CUDA only, with GradScaler)
    device: str = "auto"  # auto = cuda when available (cuda:LOCAL_RANK under torchrun), else cpu
    seed: int = 42  # python, numpy and torch RNGs; rank r uses seed + r so dropout differs per rank
    eval_every: int | None = None  # steps between evaluations; None = at the end of each epoch
    save_every: int | None = None  # steps between checkpoints; None = at the end of each epoch
    log_every: int = 50  # steps between JSON-line records of the train loss
    out_dir: str | None = None  # where state.pt, last/, best/, metrics.jsonl, curves.png go; None = nothing written
    keep_best: bool = True  # export the model to out_dir/best whenever `metric` improves
    metric: str = "loss"  # key of evaluate()'s dict that decides "best"
    greater_is_better: bool = False
    ddp_find_unused_parameters: bool = False  # set when some parameters get no gradient (e.g. an unused pooler)
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        if self.dtype not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"dtype must be fp32, bf16 or fp16, got {self.dtype!r}")
        if self.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if self.max_steps is None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1 (or set max_steps), got {self.epochs}")
        self.betas = tuple(self.betas)  # YAML/JSON give lists


@dataclass
class TrainResult:
    step: int  # optimizer steps done in total
    history: list[dict] = field(default_factory=list)  # every record written to metrics.jsonl
    best_metric: float | None = None
    best_step: int | None = None
    stopped: bool = False  # True when SIGTERM/SIGINT ended training early (state saved)


# ---------------------------------------------------------------------------- optimizer, schedule


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices (and embeddings), none on biases and LayerNorm weights.

    Every 1-D parameter in BERT is a bias or a LayerNorm gain/shift, so the rule is by shape,
    which also covers modules that do not follow any naming scheme. Tied weights appear once.
    """
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() already yields a tied tensor only once
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over param_groups. The fused kernel (one pass over all tensors) is several times
    faster than PyTorch's default per-tensor loop on CPU, where the loop is the default."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                             fused=device.type in ("cpu", "cuda"))


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from 0 to 1 over warmup_steps, then linear decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps  # the first update already uses a non-zero lr
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def warmup_steps_for(cfg: TrainConfig, total_steps: int) -> int:
    return int(round(cfg.warmup * total_steps)) if cfg.warmup < 1 else int(cfg.warmup)


# ---------------------------------------------------------------------------- state on disk


def save_state(path: str | Path, state: dict) -> None:
    """Write `state` atomically: a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_state(path: str | Path) -> dict:
    """Read a training-state file; weights_only=True so loading never runs pickled code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def export_model(model: nn.Module, directory: Path) -> None:
    """Write the model for `from_pretrained` (HF layout), replacing `directory` as a whole."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(tmp)
    else:  # plain nn.Module: weights only; save_model copes with tied tensors
        from safetensors.torch import save_model

        save_model(model, str(tmp / "model.safetensors"))
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def _rng_state() -> dict:
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [version, list(keys), gauss],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(s: dict) -> None:
    version, keys, gauss = s["python"]
    random.setstate((version, tuple(keys), gauss))
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    group: bool = False  # a process group is in use (launched by torchrun): the model is wrapped in DDP
    owns_group: bool = False  # we called init_process_group, so we destroy it

    @classmethod
    def setup(cls, device: str) -> _Dist:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        # torchrun sets RANK, even for one process: then run as a group of one, so that
        # `torchrun --nproc_per_node=1` exercises the same DDP/NCCL path as a bigger run.
        if "RANK" not in os.environ:
            return cls(device=dev)
        import torch.distributed as dist

        owns = False
        if not dist.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            owns = True
        d = cls(rank=dist.get_rank(), world=dist.get_world_size(), device=dev, group=True, owns_group=owns)
        if d.rank == 0:
            print(f"distributed: {d.world} process(es), backend {dist.get_backend()}, rank 0 on {dev}", flush=True)
        return d

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (a no-op for one process)."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _rank_batches(batches: Iterable, start: int, stop: int, rank: int, world: int) -> Iterator[dict]:
    """This rank's micro-batches `start..stop-1` (counted per rank) of the current epoch.

    Sources that can be indexed (the pre-training loader) build only the batches used;
    others are iterated and the rest is skipped.
    """
    if hasattr(batches, "__getitem__"):
        for i in range(start, stop):
            yield batches[i * world + rank]
        return
    it = iter(batches)
    for g, batch in enumerate(it):
        if g >= stop * world:
            return
        if g % world == rank and g // world >= start:
            yield batch


def _prefetched(batches: Iterator[dict], depth: int = 2) -> Iterator[dict]:
    """`batches`, built `depth` ahead in a background thread.

    For GPUs: the CPU builds (masks, collates) the next batch while the device runs this one,
    instead of the device idling through it. Only for sources whose batch i depends on i alone
    (the pre-training loader seeds each batch from its index), so the order and the contents,
    and therefore resumption, are those of the plain iterator.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = threading.Event()
    end = object()

    def fill() -> None:
        try:
            for item in batches:
                while not done.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if done.is_set():
                    return
            q.put(end)
        except BaseException as e:  # re-raised in the consumer, with its traceback
            q.put(e)

    threading.Thread(target=fill, daemon=True, name="bertkit-prefetch").start()
    try:
        while (item := q.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        done.set()


# ---------------------------------------------------------------------------- the loop


class _Sums:
    """Running sums over a window of steps (for logs, for reports); plain values, saved in state."""

    def __init__(self, d: dict | None = None):
        d = d or {}
        self.loss = d.get("loss", 0.0)
        self.steps = d.get("steps", 0)
        self.tokens = d.get("tokens", 0.0)
        self.seconds = d.get("seconds", 0.0)
        self.stats: dict[str, list[float]] = {k: list(v) for k, v in d.get("stats", {}).items()}

    def to_dict(self) -> dict:
        return {"loss": self.loss, "steps": self.steps, "tokens": self.tokens, "seconds": self.seconds,
                "stats": {k: list(v) for k, v in self.stats.items()}}

    def add(self, loss: float, tokens: float, seconds: float, stats: dict[str, list[float]]) -> None:
        self.loss += loss
        self.steps += 1
        self.tokens += tokens
        self.seconds += seconds
        for k, (s, c) in stats.items():
            acc = self.stats.setdefault(k, [0.0, 0.0])
            acc[0] += s
            acc[1] += c

    def summary(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}loss": self.loss / max(1, self.steps)}
        for k, (s, c) in sorted(self.stats.items()):
            out[f"{prefix}{k}"] = s / c if c else float("nan")
        return out


def _count_tokens(batch: dict) -> float:
    """Real (non-padding) tokens: the attention mask when there is one."""
    if "attention_mask" in batch:
        return float(batch["attention_mask"].sum())
    ids = batch.get("input_ids")
    return float(ids.numel()) if ids is not None else 0.0


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.dtype == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private probe; assume support when it is gone
        return True


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop saves at the next step boundary and returns."""

    def __init__(self) -> None:
        self.raised = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(
    model: nn.Module,
    batches,
    cfg: TrainConfig,
    evaluate: Evaluate | None = None,
    *,
    batch_stats: BatchStats | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train `model` in place on `batches`; see the module docstring for the contract."""
    dist_ = _Dist.setup(cfg.device)
    try:
        return _Trainer(model, batches, cfg, evaluate, batch_stats, dist_).run(resume)
    finally:
        dist_.close()


class _Trainer:
    def __init__(self, model, batches, cfg, evaluate, batch_stats, dist_: _Dist):
        self.cfg, self.batches, self.evaluate, self.batch_stats, self.d = cfg, batches, evaluate, batch_stats, dist_
        self.out = Path(cfg.out_dir) if cfg.out_dir else None
        self.writer = self.out is not None and dist_.rank == 0
        if cfg.dtype == "fp16" and dist_.device.type != "cuda":
            raise ValueError("dtype fp16 needs a CUDA device (use bf16 on CPU)")
        if cfg.dtype == "bf16" and dist_.device.type == "cpu" and not _cpu_has_bf16():
            warnings.warn("this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 autocast is emulated and "
                          "runs many times slower than fp32 here", stacklevel=3)
        seed_everything(cfg.seed + dist_.rank)
        self.core = model.to(dist_.device)
        if dist_.group:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [dist_.device.index] if dist_.device.type == "cuda" else None
            self.model = DDP(self.core, device_ids=ids,
                             find_unused_parameters=cfg.ddp_find_unused_parameters)
        else:
            self.model = self.core
        self.micro_per_epoch = len(batches) // dist_.world
        if self.micro_per_epoch == 0:
            raise ValueError(f"{len(batches)} batches cannot feed {dist_.world} processes")
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum_steps)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        warmup = warmup_steps_for(cfg, self.total_steps)
        self.optimizer = build_optimizer(self.core, cfg, dist_.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup, self.total_steps))
        self.scaler = torch.amp.GradScaler("cuda") if cfg.dtype == "fp16" else None
        # Position and running sums: everything in here goes into state.pt.
        self.step, self.epoch, self.micro = 0, 0, 0
        self.elapsed = 0.0
        self.best: float | None = None
        self.best_step: int | None = None
        self.log_sums, self.report_sums = _Sums(), _Sums()
        self.history: list[dict] = []

    # -- state ---------------------------------------------------------------

    def _state(self) -> dict:
        rngs = self.d.gather(_rng_state())
        return {
            "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "rng": rngs,  # one per rank
            "step": self.step, "epoch": self.epoch, "micro": self.micro, "world_size": self.d.world,
            "elapsed": self.elapsed, "best": self.best, "best_step": self.best_step,
            "log_sums": self.log_sums.to_dict(), "report_sums": self.report_sums.to_dict(),
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.cfg).items()},
        }

    def _save(self) -> None:
        state = self._state()  # every rank takes part in gathering RNG states
        if self.writer:
            self.out.mkdir(parents=True, exist_ok=True)
            save_state(self.out / STATE_FILE, state)
            export_model(self.core, self.out / "last")
        self.d.barrier()

    def _load(self) -> None:
        path = self.out / STATE_FILE if self.out else None
        if path is None or not path.exists():
            if self.d.rank == 0:
                print(f"resume: no {STATE_FILE} in {self.out}, starting from scratch")
            return
        s = load_state(path)
        if s["world_size"] != self.d.world:
            raise ValueError(f"{path}: saved with {s['world_size']} processes, resuming with {self.d.world}; "
                             "the data position would not match")
        self.core.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        if self.scaler and s["scaler"]:
            self.scaler.load_state_dict(s["scaler"])
        _set_rng_state(s["rng"][self.d.rank])
        self.step, self.epoch, self.micro = s["step"], s["epoch"], s["micro"]
        self.elapsed, self.best, self.best_step = s["elapsed"], s["best"], s["best_step"]
        self.log_sums, self.report_sums = _Sums(s["log_sums"]), _Sums(s["report_sums"])
        # Records written after the saved step will be written again: drop them.
        metrics = self.out / METRICS_FILE
        if metrics.exists():
            kept = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            self.history = [r for r in kept if r["step"] <= self.step]
            if self.writer:
                metrics.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        if self.d.rank == 0:
            print(f"resumed from {path}: step {self.step}, epoch {self.epoch + 1}, batch {self.micro}")

    # -- records -------------------------------------------------------------

    def _record(self, rec: dict) -> None:
        self.history.append(rec)
        if self.writer:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / METRICS_FILE, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def _log(self) -> None:
        loss, steps, tokens, seconds = self.d.sum(
            [self.log_sums.loss, self.log_sums.steps, self.log_sums.tokens, self.log_sums.seconds])
        self._record({"step": self.step, "epoch": self.epoch + 1, "loss": loss / max(1, steps),
                      "lr": self.scheduler.get_last_lr()[0], "grad_norm": self.grad_norm,
                      "tokens_per_s": tokens / max(seconds / self.d.world, 1e-9), "elapsed": self.elapsed})
        self.log_sums = _Sums()

    def _report(self, bar) -> None:
        """Train metrics since the last report, validation metrics, keep-best, printout."""
        keys = sorted(self.report_sums.stats)
        flat = [self.report_sums.loss, self.report_sums.steps] + [x for k in keys for x in self.report_sums.stats[k]]
        flat = self.d.sum(flat)
        sums = _Sums({"loss": flat[0] / self.d.world, "steps": flat[1] / self.d.world,
                      "stats": {k: flat[2 + 2 * i: 4 + 2 * i] for i, k in enumerate(keys)}})
        rec = {"step": self.step, "epoch": self.epoch + 1, **sums.summary("train_")}
        if self.evaluate is not None:
            if self.d.rank == 0:
                self.core.eval()
                with torch.no_grad(), _autocast(self.cfg, self.d.device):
                    metrics = self.evaluate(self.core)
                self.core.train()
                rec.update({f"val_{k}": float(v) for k, v in metrics.items()})
                self._keep_best(metrics, rec)
            self.d.barrier()
        rec["elapsed"] = self.elapsed
        self._record(rec)
        if self.d.rank == 0:
            text = " | ".join(f"{k} {v:.4f}" for k, v in rec.items()
                              if k not in ("step", "epoch", "elapsed", "best"))
            text += f" (best {self.cfg.metric} so far)" if rec.get("best") else ""
            (bar.write if bar is not None else print)(
                f"epoch {self.epoch + 1}/{self.epochs} step {self.step}/{self.total_steps} | {text} | "
                f"train time {self.report_sums.seconds:.1f} s since the last report, {self.elapsed:.1f} s in all")
        self.report_sums = _Sums()
        if self.writer:
            plot_curves(self.history, self.out / PLOT_FILE)

    def _keep_best(self, metrics: dict, rec: dict) -> None:
        if not self.cfg.keep_best:
            return
        if self.cfg.metric not in metrics:
            raise ValueError(f"metric {self.cfg.metric!r} is not among the evaluation results {sorted(metrics)}")
        value = float(metrics[self.cfg.metric])
        better = self.best is None or (value > self.best if self.cfg.greater_is_better else value < self.best)
        if better:
            self.best, self.best_step = value, self.step
            rec["best"] = True
            if self.writer:
                export_model(self.core, self.out / "best")

    # -- the loop ------------------------------------------------------------

    def _micro_step(self, batch: dict, window: int, sync: bool) -> tuple[float, float, dict]:
        tokens = _count_tokens(batch)  # before the copy: no device sync for a count
        batch = _to_device(batch, self.d.device)
        no_sync = self.model.no_sync if (self.d.group and not sync) else nullcontext
        with no_sync():
            with _autocast(self.cfg, self.d.device):
                out = self.model(**batch)
            loss = out["loss"] / window  # mean over the window's micro-batches
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        stats = {}
        if self.batch_stats is not None:
            with torch.no_grad():
                stats = {k: (float(s), float(c)) for k, (s, c) in self.batch_stats(batch, out).items()}
        return float(out["loss"].detach()), tokens, stats

    def _optimizer_step(self) -> None:
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.max_grad_norm is not None:
            self.grad_norm = float(nn.utils.clip_grad_norm_(self.core.parameters(), self.cfg.max_grad_norm))
        else:
            self.grad_norm = float(nn.utils.get_total_norm(
                [p.grad for p in self.core.parameters() if p.grad is not None]))
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def _time_up(self) -> bool:
        # Ranks must agree, or one would wait forever in the next all-reduce.
        up = self.elapsed >= self.cfg.max_minutes * 60
        return bool(self.d.sum([float(up)])[0]) if self.d.world > 1 else up

    def run(self, resume: bool) -> TrainResult:
        cfg = self.cfg
        if resume:
            if self.out is None:
                raise ValueError("resume needs out_dir: the state to resume from lives there")
            self._load()
        elif self.writer and (self.out / METRICS_FILE).exists():
            (self.out / METRICS_FILE).unlink()  # a fresh run starts a fresh log
        self.grad_norm = float("nan")
        self.core.train()
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (cfg.progress and self.d.rank == 0))
        stopped = False
        timed_out = cfg.max_minutes is not None and self._time_up()  # a resumed run whose time is spent
        with _StopFlag() as stop:
            while self.step < self.total_steps and not stopped and not timed_out:
                if self.micro >= self.micro_per_epoch:  # resumed exactly at an epoch's end
                    self.epoch, self.micro = self.epoch + 1, 0
                self.batches.set_epoch(self.epoch)
                it = _rank_batches(self.batches, self.micro, self.micro_per_epoch, self.d.rank, self.d.world)
                if self.d.device.type == "cuda" and hasattr(self.batches, "__getitem__"):
                    it = _prefetched(it)
                while self.micro < self.micro_per_epoch and self.step < self.total_steps:
                    t0 = time.perf_counter()
                    window = min(cfg.grad_accum_steps, self.micro_per_epoch - self.micro)
                    loss = tokens = 0.0
                    stats: dict[str, list[float]] = {}
                    for j in range(window):
                        micro_loss, n, s = self._micro_step(next(it), window, sync=j == window - 1)
                        loss, tokens = loss + micro_loss / window, tokens + n
                        for k, (a, c) in s.items():
                            acc = stats.setdefault(k, [0.0, 0.0])
                            acc[0], acc[1] = acc[0] + a, acc[1] + c
                    self._optimizer_step()
                    self.micro += window
                    dt = time.perf_counter() - t0
                    self.elapsed += dt
                    self.log_sums.add(loss, tokens, dt, stats)
                    self.report_sums.add(loss, tokens, dt, stats)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                                    tok_s=f"{tokens * self.d.world / max(dt, 1e-9):.0f}", refresh=False)
                    epoch_end = self.micro >= self.micro_per_epoch
                    timed_out = cfg.max_minutes is not None and self._time_up()
                    last = self.step >= self.total_steps or timed_out
                    if self.step % cfg.log_every == 0 or last:
                        self._log()
                    if (cfg.eval_every and self.step % cfg.eval_every == 0) or (
                            cfg.eval_every is None and epoch_end) or last:
                        self._report(bar)
                    if epoch_end and not last:  # position of the next batch to read
                        self.epoch, self.micro = self.epoch + 1, 0
                    stopped = bool(self.d.sum([float(stop.raised)])[0]) if self.d.world > 1 else stop.raised
                    if ((cfg.save_every and self.step % cfg.save_every == 0)
                            or (cfg.save_every is None and epoch_end) or last or stopped):
                        self._save()
                    if stopped:
                        if self.d.rank == 0:
                            bar.write(f"stopped by signal at step {self.step}; state saved, resume to continue")
                        break
                    if epoch_end or timed_out:
                        break
                if timed_out:
                    if self.d.rank == 0:
                        bar.write(f"time box of {cfg.max_minutes:g} min reached at step {self.step}; state saved")
                    break
        bar.close()
        if self.writer:
            plot_curves(self.history, self.out / PLOT_FILE)
        return TrainResult(step=self.step, history=self.history, best_metric=self.best,
                           best_step=self.best_step, stopped=stopped)


# ---------------------------------------------------------------------------- plots


def plot_curves(history: list[dict], path: Path) -> None:
    """One PNG: losses (train per logged step, validation per evaluation) on the left, every
    other validation metric (accuracy, F1, ...) on the right, so each panel has one scale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    logs = [r for r in history if "loss" in r]
    val_keys = sorted({k for r in history for k in r if k.startswith("val_")})
    loss_keys = [k for k in val_keys if "loss" in k]
    metric_keys = [k for k in val_keys if "loss" not in k]
    fig = Figure(figsize=(6 * (1 + bool(metric_keys)), 4))
    FigureCanvasAgg(fig)

    def curves(ax, keys: list[str], title: str) -> None:
        for k in keys:
            pts = [(r["step"], r[k]) for r in history if k in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend()

    ax = fig.add_subplot(1, 1 + bool(metric_keys), 1)
    ax.plot([r["step"] for r in logs], [r["loss"] for r in logs], label="train loss")
    curves(ax, loss_keys, "loss")
    if metric_keys:
        curves(fig.add_subplot(1, 2, 2), metric_keys, "validation metrics")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=80)
    os.replace(tmp, path)
