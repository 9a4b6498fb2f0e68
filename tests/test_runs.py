"""The run folder: atomic state, strict records, repair after a crash, and a fault-injection suite
that kills pre-training and fine-tuning at every boundary of the save sequence and resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertkit.batching import Batches
from bertkit.data import prepare
from bertkit.runs import METRICS_FILE, STATE_FILE, RunFolder
from bertkit.train import TrainConfig, train
from conftest import features, imdb_sample, make, small_vocab

pytestmark = pytest.mark.usefixtures("one_thread")
HARNESS = Path(__file__).parent / "fixtures" / "fault_harness.py"


def a_state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((3,), float(step))}, "optimizer": {}, "rng": [], "run": {}}


def test_state_file_is_atomic_and_loads_weights_only(tmp_path, monkeypatch):
    run = RunFolder(tmp_path)
    run.save(a_state(1), make())

    def crash(obj, f, *a, **k):
        Path(f).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        run.save(a_state(2), make())
    monkeypatch.undo()
    s = run.load_state()
    assert s["step"] == 1 and torch.equal(s["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", STATE_FILE]  # no temp file left behind
    assert run.export_step("last") == 1 and run.export_step("best") is None


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_damaged_or_malicious_state_is_a_one_line_error_naming_the_file(tmp_path):
    good = tmp_path / "good"
    run = RunFolder(good)
    run.save(a_state(3), make())
    data = run.state_file.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "empty": b"", "text": b"not a state\n"}
    for name, content in cases.items():
        RunFolder(tmp_path / name).state_file.write_bytes(content)
    torch.save({"step": 1, "payload": Evil(tmp_path / "pwned")}, RunFolder(tmp_path / "evil").state_file)
    torch.save({"step": 1, "model": {}}, RunFolder(tmp_path / "foreign").state_file)
    expected = {"truncated": "damaged or not a training state", "empty": "damaged", "text": "damaged",
                "evil": "refused, it holds pickled objects", "foreign": r"not a bertkit training state \(no optimizer"}
    for name, message in expected.items():
        state_file = tmp_path / name / STATE_FILE
        with pytest.raises(ValueError, match=message) as e:
            RunFolder(tmp_path / name).load_state()
        assert str(e.value).startswith(f"{state_file}: ") and "\n" not in str(e.value)
        with pytest.raises(ValueError, match=message):  # and so does training that resumes from it
            train(make(), Batches(features(8), 4), TrainConfig(out_dir=str(tmp_path / name), progress=False),
                  resume=True)
    assert not (tmp_path / "pwned").exists()  # the pickled command never ran


def test_records_drop_later_steps_and_a_line_cut_short(tmp_path):
    run = RunFolder(tmp_path)
    for step in (1, 2, 3):
        run.append({"step": step, "loss": float("nan") if step == 2 else 0.5})
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"step": 4, "lo')  # a kill in the middle of a write
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert lines[1] == '{"step": 2, "loss": null}'  # strict JSON: NaN is null
    assert run.records(upto=2) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": None}]
    assert (tmp_path / METRICS_FILE).read_text().splitlines() == lines[:2]
    (tmp_path / METRICS_FILE).write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(ValueError, match=rf"{METRICS_FILE}:2: not a JSON record"):
        run.records(upto=3)


def test_open_puts_back_a_half_renamed_export_and_removes_temporary_files(tmp_path):
    run = RunFolder(tmp_path)
    run.save(a_state(5), make())
    os.replace(tmp_path / "last", tmp_path / ".last.old-999")  # killed between the two renames
    (tmp_path / ".state.pt.tmp-999").write_bytes(b"x" * 100)  # killed while writing the state
    (tmp_path / ".best.tmp-999").mkdir()
    assert run.open(resume=True)["step"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", STATE_FILE]
    assert run.export_step("last") == 5


def test_a_fresh_run_replaces_what_was_there_and_a_file_is_no_run_folder(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.save(a_state(5), make(), best={"metric": "loss", "value": 0.1})
    run.append({"step": 5, "loss": 1.0})
    assert run.export_step("best") == 5
    assert run.open(resume=False) is None
    assert list((tmp_path / "run").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="file: is a file"):
        RunFolder(tmp_path / "file")
    with pytest.raises(FileNotFoundError, match="no state.pt to resume from"):
        RunFolder(tmp_path / "empty").open(resume=True)
    assert RunFolder(tmp_path / "empty").open(resume="auto") is None


# ---------------------------------------------------------------------------- fault injection


def strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("elapsed", "tokens_per_s")}  # wall-clock values


def records(folder: Path) -> list[dict]:
    """metrics.jsonl read with a strict parser (NaN, Infinity refused)."""
    refuse = lambda c: (_ for _ in ()).throw(ValueError(f"non-strict JSON constant {c}"))
    return [strip(json.loads(x, parse_constant=refuse)) for x in (folder / METRICS_FILE).read_text().splitlines()]


def temporary_files(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob(".*")]


def kill_everywhere(mode: str, work: Path, *args: str) -> tuple[dict, Path]:
    """Run the harness (see its docstring): the kill points, and the uninterrupted run's folder."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, str(HARNESS), mode, str(work), *args], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((work / "summary.json").read_text()), work / "reference"


def check_every_kill(mode: str, summary: dict, ref: Path, work: Path) -> None:
    calls, kills = summary["calls"], summary["kills"]
    assert len(kills) == len(calls) > 25
    assert {c.split()[0] for c in calls} == {"torch.save", "os.replace", "shutil.rmtree", "export"}
    expected = records(ref)
    final = max(r["step"] for r in expected)
    best_step = max(r["step"] for r in expected if r.get("best"))
    exports = {name: (json.loads((ref / name / "export.json").read_text()), load_file(ref / name / "model.safetensors"))
               for name in ("last", "best")}
    assert exports["last"][0]["step"] == final and exports["best"][0]["step"] == best_step
    ok = 0
    for kill in kills:
        out, where = work / f"k{kill['k']}", f"killed before call {kill['k']}/{len(calls)}, {kill['before']}"
        assert kill["killed"] and kill["resumed"], where
        assert records(out) == expected, where  # every loss, lr, gradient norm and metric: equal, not close
        for name, (info, weights) in exports.items():
            assert json.loads((out / name / "export.json").read_text()) == info, (where, name)
            got = load_file(out / name / "model.safetensors")
            assert got.keys() == weights.keys() and all(torch.equal(got[k], weights[k]) for k in weights), where
        assert temporary_files(out) == [], where
        ok += 1
    print(f"fault injection, {mode}: {ok}/{len(calls)} kill points resumed exactly")


@pytest.mark.slow
def test_finetuning_killed_at_every_save_boundary_resumes_exactly(tmp_path):
    summary, ref = kill_everywhere("finetune", tmp_path)
    check_every_kill("fine-tuning", summary, ref, tmp_path)


@pytest.mark.slow
def test_pretraining_killed_at_every_save_boundary_resumes_exactly(tmp_path):
    corpus = imdb_sample(tmp_path / "imdb.jsonl", 40)
    prepare(small_vocab(tmp_path / "vocab"), [corpus], tmp_path / "shards", max_seq_length=32, workers=1,
            progress=False)
    work = tmp_path / "work"
    work.mkdir()
    summary, ref = kill_everywhere("pretrain", work, str(tmp_path / "shards"))
    check_every_kill("pre-training", summary, ref, work)
    for name in ("last", "best"):  # whole models: weights, config and the vocabulary
        assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= {
            p.name for p in (ref / name).iterdir()}
