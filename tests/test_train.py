"""The training engine on a tiny classifier: schedule, decay groups, clipping, accumulation, exact
resume after SIGTERM, 2-process DDP equivalence, time box, divergence, and what resuming refuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from bertkit.batching import Batches
from bertkit.runs import RunFolder
from bertkit.train import Diverged, TrainConfig, lr_factor, param_groups, train
from conftest import accuracy, features, make

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def losses(history: list[dict]) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in history if "loss" in r]


def test_schedule_warms_up_linearly_then_decays_to_zero():
    f = [lr_factor(s, 10, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:10], f[1:10]))
    assert all(a > b for a, b in zip(f[10:], f[11:]))
    assert lr_factor(100, 10, 100) == 0.0
    # The engine's logged learning rate follows it: warmup as a fraction of all steps.
    cfg = TrainConfig(lr=1e-2, warmup=0.25, epochs=2, log_every=1, progress=False)
    h = train(make(), Batches(features(32), 4), cfg).history  # 8 steps per epoch, 16 in all
    lrs = [r["lr"] for r in h if "lr" in r]
    assert len(lrs) == 16
    assert lrs[:4] == pytest.approx([1e-2 * lr_factor(s, 4, 16) for s in range(1, 5)])
    assert lrs[-1] == 0.0 and max(lrs) == pytest.approx(1e-2)


def test_no_weight_decay_on_biases_and_layernorm():
    m = make()
    decay, no_decay = param_groups(m, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in m.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["emb.weight", "out.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["norm.bias", "norm.weight", "out.bias"]
    # And in training: a bias with zero gradient stays put (AdamW would shrink it if it were decayed).
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    m.out.bias.register_hook(lambda g: torch.zeros_like(g))
    train(m, Batches(features(8, varied=False), 8), TrainConfig(lr=0.1, weight_decay=0.5, warmup=0,
                                                                 epochs=1, progress=False))
    assert torch.equal(m.out.bias, before["out.bias"])  # zero grad, no decay: unchanged


def test_gradient_clipping_is_applied():
    # With a huge eps Adam's update is ~ lr * grad / eps, so it scales with the clipped gradient.
    feats = features(16, varied=False)
    deltas = {}
    for clip in (None, 1e-3):
        m = make(dropout=0.0)
        before = m.out.weight.detach().clone()
        res = train(m, Batches(feats, 16), TrainConfig(lr=1.0, eps=1e3, weight_decay=0.0, warmup=0, epochs=1,
                                                         max_grad_norm=clip, log_every=1, progress=False))
        deltas[clip] = (m.out.weight.detach() - before).norm().item()
        norm = res.history[0]["grad_norm"]
    assert norm > 1e-2  # the gradient was far above the threshold...
    assert deltas[1e-3] < deltas[None] * 1e-3 / norm * 1.5  # ...and the step shrank in proportion


def test_gradient_accumulation_matches_a_bigger_batch():
    feats = features(64, varied=False)
    a, b = make(dropout=0.0), make(dropout=0.0)
    cfg = dict(lr=1e-2, warmup=0, epochs=2, log_every=1, progress=False)
    ha = train(a, Batches(feats, 8), TrainConfig(**cfg)).history
    hb = train(b, Batches(feats, 4), TrainConfig(grad_accum_steps=2, **cfg)).history
    assert [s for s, _ in losses(ha)] == [s for s, _ in losses(hb)] == list(range(1, 17))
    for (_, x), (_, y) in zip(losses(ha), losses(hb)):
        assert x == pytest.approx(y, rel=1e-5)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class KillAt:
    """Batches that send SIGTERM to this process when micro-batch `at` of epoch `epoch` is read."""

    def __init__(self, inner: Batches, epoch: int, at: int):
        self.inner, self.kill_epoch, self.at, self.epoch = inner, epoch, at, 0

    def set_epoch(self, e):
        self.epoch = e
        self.inner.set_epoch(e)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        for i, b in enumerate(self.inner):
            if (self.epoch, i) == (self.kill_epoch, self.at):
                os.kill(os.getpid(), signal.SIGTERM)
            yield b


def test_sigterm_saves_and_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    feats, evalset = features(60, seed=1), features(16, seed=2)

    def evaluate(model):
        b = next(iter(Batches(evalset, 16)))
        return {"accuracy": float((model(**b)["logits"].argmax(-1) == b["labels"]).float().mean())}

    def cfg(out):  # dropout on, varied lengths, shuffled batches, accumulation: all must line up
        return TrainConfig(lr=1e-2, warmup=3, epochs=3, grad_accum_steps=2, log_every=1, eval_every=4,
                           save_every=5, metric="accuracy", greater_is_better=True, out_dir=str(out),
                           progress=False)

    full_model = make()
    full = train(full_model, Batches(feats, 4, shuffle=True), cfg(tmp_path / "full"), evaluate,
                 batch_stats=accuracy)
    part_model = make()
    part = train(part_model, KillAt(Batches(feats, 4, shuffle=True), 1, 5), cfg(tmp_path / "part"), evaluate,
                 batch_stats=accuracy)
    assert part.stopped == signal.SIGTERM and 8 < part.step < full.step
    resumed_model = make(seed=123)  # different init: everything must come from the state file
    rest = train(resumed_model, Batches(feats, 4, shuffle=True), cfg(tmp_path / "part"), evaluate,
                 batch_stats=accuracy, resume=True)
    assert rest.step == full.step and not rest.stopped
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("elapsed", "tokens_per_s")} for r in h]
    assert strip(rest.history) == strip(full.history)  # every loss, lr, metric: equal, not close
    for p, q in zip(full_model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
    on_disk = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert strip(on_disk) == strip(full.history)
    assert (tmp_path / "part" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "part" / "best" / "model.safetensors").exists()
    assert rest.best_metric == full.best_metric and rest.best_step == full.best_step
    reports = [r for r in full.history if "val_accuracy" in r]
    assert reports and all("train_accuracy" in r and "train_loss" in r for r in reports)


def test_bf16_autocast_trains_on_cpu_and_fp16_needs_cuda():
    with warnings.catch_warnings():  # CPUs without native bf16 get a (true) warning about speed
        warnings.simplefilter("ignore")
        res = train(make(), Batches(features(16), 4), TrainConfig(mixed_precision="bf16", epochs=1, log_every=1,
                                                                  progress=False))
    assert all(torch.isfinite(torch.tensor(x)) for _, x in losses(res.history))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16 needs a CUDA"):
            train(make(), Batches(features(16), 4), TrainConfig(mixed_precision="fp16", epochs=1, progress=False))
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="int8")


DDP_WORKER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    from conftest import features, make
    from bertkit.batching import Batches
    from bertkit.train import TrainConfig, train
    res = train(make(dropout=0.0), Batches(features(64, varied=False), 4, shuffle=True),
                TrainConfig(lr=1e-2, warmup=2, epochs=2, log_every=1, progress=False, out_dir={out!r}))
""")


def test_two_process_ddp_matches_one_process_with_double_accumulation(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER.format(tests=str(Path(__file__).parent), out=str(tmp_path / "ddp")))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        "--standalone", str(script)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    one = train(make(dropout=0.0), Batches(features(64, varied=False), 4, shuffle=True),
                TrainConfig(lr=1e-2, warmup=2, epochs=2, log_every=1, progress=False, grad_accum_steps=2)).history
    assert len(losses(ddp)) == len(losses(one)) == 16
    for (s, x), (t, y) in zip(losses(ddp), losses(one)):
        assert s == t and x == pytest.approx(y, rel=1e-5)


def test_time_box_stops_evaluates_and_saves_then_resume_goes_on(tmp_path):
    feats = features(40, seed=3)
    evaluate = lambda model: {"loss": 0.5}
    cfg = TrainConfig(lr=1e-2, warmup=0, epochs=2, log_every=1, out_dir=str(tmp_path), progress=False,
                      max_minutes=1e-9)  # spent after the first step
    boxed = train(make(), Batches(feats, 4), cfg, evaluate)
    assert boxed.step == 1 and not boxed.stopped
    assert [r["step"] for r in boxed.history if "val_loss" in r] == [1]  # evaluated where it stopped
    assert RunFolder(tmp_path).load_state()["step"] == 1
    cfg.max_minutes = 60.0  # a larger box: the resumed run goes on to the end of its schedule
    rest = train(make(seed=5), Batches(feats, 4), cfg, evaluate, resume=True)
    assert rest.step == 20


def test_prefetched_batches_keep_order_errors_and_stop_when_abandoned():
    import threading

    from bertkit.train import _prefetched

    assert list(_prefetched(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        raise OSError("shard-00003: truncated")

    it = _prefetched(failing())
    assert next(it) == 1
    with pytest.raises(OSError, match="shard-00003"):
        next(it)
    it = _prefetched(iter(range(10**6)))  # a run stopped mid-epoch leaves the producer behind
    assert next(it) == 0
    it.close()
    threads = [t for t in threading.enumerate() if t.name == "bertkit-prefetch"]
    for t in threads:
        t.join(timeout=2)
    assert not any(t.is_alive() for t in threads)


# ---------------------------------------------------------------------------- numerics and run hygiene


def strict_records(folder: Path) -> list[dict]:
    """metrics.jsonl through a strict parser: NaN and Infinity are errors."""
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    return [json.loads(x, parse_constant=refuse) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def test_a_diverging_run_stops_with_diverged_and_saves_nothing_nonfinite(tmp_path):
    held_out = next(iter(Batches(features(16, seed=5), 16)))

    def evaluate(model):  # NaN logits predict class 0: a diverged model still gets an accuracy
        return {"accuracy": float((model(**held_out)["logits"].argmax(-1) == held_out["labels"]).float().mean())}

    cfg = TrainConfig(lr=1e6, warmup=0, epochs=3, log_every=1, eval_every=1, save_every=1, metric="accuracy",
                      greater_is_better=True, out_dir=str(tmp_path), progress=False)
    with pytest.raises(Diverged, match=r"diverged at step \d+: loss \S+, gradient norm \S+ at lr \S+; nothing"):
        train(make(), Batches(features(64, seed=4), 4, shuffle=True), cfg, evaluate)
    recs = strict_records(tmp_path)
    assert recs[-1]["bad_steps"] == 1 and recs[-1]["step"] <= 10  # stopped within a few steps, and says why
    state = RunFolder(tmp_path).load_state()
    assert state["step"] == recs[-1]["step"] - 1 and all_finite(state["model"].values())
    for name in ("last", "best"):
        assert all_finite(load_file(tmp_path / name / "model.safetensors").values())


def test_a_nan_metric_is_the_worst_score_never_the_best(tmp_path):
    scores = iter([float("nan"), 0.6, float("nan"), 0.5])
    cfg = TrainConfig(lr=1e-2, epochs=1, eval_every=2, metric="accuracy", greater_is_better=True,
                      out_dir=str(tmp_path), progress=False)
    res = train(make(), Batches(features(32), 4), cfg, lambda model: {"accuracy": next(scores)})
    assert (res.best_metric, res.best_step) == (0.6, 4)
    assert [r["val_accuracy"] for r in strict_records(tmp_path) if "val_accuracy" in r] == [None, 0.6, None, 0.5]
    assert json.loads((tmp_path / "best" / "export.json").read_text()) == {"step": 4, "metric": "accuracy",
                                                                            "value": 0.6}


class Poisoned(nn.Module):
    """A model whose loss is NaN at chosen forward calls; it remembers the weights each call saw."""

    def __init__(self, inner: nn.Module, bad: set[int]):
        super().__init__()
        self.inner, self.bad, self.seen = inner, bad, []

    def forward(self, **batch):
        self.seen.append(self.inner.out.weight.detach().clone())
        out = self.inner(**batch)
        if len(self.seen) - 1 in self.bad:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_bad_steps_are_skipped_without_an_update_up_to_max_bad_steps(tmp_path):
    cfg = dict(lr=1e-2, warmup=0, epochs=1, log_every=1, progress=False)
    net = Poisoned(make(dropout=0.0), bad={2, 5})
    res = train(net, Batches(features(32, varied=False), 4), TrainConfig(max_bad_steps=2, **cfg))
    assert res.step == 8
    assert [(r["step"], r["bad_steps"]) for r in res.history if "bad_step" in r] == [(3, 1), (6, 2)]
    assert "loss nan" in res.history[2]["bad_step"]
    assert [s for s, _ in losses(res.history)] == [1, 2, 4, 5, 7, 8]  # the skipped steps are not averaged in
    assert torch.equal(net.seen[2], net.seen[3]) and torch.equal(net.seen[5], net.seen[6])  # no update
    assert not torch.equal(net.seen[1], net.seen[2]) and not torch.equal(net.seen[3], net.seen[4])
    with pytest.raises(Diverged, match="at step 6"):  # one bad step too many
        train(Poisoned(make(dropout=0.0), bad={2, 5}), Batches(features(32, varied=False), 4),
              TrainConfig(max_bad_steps=1, **cfg))


def test_resume_true_needs_a_saved_run_and_auto_starts_afresh_when_there_is_none(tmp_path):
    cfg = TrainConfig(lr=1e-2, epochs=1, log_every=1, out_dir=str(tmp_path / "run"), progress=False)
    with pytest.raises(FileNotFoundError, match=r"run: no state.pt to resume from \(resume=auto starts afresh"):
        train(make(), Batches(features(16), 4), cfg, resume=True)
    first = train(make(), Batches(features(16), 4), cfg, resume="auto")  # nothing saved yet: a fresh run
    assert first.step == 4 and RunFolder(tmp_path / "run").load_state()["step"] == 4
    again = train(make(seed=9), Batches(features(16), 4), cfg, resume="auto")  # finished: nothing left to do
    assert again.step == 4 and again.history == first.history
    with pytest.raises(ValueError, match="resume must be true, false or 'auto'"):
        train(make(), Batches(features(16), 4), cfg, resume="maybe")


def test_resuming_with_other_settings_is_refused_naming_each_difference(tmp_path):
    cfg = TrainConfig(lr=1e-2, epochs=2, out_dir=str(tmp_path), progress=False)
    train(make(), Batches(features(32), 4), cfg)
    with pytest.raises(ValueError, match=r"state.pt: cannot resume, .*: micro_batches_per_epoch 8 -> 4, "
                                         r"total_steps 16 -> 8, batch_size 4 -> 8 \(set them back"):
        train(make(), Batches(features(32), 8), cfg, resume=True)
    cfg.lr, cfg.epochs = 1e-3, 3
    with pytest.raises(ValueError, match=r"total_steps 16 -> 24, lr 0.01 -> 0.001, epochs 2 -> 3"):
        train(make(), Batches(features(32), 4), cfg, resume=True)


def test_an_out_dir_that_is_a_file_fails_before_any_training(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    m = make()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="file: is a file; the run folder"):
        train(m, Batches(features(16), 4), TrainConfig(out_dir=str(tmp_path / "file"), progress=False))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("bad", [dict(max_steps=2.5), dict(max_steps=0), dict(epochs=0), dict(lr=0.0),
                                 dict(lr=float("nan")), dict(grad_accum_steps=0), dict(max_bad_steps=-1),
                                 dict(warmup=-1.0), dict(max_minutes=0.0), dict(log_every=True)])
def test_settings_out_of_range_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig(**bad)
