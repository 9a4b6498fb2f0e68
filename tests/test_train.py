"""The training engine on a tiny classifier: schedule, decay groups, clipping, accumulation,
atomic state, exact resume after SIGTERM, and 2-process DDP equivalence."""

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
import torch.nn.functional as F
from torch import nn

from bertkit.batching import Batches
from bertkit.train import STATE_FILE, TrainConfig, load_state, lr_factor, param_groups, save_state, train

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    """Embedding -> LayerNorm -> dropout -> mean pool -> linear: the engine's view of a task model."""

    def __init__(self, vocab: int = 50, hidden: int = 16, dropout: float = 0.1):
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 2)

    def forward(self, input_ids, attention_mask, labels, **_):
        h = self.drop(self.norm(self.emb(input_ids)))  # [batch, seq, hidden]
        m = attention_mask.unsqueeze(-1).float()
        logits = self.out((h * m).sum(1) / m.sum(1))  # [batch, 2]
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def features(n: int = 64, seq: int = 8, varied: bool = True, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(3, seq + 1, (1,), generator=g)) if varied else seq
        ids = torch.randint(1, 50, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": int(ids[0] < 25)})
    return out


def accuracy(batch, out):
    return {"accuracy": ((out["logits"].argmax(-1) == batch["labels"]).sum(), len(batch["labels"]))}


def make(seed: int = 0, dropout: float = 0.1) -> Tiny:
    torch.manual_seed(seed)
    return Tiny(dropout=dropout)


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


def test_state_file_is_atomic_and_loads_weights_only(tmp_path, monkeypatch):
    path = tmp_path / STATE_FILE
    save_state(path, {"step": 1, "w": torch.ones(3)})

    def crash(obj, f, *a, **k):
        Path(f).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_state(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    s = load_state(path)
    assert s["step"] == 1 and torch.equal(s["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temp file left behind


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
    assert part.stopped and 8 < part.step < full.step
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
        res = train(make(), Batches(features(16), 4), TrainConfig(dtype="bf16", epochs=1, log_every=1,
                                                                  progress=False))
    assert all(torch.isfinite(torch.tensor(x)) for _, x in losses(res.history))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16 needs a CUDA"):
            train(make(), Batches(features(16), 4), TrainConfig(dtype="fp16", epochs=1, progress=False))
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="int8")


DDP_WORKER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    from test_train import features, make
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
    assert load_state(tmp_path / STATE_FILE)["step"] == 1
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
