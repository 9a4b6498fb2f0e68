"""The one training engine: pre-training and every fine-tuning task run through `train`.

    result = train(model, batches, TrainConfig(lr=2e-5, epochs=3, out_dir="runs/sst2"), evaluate)

A task hands over a model (an nn.Module whose forward returns {"loss": ..., ...}), a re-iterable
batch source (`set_epoch(e)`, `len()`; indexing, `batch_size` and `fingerprint()` when it has
them, as the pre-training loader does), an optional `evaluate(model) -> {"accuracy": 0.91, ...}`
and a TrainConfig. The engine never knows which task it runs.

One optimizer update ("step") consumes `grad_accum_steps` micro-batches per process. Under
torchrun every process takes every `world_size`-th micro-batch, so N processes with
accumulation k see exactly the batches of one process with accumulation N*k.

Everything needed to continue bit-for-bit (weights, optimizer, schedule, RNG states, data
position, running sums) is saved in out_dir/state.pt; runs.py owns that folder and the order
in which its files are written, so that a run killed at any moment resumes exactly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import random
import signal
import threading
import time
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from bertkit.memory import Trimmer
from bertkit.runs import Export, RunFolder

Evaluate = Callable[[nn.Module], dict[str, float]]
# batch_stats(batch, out) -> {name: (sum, count)}; the engine reports sum/count per name,
# e.g. {"accuracy": (n_correct, n_examples)} is printed as train_accuracy.
BatchStats = Callable[[dict, dict], dict[str, tuple[Any, Any]]]
MixedPrecision = Literal["no", "bf16", "fp16"]


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
    mixed_precision: MixedPrecision = "no"  # autocast: bf16 (CPU, CUDA) or fp16 (CUDA, with a grad scaler);
    # the weights stay fp32 (from_pretrained's dtype is about how weights are stored, for inference)
    max_bad_steps: int = 0  # steps whose loss or gradient norm is not finite that are skipped (no update,
    # recorded in metrics.jsonl); one more stops the run with Diverged
    device: str = "auto"  # auto = cuda when available (cuda:LOCAL_RANK under torchrun), else cpu
    seed: int = 42  # python, numpy and torch RNGs; rank r uses seed + r so dropout differs per rank
    eval_every: int | None = None  # steps between evaluations; None = at the end of each epoch
    save_every: int | None = None  # steps between checkpoints; None = at the end of each epoch
    log_every: int = 50  # steps between JSON-line records of the train loss
    out_dir: str | None = None  # the run folder (runs.py): state.pt, metrics.jsonl, last/, best/; None = no files
    keep_best: bool = True  # export the model to out_dir/best whenever `metric` improves
    metric: str = "loss"  # key of evaluate()'s dict that decides "best"
    greater_is_better: bool = False
    ddp_find_unused_parameters: bool = False  # set when some parameters get no gradient (e.g. an unused pooler)
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # YAML/JSON give lists
        if self.mixed_precision not in typing.get_args(MixedPrecision):
            raise ValueError(f"mixed_precision must be one of {', '.join(typing.get_args(MixedPrecision))}, "
                             f"got {self.mixed_precision!r}")
        whole = {"grad_accum_steps": (self.grad_accum_steps, 1), "log_every": (self.log_every, 1),
                 "max_bad_steps": (self.max_bad_steps, 0), "max_steps": (self.max_steps, 1),
                 "eval_every": (self.eval_every, 1), "save_every": (self.save_every, 1),
                 "epochs": (self.epochs, 1 if self.max_steps is None else 0)}
        for name, (value, low) in whole.items():
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
        positive = {"lr": self.lr, "max_minutes": self.max_minutes, "max_grad_norm": self.max_grad_norm}
        for name, value in positive.items():
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not 0 <= self.warmup < math.inf:
            raise ValueError(f"warmup must be >= 0 (a fraction below 1, else a number of steps), got {self.warmup!r}")


@dataclass
class TrainResult:
    step: int  # optimizer steps done in total
    history: list[dict] = field(default_factory=list)  # every record written to metrics.jsonl
    best_metric: float | None = None
    best_step: int | None = None
    stopped: int | None = None  # the signal (SIGINT, SIGTERM) that ended training early, after saving its state


class Diverged(RuntimeError):
    """The loss or the gradient norm stopped being finite (more than max_bad_steps times)."""


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


# ---------------------------------------------------------------------------- random state


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

    def max(self, values: list[float]) -> list[float]:
        """Element-wise maximum over ranks: for flags every rank must agree on."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def wrap(self, model: nn.Module, find_unused_parameters: bool) -> nn.Module:
        """`model` in DDP when running as a process group (its gradients are averaged over ranks)."""
        if not self.group:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids, find_unused_parameters=find_unused_parameters)

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


# ---------------------------------------------------------------------------- plan, position, sums


@dataclass
class _Sums:
    """Running sums over a window of steps (for logs, for reports); plain values, saved in state.pt."""

    loss: float = 0.0
    steps: int = 0
    tokens: float = 0.0
    seconds: float = 0.0
    stats: dict[str, list[float]] = field(default_factory=dict)  # name -> [sum, count]

    def add(self, loss: float, tokens: float, seconds: float, stats: list[dict[str, tuple[float, float]]]) -> None:
        """One step: its loss, tokens and time, and the batch_stats of each of its micro-batches."""
        self.loss += loss
        self.steps += 1
        self.tokens += tokens
        self.seconds += seconds
        for micro in stats:
            for k, (s, c) in micro.items():
                acc = self.stats.setdefault(k, [0.0, 0.0])
                acc[0] += s
                acc[1] += c

    def all_ranks(self, d: _Dist) -> _Sums:
        """Sums over every process; seconds are per process (they ran side by side)."""
        keys = sorted(self.stats)
        flat = d.sum([self.loss, self.steps, self.tokens, self.seconds, *(x for k in keys for x in self.stats[k])])
        return _Sums(flat[0], flat[1], flat[2], flat[3] / d.world,
                     {k: flat[4 + 2 * i: 6 + 2 * i] for i, k in enumerate(keys)})

    def summary(self, prefix: str) -> dict[str, float | None]:
        out = {f"{prefix}loss": self.loss / self.steps if self.steps else None}
        for k, (s, c) in sorted(self.stats.items()):
            out[f"{prefix}{k}"] = s / c if c else None
        return out


@dataclass
class _Position:
    """Where the run stands, and its running sums: saved in state.pt beside the weights."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch being read, from 0
    micro: int = 0  # micro-batches of it read, per process
    elapsed: float = 0.0  # training seconds (evaluation excluded)
    best: float | None = None
    best_step: int | None = None
    bad_steps: int = 0  # steps skipped for a non-finite loss or gradient norm
    log_sums: _Sums = field(default_factory=_Sums)
    report_sums: _Sums = field(default_factory=_Sums)

    @classmethod
    def from_state(cls, state: dict) -> _Position:
        values = {f.name: state[f.name] for f in dataclasses.fields(cls)}
        return cls(**{**values, "log_sums": _Sums(**values["log_sums"]), "report_sums": _Sums(**values["report_sums"])})


@dataclass
class _Plan:
    """The run's shape, fixed at its start."""

    micro_per_epoch: int  # micro-batches per epoch, per process
    steps_per_epoch: int
    total_steps: int
    epochs: int  # epochs the run touches (max_steps may end the last one early)
    warmup_steps: int
    definition: dict  # what a resume must find unchanged, saved in state.pt

    @classmethod
    def of(cls, batches, cfg: TrainConfig, world: int) -> _Plan:
        micro = len(batches) // world
        if micro == 0:
            raise ValueError(f"{len(batches)} batches cannot feed {world} processes")
        per_epoch = math.ceil(micro / cfg.grad_accum_steps)
        total = cfg.max_steps or cfg.epochs * per_epoch
        fingerprint = getattr(batches, "fingerprint", None)
        definition = {"world_size": world, "micro_batches_per_epoch": micro, "grad_accum_steps": cfg.grad_accum_steps,
                      "total_steps": total, "batch_size": getattr(batches, "batch_size", None), "lr": cfg.lr,
                      "warmup": cfg.warmup, "epochs": cfg.epochs, "max_steps": cfg.max_steps,
                      "data": fingerprint() if fingerprint else None}
        return cls(micro, per_epoch, total, math.ceil(total / per_epoch), warmup_steps_for(cfg, total), definition)

    def check_resume(self, saved: dict, source: Any) -> None:
        """Refuse to continue a run with another shape: its data position and schedule would be wrong."""
        unknown = lambda k, now: k in ("batch_size", "data") and None in (now, saved.get(k))  # a source may not say
        changed = [f"{k} {_short(saved.get(k))} -> {_short(now)}" for k, now in self.definition.items()
                   if saved.get(k) != now and not unknown(k, now)]
        if changed:
            raise ValueError(f"{source}: cannot resume, the run was saved with other settings: {', '.join(changed)} "
                             "(set them back, or start a fresh run in another folder)")


def _short(value: Any) -> str:
    return repr(value[:12] + "...") if isinstance(value, str) and len(value) > 15 else repr(value)


# ---------------------------------------------------------------------------- pieces of a step


def _count_tokens(batch: dict) -> float:
    """Real (non-padding) tokens: the attention mask when there is one."""
    if "attention_mask" in batch:
        return float(batch["attention_mask"].sum())
    ids = batch.get("input_ids")
    return float(ids.numel()) if ids is not None else 0.0


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _autocast(mixed_precision: str, device: torch.device):
    if mixed_precision == "no":
        return nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _check_mixed_precision(mixed_precision: str, device: torch.device) -> None:
    if mixed_precision == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision fp16 needs a CUDA device (use bf16 on CPU)")
    if mixed_precision == "bf16" and device.type == "cpu" and not _cpu_has_bf16():
        warnings.warn("this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 autocast is emulated and "
                      "runs many times slower than fp32 here", stacklevel=4)


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private probe; assume support when it is gone
        return True


def _nonfinite(model: nn.Module) -> list[str]:
    """Names of the floating-point tensors of `model` that hold a NaN or an infinity."""
    return [n for n, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _best_info(cfg: TrainConfig, at: _Position) -> dict | None:
    """What best/export.json records, when the current step is the best one."""
    return {"metric": cfg.metric, "value": at.best} if at.best_step == at.step else None


def _better(value: float, best: float | None, greater_is_better: bool) -> bool:
    """A NaN is never better: a diverged model is the worst, not the best."""
    return math.isfinite(value) and (best is None or (value > best if greater_is_better else value < best))


class _StopFlag:
    """SIGTERM/SIGINT: the loop saves at the end of the current step and returns; a second one stops at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt  # asked twice: stop now; the last saved state stays as it is
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------- the loop


def train(
    model: nn.Module,
    batches,
    cfg: TrainConfig,
    evaluate: Evaluate | None = None,
    *,
    batch_stats: BatchStats | None = None,
    resume: bool | Literal["auto"] = False,
    export: Export | None = None,
) -> TrainResult:
    """Train `model` in place on `batches`; see the module docstring for the contract.

    resume: True continues the run saved in cfg.out_dir (an error when there is none), "auto"
    continues it when there is one, False starts afresh. export(model, folder) writes last/ and
    best/ (default: model.save_pretrained(folder)). Raises Diverged when the loss or the gradient
    norm is not finite more than cfg.max_bad_steps times; a NaN model is never saved.
    """
    if resume not in (True, False, "auto"):
        raise ValueError(f"resume must be true, false or 'auto', got {resume!r}")
    if resume is True and not cfg.out_dir:
        raise ValueError("resume needs out_dir: the state to resume from lives there")
    d = _Dist.setup(cfg.device)
    try:
        return _train(model, batches, cfg, evaluate, batch_stats, resume, export, d)
    finally:
        d.close()


def _train(model, batches, cfg: TrainConfig, evaluate, batch_stats, resume, export, d: _Dist) -> TrainResult:
    # -- set up: the run folder first (a bad out_dir fails before any work), then model and optimizer
    run = RunFolder(cfg.out_dir, export=export, writer=d.rank == 0) if cfg.out_dir else None
    _check_mixed_precision(cfg.mixed_precision, d.device)
    seed_everything(cfg.seed + d.rank)
    core = model.to(d.device)  # the model itself: what is evaluated and saved
    net = d.wrap(core, cfg.ddp_find_unused_parameters)  # what trains: DDP averages its gradients over ranks
    plan = _Plan.of(batches, cfg, d.world)
    optimizer = build_optimizer(core, cfg, d.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, plan.warmup_steps,
                                                                                 plan.total_steps))
    scaler = torch.amp.GradScaler("cuda") if cfg.mixed_precision == "fp16" else None
    say = tqdm.write if d.rank == 0 else (lambda text: None)
    at, history = _Position(), []
    state = run.open(resume) if run else None
    if state is not None:  # continue exactly where the saved run stopped
        plan.check_resume(state["run"], run.state_file)
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"][d.rank])
        at = _Position.from_state(state)
        run.repair(core, at.step, _best_info(cfg, at))
        history = run.records(upto=at.step)
        say(f"resumed from {run.state_file}: step {at.step}, epoch {at.epoch + 1}, batch {at.micro}")
    d.barrier()

    def record(rec: dict) -> None:
        history.append(rec)
        if run:
            run.append(rec)

    def report() -> bool:
        """Train metrics since the last report, validation metrics, keep-best; True for a new best."""
        rec = {"step": at.step, "epoch": at.epoch + 1, **at.report_sums.all_ranks(d).summary("train_")}
        new_best = False
        if evaluate is not None:
            if d.rank == 0:
                core.eval()
                with torch.no_grad(), _autocast(cfg.mixed_precision, d.device):
                    metrics = {k: float(v) for k, v in evaluate(core).items()}
                core.train()
                rec.update({f"val_{k}": v for k, v in metrics.items()})
                if cfg.keep_best and cfg.metric not in metrics:
                    raise ValueError(f"metric {cfg.metric!r} is not among the evaluation results {sorted(metrics)}")
                if cfg.keep_best and _better(metrics[cfg.metric], at.best, cfg.greater_is_better):
                    at.best, at.best_step, rec["best"], new_best = metrics[cfg.metric], at.step, True, True
            new_best = bool(d.max([float(new_best)])[0])  # rank 0 evaluates; the others wait here
        rec["elapsed"] = at.elapsed
        record(rec)
        shown = " | ".join(f"{k} {v:.4f}" for k, v in rec.items()
                           if k not in ("step", "epoch", "elapsed", "best") and v is not None)
        say(f"epoch {at.epoch + 1}/{plan.epochs} step {at.step}/{plan.total_steps} | {shown}"
            f"{f' (best {cfg.metric} so far)' if new_best else ''} | train time "
            f"{at.report_sums.seconds:.1f} s since the last report, {at.elapsed:.1f} s in all")
        at.report_sums = _Sums()
        if run:
            run.plot(history)
        return new_best

    def save() -> None:
        if run is None:
            return
        broken = _nonfinite(core)  # every rank holds the same weights, so every rank raises alike
        if broken:
            raise Diverged(f"step {at.step}: {broken[0]} (and {len(broken) - 1} more tensors) not finite; not saved, "
                           f"{run.state_file} keeps the last good state")
        state = {"model": core.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict() if scaler else {}, "rng": d.gather(_rng_state()),  # one per rank
                 "run": plan.definition, **dataclasses.asdict(at)}
        run.save(state, core, _best_info(cfg, at))
        d.barrier()

    def time_spent(seconds: float) -> bool:
        return cfg.max_minutes is not None and seconds >= cfg.max_minutes * 60

    # -- the loop: one optimizer step per iteration
    core.train()
    bar = tqdm(total=plan.total_steps, initial=at.step, unit="step", dynamic_ncols=True,
               disable=not (cfg.progress and d.rank == 0))
    batch_iter = None
    signum = 0
    # Batches padded to their own lengths fragment the heap: untrimmed, RSS climbs for hours. Each trim
    # costs the next step the page faults of its activations again, hence not more often than this.
    trim = Trimmer(every=120.0)
    try:
        with _StopFlag() as stop:
            while at.step < plan.total_steps and not time_spent(at.elapsed):
                if batch_iter is None:  # start an epoch, or resume one at micro-batch `at.micro`
                    batches.set_epoch(at.epoch)
                    batch_iter = _epoch_batches(batches, at.micro, plan.micro_per_epoch, d)
                t0 = time.perf_counter()
                window = min(cfg.grad_accum_steps, plan.micro_per_epoch - at.micro)  # an epoch's last may be short
                micro_batches = (next(batch_iter) for _ in range(window))  # read one at a time
                loss, tokens, stats = _forward_backward(net, micro_batches, window, cfg.mixed_precision, scaler,
                                                        batch_stats, d)
                if scaler:
                    scaler.unscale_(optimizer)
                grad_norm = float(nn.utils.clip_grad_norm_(core.parameters(), cfg.max_grad_norm)
                                  if cfg.max_grad_norm is not None else
                                  nn.utils.get_total_norm([p.grad for p in core.parameters() if p.grad is not None]))
                # fp16: the grad scaler itself skips steps whose gradients overflowed
                bad = not math.isfinite(loss) or (scaler is None and not math.isfinite(grad_norm))
                time_up = time_spent(at.elapsed + time.perf_counter() - t0)
                bad, time_up = (int(x) for x in d.max([bad, time_up]))  # ranks decide alike
                if bad:
                    at.bad_steps += 1
                    what = f"loss {loss:.4g}, gradient norm {grad_norm:.4g}"
                    record({"step": at.step + 1, "epoch": at.epoch + 1, "bad_step": what, "bad_steps": at.bad_steps})
                    if at.bad_steps > cfg.max_bad_steps:
                        lr_now = optimizer.param_groups[0]["lr"]
                        raise Diverged(f"training diverged at step {at.step + 1}: {what} at lr {lr_now:.3g}; nothing "
                                       "from this step on was saved; lower the learning rate" + (
                                           "" if cfg.max_bad_steps else " or let max_bad_steps skip a few such steps"))
                    say(f"step {at.step + 1}: {what}: skipped without an update "
                        f"({at.bad_steps} of max_bad_steps {cfg.max_bad_steps})")
                    if scaler:
                        scaler.update()
                elif scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                at.step, at.micro = at.step + 1, at.micro + window
                signum = int(d.max([stop.signum])[0])  # a signal during this step stops the run after it
                dt = time.perf_counter() - t0
                at.elapsed += dt
                if not bad:
                    at.log_sums.add(loss, tokens, dt, stats)
                    at.report_sums.add(loss, tokens, dt, stats)
                lr = scheduler.get_last_lr()[0]
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens * d.world / max(dt, 1e-9):.0f}",
                                refresh=False)

                epoch_end = at.micro == plan.micro_per_epoch
                end = at.step == plan.total_steps or bool(time_up)  # log, evaluate and save where it ends
                if (end or at.step % cfg.log_every == 0) and at.log_sums.steps:  # (skipped steps are not summed)
                    sums = at.log_sums.all_ranks(d)
                    record({"step": at.step, "epoch": at.epoch + 1, "loss": sums.summary("")["loss"], "lr": lr,
                            "grad_norm": grad_norm, "tokens_per_s": sums.tokens / max(sums.seconds, 1e-9),
                            "elapsed": at.elapsed})
                    at.log_sums = _Sums()
                new_best = False
                if end or (cfg.eval_every and at.step % cfg.eval_every == 0) or (cfg.eval_every is None and epoch_end):
                    new_best = report()
                if epoch_end:  # the saved position is the next epoch's start
                    at.epoch, at.micro = at.epoch + 1, 0
                    batch_iter.close()
                    batch_iter = None
                if (end or signum or new_best or (cfg.save_every and at.step % cfg.save_every == 0)
                        or (cfg.save_every is None and epoch_end)):
                    save()
                trim()
                if signum or time_up:
                    saved = "state saved" if run else "nothing saved (no out_dir)"
                    say(f"stopped by {signal.Signals(signum).name} at step {at.step}; {saved}" if signum else
                        f"time box of {cfg.max_minutes:g} min reached at step {at.step}; {saved}")
                    break
    finally:
        if batch_iter is not None:
            batch_iter.close()
        bar.close()
    if run:
        run.plot(history, now=True)
    return TrainResult(step=at.step, history=history, best_metric=at.best, best_step=at.best_step,
                       stopped=signum or None)


def _forward_backward(net: nn.Module, micro_batches: Iterable[dict], window: int, mixed_precision: str, scaler,
                      batch_stats, d: _Dist) -> tuple[float, float, list[dict]]:
    """Gradients of one step's `window` micro-batches, accumulated in .grad; returns (the step's loss:
    the mean over its micro-batches, real tokens, batch_stats of each micro-batch)."""
    loss, tokens, stats = 0.0, 0.0, []
    for j, batch in enumerate(micro_batches):
        tokens += _count_tokens(batch)  # before the copy: no device sync for a count
        batch = _to_device(batch, d.device)
        with net.no_sync() if d.group and j < window - 1 else nullcontext():  # DDP all-reduces on the last only
            with _autocast(mixed_precision, d.device):
                out = net(**batch)
            (scaler.scale(out["loss"] / window) if scaler else out["loss"] / window).backward()
        loss += float(out["loss"].detach()) / window
        if batch_stats is not None:
            with torch.no_grad():
                stats.append({k: (float(s), float(c)) for k, (s, c) in batch_stats(batch, out).items()})
    return loss, tokens, stats


def _epoch_batches(batches, start: int, stop: int, d: _Dist) -> Iterator[dict]:
    """This rank's micro-batches start..stop-1 of the current epoch; built ahead in a thread for a GPU."""
    it = _rank_batches(batches, start, stop, d.rank, d.world)
    if d.device.type == "cuda" and hasattr(batches, "__getitem__"):
        it = _prefetched(it)
    return it
