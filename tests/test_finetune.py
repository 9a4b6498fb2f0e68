"""Fine-tuning end to end: a real fine-tune, its saved model, exact resume, and the checks before a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertkit import FinetuneConfig, evaluate, finetune
from bertkit.config import load_settings
from conftest import DATA_DIR, data_path, write_file

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_sst2_finetune_beats_chance(sst2_run):
    out, s = sst2_run
    (epoch,) = s["epochs"]
    assert s["status"] == "finished" and s["signal"] is None and s["step"] == 25
    assert s["best"] == epoch["val_accuracy"] > 0.6  # 200 dev examples, majority class 0.535
    assert {"train_loss", "train_accuracy", "val_loss", "epoch_seconds"} <= set(epoch)
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["finetuning_task"] == "sst2" and config["finetuning_max_length"] == 48
    assert (out / "best" / "vocab.txt").exists()
    saved = json.loads((out / "finetune.json").read_text(), parse_constant=_refuse)  # strict JSON
    assert saved["best"] == s["best"] and saved["settings"]["lr"] == 3e-4
    assert saved["settings"]["epochs"] == 1 and saved["settings"]["warmup"] == 0.1  # the recipe filled in


def _refuse(name):
    raise ValueError(f"{name} is not JSON")


def test_evaluate_reloads_the_best_model(sst2_run):
    out, s = sst2_run
    scores = evaluate(out, max_examples=200, data_dir=DATA_DIR)  # same seeded subset as validation
    assert scores["accuracy"] == pytest.approx(s["best"])
    assert scores["loss"] == pytest.approx(s["epochs"][0]["val_loss"], rel=1e-5)


def test_transformers_loads_the_fine_tuned_model_and_agrees(sst2_run, hf_tok):
    transformers = pytest.importorskip("transformers")
    from bertkit import Predictor

    out, _ = sst2_run
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(str(out / "best")).eval()
    assert ref.config.id2label == {0: "negative", 1: "positive"}
    texts = _sst2_dev_texts()[:16]
    with torch.no_grad():
        logits = ref(**hf_tok(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")).logits
    probs = torch.softmax(logits.double(), -1)
    ours = Predictor.from_pretrained(out)(texts)
    for p, row in zip(ours, probs):
        assert p["label"] == ref.config.id2label[int(row.argmax())]
        assert [p["scores"]["negative"], p["scores"]["positive"]] == pytest.approx(row.tolist(), abs=1e-5)


def _sst2_dev_texts() -> list[str]:
    from bertkit.tasks.datasets import TASKS

    return [ex.text for ex in TASKS["sst2"].examples("dev", DATA_DIR)]


def test_freeze_encoder_trains_only_the_head(minilm, tmp_path):
    data_path("glue", "SST-2")
    finetune(task="sst2", model=str(minilm), output=str(tmp_path), epochs=1, lr=1e-3, batch_size=8,
             max_train_examples=16, max_eval_examples=8, max_length=32, freeze_encoder=True,
             data_dir=str(DATA_DIR), device="cpu", progress=False)
    before, after = load_file(minilm / "model.safetensors"), load_file(tmp_path / "best" / "model.safetensors")
    compared = 0
    for name, tensor in before.items():
        hf_name = name if name.startswith("bert.") else f"bert.{name}"
        if hf_name in after:
            if ".pooler." in hf_name:  # trained with the head
                assert not torch.equal(after[hf_name], tensor), name
            else:
                assert torch.equal(after[hf_name], tensor), name
            compared += 1
    assert compared >= 100  # every encoder weight (MiniLM has 103 tensors with the pooler)
    assert after["classifier.weight"].shape == (2, 384)
    config = json.loads((tmp_path / "best" / "config.json").read_text())
    assert config["hidden_dropout_prob"] == 0.0 and config["classifier_dropout"] == 0.1


# --- runs: resume exactly, refuse what would not be the same run ---

def _tiny(model: Path, out: Path, **more) -> FinetuneConfig:
    return FinetuneConfig(task="sst2", model=str(model), output=str(out), data_dir=str(DATA_DIR), epochs=2, lr=1e-3,
                          batch_size=8, max_train_examples=64, max_eval_examples=32, max_length=32, device="cpu",
                          progress=False, **more)


def _cli_args(cfg: FinetuneConfig) -> list[str]:
    return ["finetune", "--task", cfg.task, "--model", cfg.model, "--output", cfg.output, "--data-dir", cfg.data_dir,
            "--epochs", str(cfg.epochs), "--lr", str(cfg.lr), "--batch-size", str(cfg.batch_size),
            "--max-train-examples", str(cfg.max_train_examples), "--max-eval-examples", str(cfg.max_eval_examples),
            "--max-length", str(cfg.max_length), "--device", "cpu", "--no-progress"]


# Runs the CLI in a fresh process and, when KILL_AT is set, signals itself at this process's KILL_AT-th
# optimizer step: a kill at a known step, with no hook in the code under test. On a clean exit it writes
# the number of steps this process took to STEPS_FILE (a resumed run takes only those left).
KILLER = """
import atexit, os, signal, sys
import torch
torch.set_num_threads(1)
from bertkit import cli

kill_at, steps = int(os.environ.get("KILL_AT", "0")), 0
adamw_step = torch.optim.AdamW.step

def step(self, *args, **kwargs):
    global steps
    steps += 1
    if steps == kill_at:
        os.kill(os.getpid(), getattr(signal, os.environ["KILL_SIGNAL"]))
    return adamw_step(self, *args, **kwargs)

torch.optim.AdamW.step = step
atexit.register(lambda: open(os.environ["STEPS_FILE"], "w").write(str(steps)))
sys.exit(cli.main(sys.argv[1:]))
"""


def _run(script: Path, args: list[str], kill_at: int = 0, sig: str = "SIGKILL") -> subprocess.CompletedProcess:
    env = dict(os.environ, KILL_AT=str(kill_at), KILL_SIGNAL=sig, STEPS_FILE=str(script.with_name("steps")),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=300)


def _records(out: Path) -> list[dict]:
    timing = {"elapsed", "tokens_per_s"}
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_stopped_then_killed_finetune_resumes_onto_the_uninterrupted_run(tiny_bert, tmp_path):
    data_path("glue", "SST-2")
    full = finetune(_tiny(tiny_bert, tmp_path / "full"))  # 8 steps an epoch, 16 in all
    assert full["step"] == 16
    script = write_file(tmp_path, "killer.py", KILLER)
    cfg = _tiny(tiny_bert, tmp_path / "run")

    stopped = _run(script, _cli_args(cfg), kill_at=5, sig="SIGTERM")  # step 5, mid-epoch 1: saves and stops
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"bertkit finetune: stopped at step 5; state saved in {cfg.output}; rerun with --resume to continue")
    summary = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert summary["status"] == "stopped" and summary["signal"] == signal.SIGTERM and summary["step"] == 5
    with pytest.raises(ValueError, match="holds a fine-tuning run already; continue it with --resume"):
        finetune(cfg)  # no silent restart from step 0

    # Resumed, then killed outright at step 12 (the 7th of this process), in epoch 2.
    killed = _run(script, [*_cli_args(cfg), "--resume"], kill_at=7, sig="SIGKILL")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    finished = _run(script, [*_cli_args(cfg), "--resume"])
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert (tmp_path / "steps").read_text() == "8"  # epoch 2 only: it went on from the state saved at step 8

    assert _records(tmp_path / "run") == _records(tmp_path / "full")  # exact, on CPU
    for export in ("best", "last"):
        a = load_file(tmp_path / "run" / export / "model.safetensors")
        b = load_file(tmp_path / "full" / export / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), export
    resumed = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert resumed["status"] == "finished" and resumed["step"] == 16
    assert [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in resumed["epochs"]] == \
        [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in full["epochs"]]
    assert (resumed["best"], resumed["best_step"]) == (full["best"], full["best_step"])

    # A resume that would not continue the same run is refused, each difference named.
    with pytest.raises(ValueError, match=r"settings changed: lr was 0.001, now 0.002; batch_size was 8, now 16"):
        finetune(_tiny(tiny_bert, tmp_path / "run", resume=True), batch_size=16, lr=2e-3)


def test_resume_refuses_changed_data_and_a_missing_run(tiny_bert, tmp_path):
    rows = "".join(f"text {i}\t{'ab'[i % 2]}\n" for i in range(12))
    train = write_file(tmp_path, "train.tsv", "text\tlabel\n" + rows)
    cfg = FinetuneConfig(model=str(tiny_bert), output=str(tmp_path / "run"), train_file=str(train), dev_split=0.25,
                         epochs=1, batch_size=4, max_length=16, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"run: no fine-tuning state to resume"):
        finetune(cfg, resume=True)
    s = finetune(cfg)
    assert s["train_examples"] == 9 and s["dev_examples"] == 3 and s["settings"]["labels"] == ["a", "b"]
    assert finetune(cfg, resume="auto")["step"] == s["step"]  # a finished run: nothing left to do
    write_file(tmp_path, "train.tsv", "text\tlabel\n" + "".join(f"text {i}!\t{'ab'[i % 2]}\n" for i in range(12)))
    with pytest.raises(ValueError, match=r"settings changed: train_data was '[0-9a-f]{16}', now '[0-9a-f]{16}'"):
        finetune(cfg, resume=True)


def test_output_is_checked_before_any_work(tiny_bert, tmp_path):
    data_path("glue", "SST-2")
    afile = write_file(tmp_path, "out", "")
    with pytest.raises(ValueError, match=r"out: output is a file, not a folder"):
        finetune(_tiny(tiny_bert, afile))
    with pytest.raises(ValueError, match=r"max_length 256 is more than the model's 128 positions"):
        finetune(_tiny(tiny_bert, tmp_path / "long"), max_length=256)
    assert not (tmp_path / "long").exists()
    with pytest.raises(ValueError, match=r"doc_stride: task sst2 has no windows over long contexts"):
        finetune(_tiny(tiny_bert, tmp_path / "stride"), doc_stride=16)


def test_regression_on_user_files_saves_one_output(tiny_bert, tmp_path):
    rows = "".join(f"{'good ' * (i % 4)}film\t{i % 4}.0\n" for i in range(16))
    train = write_file(tmp_path, "train.tsv", "text\tscore\n" + rows)
    s = finetune(model=str(tiny_bert), output=str(tmp_path / "run"), train_file=str(train), dev_file=str(train),
                 label_column="score", regression=True, epochs=2, batch_size=4, lr=1e-3, max_length=16,
                 device="cpu", progress=False)
    assert s["metric"] == "spearman" and s["settings"]["task"] == "custom" and len(s["epochs"]) == 2
    config = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["finetuning_task"] == "custom"
    scores = evaluate(tmp_path / "run", dev_file=train, label_column="score")
    assert {"pearson", "spearman", "loss"} <= set(scores)
    with pytest.raises(ValueError, match="fine-tuned on your own files: give the dev_file"):
        evaluate(tmp_path / "run")


def test_settings_load_from_a_file_and_overrides_and_are_checked(tmp_path):
    ft = write_file(tmp_path, "ft.yaml", "task: rte\nlr: 3e-5\nlabels: null\nresume: auto\n")
    cfg = load_settings(FinetuneConfig, ft, ["batch_size=16", "mixed_precision=bf16"])
    assert (cfg.task, cfg.lr, cfg.batch_size, cfg.mixed_precision, cfg.resume) == ("rte", 3e-5, 16, "bf16", "auto")
    assert cfg.epochs is None  # left to the task's recipe
    assert load_settings(FinetuneConfig, None, ["task=SST-2"]).task == "sst2"
    for override, message in [("batch_size=0", "batch_size 0 must be at least 1"),
                              ("lr=-1", "lr -1.0 must be positive"),
                              ("mixed_precision=fp8", "'fp8' is not one of no, bf16, fp16"),
                              ("device=gpu", "device 'gpu' is not a device"),
                              ("task=nope", "unknown task 'nope'"),
                              ("dev_split=1.5", "dev_split 1.5 must be between 0 and 1"),
                              ("resume=maybe", "'maybe' is not true or false, nor one of auto"),
                              ("epoch=3", "unknown setting 'epoch'")]:
        with pytest.raises(ValueError, match=message):
            load_settings(FinetuneConfig, None, [override])
    with pytest.raises(ValueError, match=r"train_file: for your own files, not with a built-in task \(sst2\)"):
        FinetuneConfig(task="sst2", train_file="x.tsv")
    with pytest.raises(ValueError, match="labels .* name a label twice"):
        FinetuneConfig(labels=["a", "a"])
