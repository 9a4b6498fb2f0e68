"""Pre-training end to end on real IMDB text: configs, loss falls, a SIGKILLed `bertkit pretrain`
resumes onto exactly the uninterrupted loss curve, continued pre-training of MiniLM, and the
command's exit codes: 1 when training diverges, 130/143 on SIGINT/SIGTERM, 2 for bad input."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bertkit import cli
from bertkit.data import prepare
from bertkit.heads import BertForPreTraining
from bertkit.pretrain import load_config, pretrain
from conftest import imdb_sample, minilm_dir, small_vocab

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pre")
    return imdb_sample(root / "imdb.jsonl", 150)


@pytest.fixture(scope="module")
def shards(corpus) -> Path:
    out = corpus.parent / "shards"
    prepare(small_vocab(corpus.parent / "vocab"), [corpus], out, max_seq_length=64, docs_per_shard=50, workers=1,
            progress=False)
    return out


def tiny_overrides(shards: Path, out: Path, **extra) -> list[str]:
    base = {"data": shards, "model": "tiny", "batch_size": 16, "eval_instances": 64, "eval_batch_size": 64,
            "train.out_dir": out, "train.lr": "1e-3", "train.warmup": 5, "train.log_every": 1,
            "train.progress": "false", "model_overrides": "{intermediate_size: 256}"}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_config_file_overrides_and_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: some/dir\nmodel: small\nmasking: {whole_word: true}\ntrain: {lr: 2e-4, max_steps: 7}\n")
    cfg = load_config(f, ["train.lr=3e-4", "batch_size=8", "model_overrides.hidden_dropout_prob=0.0"])
    assert cfg.model == "small" and cfg.masking.whole_word and cfg.batch_size == 8
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float) and cfg.train.max_steps == 7
    assert cfg.train.weight_decay == 0.01 and cfg.train.warmup == 0.01  # pre-training defaults kept
    assert cfg.model_overrides == {"hidden_dropout_prob": 0.0}
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"data": "d", "train": {"epochs": 2, "max_steps": None}}))
    assert load_config(j).train.epochs == 2
    with pytest.raises(ValueError, match="unknown setting 'train.lrr'; valid keys: lr, betas"):
        load_config(f, ["train.lrr=1"])
    with pytest.raises(ValueError, match="'train.lr': 'fast' is not a number"):
        load_config(f, ["train.lr=fast"])
    with pytest.raises(ValueError, match="'train.max_steps': 2.5 is not a whole number"):
        load_config(f, ["train.max_steps=2.5"])
    with pytest.raises(ValueError, match="'resume': 'maybe' is not true or false, nor one of auto"):
        load_config(f, ["resume=maybe"])
    with pytest.raises(ValueError, match="'train.mixed_precision': 'bf17' is not one of no, bf16, fp16"):
        load_config(f, ["train.mixed_precision=bf17"])
    assert load_config(f, ["resume=auto", "train.mixed_precision=bf16"]).train.mixed_precision == "bf16"
    with pytest.raises(ValueError, match="not key=value"):
        load_config(f, ["lr"])
    with pytest.raises(ValueError, match="`data`"):
        load_config(None, [])
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "none.yaml")


def test_pretraining_on_imdb_lowers_the_loss(shards, tmp_path):
    res = pretrain(load_config(None, tiny_overrides(shards, tmp_path / "run", **{"train.max_steps": 30,
                                                                                 "train.eval_every": 15})))
    steps = [r["loss"] for r in res.history if "loss" in r]
    assert len(steps) == 30
    assert np.mean(steps[-5:]) < np.mean(steps[:5]) - 1.0  # MLM over 5,000 word pieces starts near ln(5000)
    evals = [r for r in res.history if "val_loss" in r]
    assert len(evals) == 2 and evals[1]["val_mlm_loss"] < evals[0]["val_mlm_loss"]
    assert all(0 <= r[k] <= 1 for r in evals for k in ("val_mlm_accuracy", "val_nsp_accuracy", "train_mlm_accuracy"))
    model = BertForPreTraining.from_pretrained(tmp_path / "run" / "best")  # self-contained export
    assert (tmp_path / "run" / "best" / "vocab.txt").is_file() and model.config.vocab_size == 5000


def _losses(path: Path) -> list[tuple]:
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("val_loss"), r.get("train_mlm_accuracy")) for r in recs]


def test_sigkilled_pretraining_resumes_onto_the_same_loss_curve(shards, tmp_path):
    steps = {"train.max_steps": 10, "train.save_every": 3, "train.eval_every": 4, "batch_size": 8}
    args = tiny_overrides(shards, tmp_path / "run", **steps)
    cmd = [sys.executable, "-m", "bertkit.cli", "pretrain", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")  # as in this process
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_at = random.randint(4, 8)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if metrics.exists() and sum(1 for x in metrics.read_text().splitlines() if '"loss"' in x) >= kill_at:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"run ended before the kill: {proc.stderr.read()[-2000:]}"
    r = subprocess.run(cmd + ["resume=true"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout
    full = pretrain(load_config(None, tiny_overrides(shards, tmp_path / "full", **steps)))
    assert full.step == 10
    assert _losses(metrics) == _losses(tmp_path / "full" / "metrics.jsonl")  # exact, on CPU
    assert json.loads((tmp_path / "run" / "last" / "export.json").read_text()) == {"step": 10}
    assert not list((tmp_path / "run").rglob(".*"))  # no temporary file left by the kill
    a = BertForPreTraining.from_pretrained(tmp_path / "run" / "last").state_dict()
    b = BertForPreTraining.from_pretrained(tmp_path / "full" / "last").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_continued_pretraining_of_minilm_with_fresh_heads(tmp_path):
    corpus = imdb_sample(tmp_path / "imdb.jsonl", 30)
    prepare(minilm_dir(), [corpus], tmp_path / "shards", max_seq_length=64, workers=1, progress=False)
    start = BertForPreTraining.from_pretrained(minilm_dir())
    res = pretrain(load_config(None, [f"data={tmp_path / 'shards'}", f"model={minilm_dir()}", "batch_size=4",
                                      "eval_instances=8", "train.max_steps=2", "train.eval_every=1",
                                      "train.progress=false", f"train.out_dir={tmp_path / 'run'}"]))
    evals = [r for r in res.history if "val_mlm_accuracy" in r]
    assert len(evals) == 2
    tuned = BertForPreTraining.from_pretrained(tmp_path / "run" / "last")
    emb = "bert.embeddings.word_embeddings.weight"
    # The encoder started from MiniLM and moved a little; the MLM decoder is the embedding matrix.
    d = (tuned.state_dict()[emb] - start.state_dict()[emb]).abs().max()
    assert 0 < d < 1e-2
    assert (tmp_path / "run" / "last" / "vocab.txt").is_file()
    with pytest.raises(ValueError, match="different vocabulary"):
        small = small_vocab(tmp_path / "v")
        prepare(small, [corpus], tmp_path / "other", max_seq_length=64, workers=1, progress=False)
        pretrain(load_config(None, [f"data={tmp_path / 'other'}", f"model={minilm_dir()}", "eval_instances=0"]))


def test_evaluation_on_a_second_prepared_corpus(shards, corpus, tmp_path):
    res = pretrain(load_config(None, tiny_overrides(shards, tmp_path / "run", eval_data=shards,
                                                    eval_instances=10**6, **{"train.max_steps": 2})))
    assert [r["step"] for r in res.history if "val_mlm_accuracy" in r] == [2]  # capped to what eval_data holds
    other = tmp_path / "other"  # same text, another vocabulary: its ids mean other word pieces
    prepare(minilm_dir(), [corpus], other, max_seq_length=64, workers=1, progress=False)
    with pytest.raises(ValueError, match="different vocabulary"):
        pretrain(load_config(None, tiny_overrides(shards, tmp_path / "run2", eval_data=other,
                                                  **{"train.max_steps": 2})))


# ---------------------------------------------------------------------------- failures, signals, bad input


def strict_records(folder: Path) -> list[dict]:
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    return [json.loads(x, parse_constant=refuse) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_pretraining_at_lr_1e6_diverges_and_the_cli_exits_1(shards, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_overrides(shards, out, **{"train.lr": "1e6", "train.warmup": 0, "train.max_steps": 50,
                                          "train.save_every": 1, "train.eval_every": 1})
    assert cli.main(["pretrain", *args]) == 1
    err = one_error_line(capsys)
    assert err.startswith("bertkit pretrain: error: training diverged at step") and "nothing from this step" in err
    recs = strict_records(out)  # NaN losses and metrics are null there
    assert recs[-1]["bad_steps"] == 1 and recs[-1]["step"] <= 5
    assert not any(r.get("best") and r["val_loss"] is None for r in recs)  # a NaN model never wins "best"
    for export in [p for p in (out / "last", out / "best") if p.exists()]:
        assert all(torch.isfinite(t).all() for t in load_file(export / "model.safetensors").values())
    state = torch.load(out / "state.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["model"].values())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_and_exits_128_plus_its_number(shards, tmp_path, signum):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bertkit.cli", "pretrain",
           *tiny_overrides(shards, out, **{"train.max_steps": 10_000, "train.save_every": 10_000})]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count('"loss"') >= 2:
            proc.send_signal(signum)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]  # so that `bertkit pretrain ... && next` stops here
    step = torch.load(out / "state.pt", weights_only=True)["step"]
    assert err.strip().splitlines()[-1] == (f"bertkit pretrain: stopped at step {step}; state saved; "
                                           "rerun with resume=true to continue")
    assert json.loads((out / "last" / "export.json").read_text())["step"] == step >= 2


@pytest.fixture(scope="module")
def finished_run(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    pretrain(load_config(None, tiny_overrides(shards, out, **{"train.max_steps": 2})))
    return out


def _damaged_state(run: Path, tmp: Path) -> Path:
    shutil.copytree(run, tmp / "run")
    state = tmp / "run" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    return tmp / "run"


def _damaged_shards(shards: Path, tmp: Path) -> Path:
    shutil.copytree(shards, tmp / "shards")
    ids = tmp / "shards" / "shard-00001" / "ids.npy"
    ids.write_bytes(ids.read_bytes()[:-64])
    return tmp / "shards"


BAD_INPUT = {  # name -> (overrides given (shards, finished run, tmp), the one-line error)
    "out dir is a file": (lambda s, r, t: {"train.out_dir": (t / "f").write_text("x") and t / "f"},
                          r"f: is a file; the run folder \(train.out_dir\) must be a folder"),
    "resume a run that does not exist": (lambda s, r, t: {"train.out_dir": t / "none", "resume": "true"},
                                         r"none: no state.pt to resume from"),
    "resume=maybe": (lambda s, r, t: {"resume": "maybe"}, r"'resume': 'maybe' is not true or false"),
    "fractional max_steps": (lambda s, r, t: {"train.max_steps": 2.5}, r"'train.max_steps': 2.5 is not a whole"),
    "damaged shard": (lambda s, r, t: {"data": _damaged_shards(s, t)}, r"shard-00001/ids.npy: truncated or damaged"),
    "damaged state": (lambda s, r, t: {"train.out_dir": _damaged_state(r, t), "resume": "true"},
                      r"run/state.pt: damaged or not a training state"),
    "resume with another batch size": (lambda s, r, t: {"train.out_dir": r, "resume": "true", "batch_size": 8},
                                       r"state.pt: cannot resume, .*batch_size 16 -> 8"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(shards, finished_run, tmp_path, capsys, case):
    given, message = BAD_INPUT[case]
    overrides = {"train.max_steps": 4, **given(shards, finished_run, tmp_path)}
    assert cli.main(["pretrain", *tiny_overrides(shards, tmp_path / "run", **overrides)]) == 2
    err = one_error_line(capsys)
    assert err.startswith("bertkit pretrain: error: ") and re.search(message, err), err


def test_pretraining_reads_the_parts_of_a_corpus_prepared_on_several_machines(corpus, tmp_path):
    vocab = small_vocab(corpus.parent / "vocab")
    for i in range(2):  # as two machines would, each its own part
        prepare(vocab, [corpus], tmp_path / "parts", max_seq_length=64, docs_per_shard=50, workers=1,
                shard=(i, 2), progress=False)
    res = pretrain(load_config(None, tiny_overrides(tmp_path / "parts", tmp_path / "run", eval_instances=0,
                                                    **{"train.max_steps": 2})))
    assert [r["step"] for r in res.history if "loss" in r] == [1, 2]
    part0 = json.loads((tmp_path / "parts" / "part-0-of-2" / "meta.json").read_text())
    part1 = json.loads((tmp_path / "parts" / "part-1-of-2" / "meta.json").read_text())
    assert part0["part"]["documents"] + part1["part"]["documents"] == 150
