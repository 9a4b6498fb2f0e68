"""The `bertkit` command through its real entry point: bad input is one line and exit code 2."""

from __future__ import annotations

import json

import pytest

from bertkit.cli import main
from conftest import DATA_DIR, data_path, write_file


def _one_line_error(capsys, argv: list[str], command: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"bertkit {command}: error: "), err
    return err


# --- finetune ---

@pytest.mark.parametrize("args,message", [
    (["--batch-size", "0"], "argument --batch-size: '0' must be at least 1"),
    (["--max-length", "0"], "argument --max-length: '0' must be at least 1"),
    (["--max-length", "10000"], "argument --max-length: '10000' must be between 8 and 512 tokens"),
    (["--task", "nope"], "argument --task: unknown task 'nope'; choose from sst2"),
    (["--lr", "fast"], "argument --lr: 'fast' is not a number"),
    (["--lr", "0"], "argument --lr: '0' must be a positive number"),
    (["--epochs", "1.5"], "argument --epochs: '1.5' is not a whole number"),
    (["--warmup", "-1"], "argument --warmup: '-1' must be 0 or more"),
    (["--device", "gpu"], "argument --device: 'gpu' is not a device"),
    (["--train-file", "no/such.tsv"], "argument --train-file: no/such.tsv: no such file"),
    (["--data-dir", "no/such"], "argument --data-dir: no/such: no such folder"),
    (["--dev-split", "1"], "argument --dev-split: '1' must be between 0 and 1 (both excluded)"),
    (["--labels", "pos"], "argument --labels: 'pos': give at least two comma-separated label names"),
    (["--labels", "a,b,a"], "argument --labels: 'a,b,a' names a label twice"),
    (["--bf16", "--fp16"], "argument --fp16: not allowed with argument --bf16"),
    (["--nope"], "unrecognized arguments: --nope"),
])
def test_finetune_rejects_bad_arguments_when_parsing(capsys, args, message):
    err = _one_line_error(capsys, ["finetune", *args], "finetune")
    assert message in err


def test_finetune_rejects_bad_settings_before_any_work(capsys, tiny_bert, tmp_path):
    data_path("glue", "SST-2")
    base = ["finetune", "--model", str(tiny_bert), "--data-dir", str(DATA_DIR), "--no-progress"]
    out = write_file(tmp_path, "a-file", "")
    cases = [
        (["--task", "sst2", "--output", str(out)], "a-file: output is a file, not a folder"),
        (["--task", "sst2", "--out-dir", str(tmp_path / "o"), "--max-length", "256"],
         "max_length 256 is more than the model's 128 positions"),
        (["--task", "sst2", "--output", str(tmp_path / "o"), "--resume"], "o: no fine-tuning state to resume"),
        (["--task", "sst2", "--train-file", str(out)], "train_file: for your own files, not with a built-in task"),
        (["--output", str(tmp_path / "o")], "give a built-in task (--task sst2, ...) or your own --train-file"),
        (["--task", "sst2", "batch_size=0"], "batch_size 0 must be at least 1"),
        (["--task", "sst2", "epoch=2"], "unknown setting 'epoch'"),
        (["--task", "sst2", "--fp16", "--device", "cpu"], "mixed_precision fp16 needs a CUDA device"),
    ]
    for args, message in cases:
        assert message in _one_line_error(capsys, [*base, *args], "finetune")
    assert not (tmp_path / "o").exists()


def test_finetune_names_file_and_line_of_bad_user_data(capsys, tiny_bert, tmp_path):
    base = ["finetune", "--model", str(tiny_bert), "--output", str(tmp_path / "o"), "--no-progress"]
    utf8 = tmp_path / "bad.tsv"
    utf8.write_bytes(b"text\tlabel\ngood\tpos\ncaf\xe9\tneg\n")
    err = _one_line_error(capsys, [*base, "--train-file", str(utf8), "--dev-split", "0.5"], "finetune")
    assert f"{utf8}:3: not valid UTF-8 (byte 0xe9" in err
    empty = write_file(tmp_path, "empty.csv", "text,label\ngood,pos\nmeh,\nbad,neg\n")
    err = _one_line_error(capsys, [*base, "--train-file", str(empty), "--dev-split", "0.5"], "finetune")
    assert f"{empty}:3: empty label" in err
    good = write_file(tmp_path, "good.csv", "text,label\ngood,pos\nbad,neg\n")
    err = _one_line_error(capsys, [*base, "--train-file", str(good)], "finetune")
    assert "your own files need a --dev-file (or --dev-split) to pick the best epoch" in err


def test_finetune_runs_from_a_config_file_and_flags_win(capsys, tiny_bert, tmp_path):
    train = write_file(tmp_path, "train.tsv", "text\tlabel\n" + "".join(f"text {i}\t{'ab'[i % 2]}\n" for i in range(8)))
    ft = write_file(tmp_path, "ft.yaml", f"model: {tiny_bert}\ntrain_file: {train}\ndev_split: 0.25\nepochs: 3\n"
                    "batch_size: 2\nmax_length: 16\ndevice: cpu\nprogress: false\n")
    assert main(["finetune", "--config", str(ft), "--output", str(tmp_path / "run"), "epochs=2", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("epoch 1/1 ") == 1 and "epoch 1/1" in out.splitlines()[0]  # the engine's line, once
    assert out.splitlines()[-1] == f"best accuracy {_best(tmp_path / 'run')} at step 3 -> {tmp_path / 'run' / 'best'}"
    assert json.loads((tmp_path / "run" / "finetune.json").read_text())["settings"]["epochs"] == 1


def test_finetune_at_lr_1e6_exits_1_within_a_few_steps_and_exports_nothing_nonfinite(capsys, tiny_bert, tmp_path):
    from safetensors.torch import load_file

    rows = "".join(f"text {i}\t{'ab'[i % 2]}\n" for i in range(64))
    train = write_file(tmp_path, "train.tsv", "text\tlabel\n" + rows)
    run = tmp_path / "run"
    assert main(["finetune", "--model", str(tiny_bert), "--train-file", str(train), "--dev-split", "0.25",
                 "--lr", "1e6", "--warmup", "0", "--batch-size", "4", "--epochs", "3", "--max-length", "16",
                 "--output", str(run), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged at step" in err[0], err
    strict = {"parse_constant": lambda c: pytest.fail(f"metrics.jsonl holds {c}, not JSON")}
    steps = [json.loads(line, **strict)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) <= 10
    for folder in ("best", "last"):
        if (run / folder / "model.safetensors").exists():
            assert all(t.isfinite().all() for t in load_file(run / folder / "model.safetensors").values())


def _best(run) -> str:
    return f"{json.loads((run / 'finetune.json').read_text())['best']:.4f}"


# --- evaluate ---

@pytest.mark.parametrize("args,message", [
    (["--regression"], "unrecognized arguments: --regression"),
    (["--labels", "a,b"], "unrecognized arguments: --labels a,b"),
    (["--train-file", "x.tsv"], "unrecognized arguments: --train-file x.tsv"),
    (["--batch-size", "0"], "argument --batch-size: '0' must be at least 1"),
    (["--split", "nope"], "argument --split: invalid choice: 'nope'"),
    (["--max-examples", "-3"], "argument --max-examples: '-3' must be at least 1"),
    (["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
])
def test_evaluate_rejects_bad_arguments_when_parsing(capsys, args, message):
    err = _one_line_error(capsys, ["evaluate", "--model", "m", *args], "evaluate")
    assert message in err


def test_evaluate_needs_a_model_and_a_fine_tuned_one(capsys, minilm, tmp_path):
    assert "the following arguments are required: --model" in _one_line_error(capsys, ["evaluate"], "evaluate")
    err = _one_line_error(capsys, ["evaluate", "--model", str(tmp_path)], "evaluate")
    assert "no config.json here (nor in best/ or last/)" in err
    err = _one_line_error(capsys, ["evaluate", "--model", str(minilm), "--task", "sst2"], "evaluate")
    assert "architecture 'BertModel' is not a fine-tuned task head" in err


def test_evaluate_prints_or_writes_the_scores(capsys, sst2_run, tmp_path):
    out, summary = sst2_run
    assert main(["evaluate", "--model", str(out), "--data-dir", str(DATA_DIR), "--max-examples", "200"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["accuracy"] == pytest.approx(summary["best"])
    mine = write_file(tmp_path, "mine.tsv",
                      "text\tlabel\na gorgeous , witty movie .\tpositive\nboilerplate .\tnegative\n")
    assert main(["evaluate", "--model", str(out), "--dev-file", str(mine), "--output", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["accuracy"] == 1.0
    bad = write_file(tmp_path, "bad.tsv", "text\tlabel\nfine\tneutral\n")
    err = _one_line_error(capsys, ["evaluate", "--model", str(out), "--dev-file", str(bad)], "evaluate")
    assert f"{bad}:2: label 'neutral' is not one of ['negative', 'positive']" in err
    err = _one_line_error(capsys, ["evaluate", "--model", str(out), "--text-column", "t"], "evaluate")
    assert "apply to a dev_file only" in err
    err = _one_line_error(capsys, ["evaluate", "--model", str(out), "--task", "rte"], "evaluate")
    assert "task rte wants classification ['entailment', 'not_entailment']" in err


# --- predict ---

@pytest.mark.parametrize("args,message", [
    (["--batch-size", "0"], "argument --batch-size: '0' must be at least 1"),
    (["--max-length", "7"], "argument --max-length: '7' must be between 8 and 512 tokens"),
    (["--text", "a", "--input", "f.txt"], "argument --input: not allowed with argument --text"),
    (["--device", "tpu"], "argument --device: 'tpu' is not a device"),
])
def test_predict_rejects_bad_arguments_when_parsing(capsys, args, message):
    err = _one_line_error(capsys, ["predict", "--model", "m", *args], "predict")
    assert message in err


def test_predict_reads_files_line_by_line_and_names_bad_lines(capsys, sst2_run, tmp_path):
    out, _ = sst2_run
    assert main(["predict", "--model", str(out), "--text", "a gorgeous , witty , seductive movie ."]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["label"] == "positive"
    texts = write_file(tmp_path, "in.txt", "a gorgeous , witty , seductive movie .\n\nboilerplate .\tbad .\n")
    assert main(["predict", "--model", str(out), "--input", str(texts), "--output", str(tmp_path / "o.jsonl")]) == 0
    assert "1 blank line(s) skipped" in capsys.readouterr().err
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == ["a gorgeous , witty , seductive movie .", ["boilerplate .", "bad ."]]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\ncaf\xe9\n")
    err = _one_line_error(capsys, ["predict", "--model", str(out), "--input", str(bad)], "predict")
    assert f"{bad}:2: not valid UTF-8" in err
    err = _one_line_error(capsys, ["predict", "--model", str(out), "--input", str(tmp_path / "none.txt")], "predict")
    assert "none.txt: no such file" in err
    empty = write_file(tmp_path, "empty.txt", "\n\n")
    assert "no input text" in _one_line_error(capsys, ["predict", "--model", str(out), "--input", str(empty)],
                                              "predict")


def test_predict_qa_lines_need_a_tab(capsys, tiny_bert, tmp_path):
    from bertkit.heads import BertForQuestionAnswering

    model = BertForQuestionAnswering.from_pretrained(tiny_bert)
    model.save_pretrained(tmp_path / "qa")
    lines = write_file(tmp_path, "q.txt", "Where?\tIn Paris.\nWho?\n")
    err = _one_line_error(capsys, ["predict", "--model", str(tmp_path / "qa"), "--input", str(lines)], "predict")
    assert f"{lines}:2: question answering needs 'question<TAB>context'" in err


# --- the other subcommands: parse-time checks, then one-line errors from the work itself ---

@pytest.mark.parametrize("argv,message", [
    (["tokenize", "--max-length", "0"], "argument --max-length: '0' must be at least 1"),
    (["tokenize", "--workers", "0"], "argument --workers: '0' must be at least 1"),
    (["vocab", "x.txt", "--output", "o", "--vocab-size", "-5"], "argument --vocab-size: '-5' must be at least 1"),
    (["vocab", "x.txt", "--output", "o", "--criterion", "best"], "argument --criterion: invalid choice: 'best'"),
    (["vocab", "x.txt", "--output", "o", "--unused", "-1"], "argument --unused: '-1' must be 0 or more"),
    (["prepare", "--model", "m", "--input", "a", "--output", "o", "--short-seq-prob", "2"],
     "argument --short-seq-prob: '2' must be between 0 and 1"),
    (["prepare", "--model", "m", "--input", "a", "--output", "o", "--shard", "3/2"],
     "argument --shard: '3/2' is not i/n"),
    (["prepare", "--model", "m", "--input", "a", "--output", "o", "--max-length", "4"],
     "'4' must be between 8 and 512 tokens"),
    (["prepare", "--model", "m", "--input", "a", "--output", "o", "--dupe-factor", "0"],
     "argument --dupe-factor: '0' must be at least 1"),
    (["pretrain", "train.max_steps=2.5"], "setting 'train.max_steps': 2.5 is not a whole number"),
    (["pretrain", "resume=maybe"], "setting 'resume': 'maybe' is not true or false"),
    (["pretrain", "nope=1"], "unknown setting 'nope'; valid keys: data, model,"),
    (["pretrain", "--device", "gpu"], "argument --device: 'gpu' is not a device"),
    (["pretrain", "--config", "no/such.yaml"], "no/such.yaml: no such config file"),
    (["embed", "--batch-size", "0"], "argument --batch-size: '0' must be at least 1"),
    (["embed", "--pooling", "max"], "argument --pooling: invalid choice: 'max'"),
    (["embed", "--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
    (["embed", "--input", "no/such.txt", "--output", "v.npy"], "no/such.txt: no such file"),
    (["serve", "--port", "70000"], "argument --port: '70000' is not a TCP port"),
    (["serve", "--max-batch-tokens", "0"], "argument --max-batch-tokens: '0' must be at least 1"),
    (["serve"], "no model: give MODEL"),
    (["serve", "no/such/model"], "model 'no/such/model' not found: no folder no/such/model"),
    (["convert", "no/such", "--output", "o"], "no/such.index: no such TensorFlow checkpoint index"),
    (["convert"], "the following arguments are required: source, --output"),
    (["export", "--format", "tflite"], "argument --format: invalid choice: 'tflite'"),
    (["export", "x", "--output", "o", "--opset", "9"], "opset 9: bertkit exports opsets 17 to 20"),
    (["demo", "--steps", "data,nope"], "unknown demo step(s) nope"),
    (["demo", "--epochs", "0"], "argument --epochs: '0' must be at least 1"),
    (["demo", "--lr", "-1"], "argument --lr: '-1' must be a positive number"),
])
def test_every_subcommand_rejects_bad_arguments_in_one_line(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)  # relative outputs land in the test's own folder
    assert message in _one_line_error(capsys, argv, argv[0])
    assert not (tmp_path / "o").exists() and not (tmp_path / "v.npy").exists()


def test_tokenize_missing_input_is_one_line_before_any_work(capsys, tmp_path):
    err = _one_line_error(capsys, ["tokenize", "--input", str(tmp_path / "none.txt"), "--no-progress"], "tokenize")
    assert "none.txt: no such file" in err


def test_unknown_command_and_version(capsys):
    assert main(["frobnicate"]) == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err
    assert main(["--version"]) == 0
    from bertkit import __version__

    assert capsys.readouterr().out.strip() == f"bertkit {__version__}"
