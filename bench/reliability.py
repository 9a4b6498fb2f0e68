"""Damaged files and bad input through the real `bertkit` command: every case must end in one line
that names the problem, a non-zero exit, and no traceback.

    .venv/bin/python bench/reliability.py [--markdown]

Each case copies a good input into a temporary folder, damages it the way real files get damaged
(truncated downloads, flipped bits, hand edits, the wrong file), runs one `bertkit` subcommand on
it in a subprocess and records the exit code and what it printed on stderr. The table is
BENCHMARKS.md's reliability section; tests/test_reliability.py runs the same cases in the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TF_FIXTURE = ROOT / "tests" / "fixtures" / "tf" / "uncased_L-2_H-16_A-2"


@dataclass
class Case:
    name: str  # the class of damage, as the table shows it
    build: Callable[[Path], list[str]]  # makes the damaged input under a folder; returns the bertkit arguments
    expect: str  # a fragment the message must contain (the file's or the field's name)


def bertkit(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "BERTKIT_DATA": str(ROOT.parent / "shared" / "data")}
    return subprocess.run([sys.executable, "-m", "bertkit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, input=stdin, timeout=600)


# ---------------------------------------------------------------- good inputs to damage


def tiny_model(folder: Path) -> Path:
    """A saved tiny BERT with a small vocabulary (and its SHA256SUMS manifest)."""
    import torch

    from bertkit.config import BertConfig
    from bertkit.heads import BertForSequenceClassification
    from bertkit.tokenizer import SPECIAL_TOKENS, Tokenizer

    words = list(SPECIAL_TOKENS) + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["the", "movie", "good", "bad"]
    tok = Tokenizer({w: i for i, w in enumerate(words)})
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig.preset("tiny", vocab_size=len(words), max_position_embeddings=64))
    return model.save_pretrained(folder / "model", tokenizer=tok)


def shards(folder: Path) -> Path:
    model = tiny_model(folder)
    corpus = folder / "corpus.txt"
    corpus.write_text("the movie was good .\nthe movie was bad .\n\nbad movie .\ngood movie .\n" * 20)
    result = bertkit("prepare", "--vocab", str(model), "--input", str(corpus), "--output", str(folder / "shards"),
                     "--max-seq-length", "32", "--workers", "1")
    if result.returncode:
        raise RuntimeError(f"prepare failed: {result.stderr}")
    return folder / "shards"


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


# ---------------------------------------------------------------- the cases


def _weights_truncated(d: Path) -> list[str]:
    m = tiny_model(d)
    (m / "SHA256SUMS").unlink()
    truncate(m / "model.safetensors")
    return ["embed", "--model", str(m), "--input", "-", "--output", str(d / "e.npy")]


def _weights_header(d: Path) -> list[str]:
    m = tiny_model(d)
    (m / "SHA256SUMS").unlink()
    data = bytearray((m / "model.safetensors").read_bytes())
    data[8:24] = b"\xff" * 16
    (m / "model.safetensors").write_bytes(bytes(data))
    return ["embed", "--model", str(m), "--input", "-", "--output", str(d / "e.npy")]


def _weights_flipped_bit(d: Path) -> list[str]:
    m = tiny_model(d)
    flip(m / "model.safetensors", (m / "model.safetensors").stat().st_size - 7)
    return ["embed", "--model", str(m), "--input", "-", "--output", str(d / "e.npy")]


def _pickled_bin(d: Path) -> list[str]:
    m = tiny_model(d)
    (m / "model.safetensors").unlink()
    (m / "SHA256SUMS").unlink()

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(d / "pwned"),))

    with open(m / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Exploit()}, f)
    return ["embed", "--model", str(m), "--input", "-", "--output", str(d / "e.npy")]


def _index_escapes(d: Path) -> list[str]:
    m = tiny_model(d)
    (m / "SHA256SUMS").unlink()
    (m / "model.safetensors").rename(d / "outside.safetensors")
    names = json.loads(subprocess.run([sys.executable, "-c", "import json, sys; from safetensors import safe_open; "
                                       "print(json.dumps(list(safe_open(sys.argv[1], 'pt').keys())))",
                                       str(d / "outside.safetensors")], capture_output=True, text=True).stdout)
    (m / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {name: "../outside.safetensors" for name in names}}))
    return ["embed", "--model", str(m), "--input", "-", "--output", str(d / "e.npy")]


def _onnx_damaged(d: Path) -> list[str]:
    m = tiny_model(d)
    (m / "model.safetensors").unlink()
    (m / "SHA256SUMS").unlink()
    (m / "model.onnx").write_bytes(b"\x08\x07not an onnx graph" * 10)
    return ["embed", "--model", str(m), "--backend", "onnx", "--input", "-", "--output", str(d / "e.npy")]


def _embed_state(d: Path) -> list[str]:
    m = tiny_model(d)
    first = bertkit("embed", "--model", str(m), "--input", "-", "--output", str(d / "e.npy"), stdin="a good movie\n")
    if first.returncode:
        raise RuntimeError(f"embed failed: {first.stderr}")
    (d / "e.npy.embed.json").write_text('{"rows": 1, "settings": ')
    return ["embed", "--model", str(m), "--input", "-", "--output", str(d / "e.npy")]


def _config_json(d: Path) -> list[str]:
    m = tiny_model(d)
    (m / "config.json").write_text('{"hidden_size": "384",')
    return ["embed", "--model", str(m), "--input", "-", "--output", str(d / "e.npy")]


def _config_type(d: Path) -> list[str]:
    m = tiny_model(d)
    config = json.loads((m / "config.json").read_text())
    config["num_hidden_layers"] = 2.5
    (m / "config.json").write_text(json.dumps(config))
    return ["embed", "--model", str(m), "--input", "-", "--output", str(d / "e.npy")]


def _vocab_duplicate(d: Path) -> list[str]:
    m = tiny_model(d)
    (m / "SHA256SUMS").unlink()
    lines = (m / "vocab.txt").read_text().splitlines()
    lines[-1] = lines[-2]
    (m / "vocab.txt").write_text("\n".join(lines) + "\n")
    return ["tokenize", "--vocab", str(m), "--input", "-"]


def _vocab_too_large(d: Path) -> list[str]:
    m = tiny_model(d)
    (m / "SHA256SUMS").unlink()
    with open(m / "vocab.txt", "a") as f:
        f.writelines(f"extra{i}\n" for i in range(50))
    return ["embed", "--model", str(m), "--input", "-", "--output", str(d / "e.npy")]


def _shard_truncated(d: Path) -> list[str]:
    s = shards(d)
    truncate(next(s.glob("shard-*")) / "ids.npy")
    return ["pretrain", f"data={s}", "model=tiny", f"train.out_dir={d / 'run'}", "train.max_steps=2",
            "eval_instances=0", "train.progress=false"]


def _shard_ids(d: Path) -> list[str]:
    import numpy as np

    s = shards(d)
    ids_file = next(s.glob("shard-*")) / "ids.npy"
    ids = np.load(ids_file)
    ids[3] = 60000
    np.save(ids_file, ids)
    return ["pretrain", f"data={s}", "model=tiny", f"train.out_dir={d / 'run'}", "train.max_steps=2",
            "eval_instances=0", "train.progress=false"]


def _meta_json(d: Path) -> list[str]:
    s = shards(d)
    (s / "meta.json").write_text("{\"format\": ")
    return ["pretrain", f"data={s}", "model=tiny", f"train.out_dir={d / 'run'}", "train.max_steps=2",
            "eval_instances=0", "train.progress=false"]


def _state_pickle(d: Path) -> list[str]:
    s = shards(d)
    run = d / "run"
    run.mkdir()

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(d / "pwned"),))

    import torch

    torch.save({"step": Exploit()}, run / "state.pt")
    return ["pretrain", f"data={s}", "model=tiny", f"train.out_dir={run}", "train.max_steps=2",
            "eval_instances=0", "train.progress=false", "resume=true"]


def _state_truncated(d: Path) -> list[str]:
    s = shards(d)
    run = d / "run"
    result = bertkit("pretrain", f"data={s}", "model=tiny", f"train.out_dir={run}", "train.max_steps=2",
                     "eval_instances=0", "train.progress=false")
    if result.returncode:
        raise RuntimeError(f"pretrain failed: {result.stderr}")
    truncate(run / "state.pt")
    return ["pretrain", f"data={s}", "model=tiny", f"train.out_dir={run}", "train.max_steps=4",
            "eval_instances=0", "train.progress=false", "resume=true"]


def _tf_magic(d: Path) -> list[str]:
    t = d / "tf"
    shutil.copytree(TF_FIXTURE, t)
    index = t / "bert_model.ckpt.index"
    data = bytearray(index.read_bytes())
    data[-1] ^= 0xFF
    index.write_bytes(bytes(data))
    return ["convert", str(t), "--output", str(d / "hf")]


def _tf_crc(d: Path) -> list[str]:
    t = d / "tf"
    shutil.copytree(TF_FIXTURE, t)
    flip(t / "bert_model.ckpt.data-00000-of-00001", 100)
    return ["convert", str(t), "--output", str(d / "hf")]


def _tf_truncated(d: Path) -> list[str]:
    t = d / "tf"
    shutil.copytree(TF_FIXTURE, t)
    truncate(t / "bert_model.ckpt.data-00000-of-00001", 0.7)
    return ["convert", str(t), "--output", str(d / "hf")]


def _utf8(command: str) -> Callable[[Path], list[str]]:
    def build(d: Path) -> list[str]:
        m = tiny_model(d)
        bad = d / "texts.tsv"
        bad.write_bytes(b"sentence\tlabel\nthe movie\t1\nbad \xff movie\t0\n")
        if command == "finetune":
            return ["finetune", "--model", str(m), "--train-file", str(bad), "--dev-file", str(bad),
                    "--text-column", "sentence", "--output", str(d / "ft"), "--epochs", "1"]
        if command == "predict":
            return ["predict", "--model", str(m), "--input", str(bad)]
        if command == "embed":
            return ["embed", "--model", str(m), "--input", str(bad), "--output", str(d / "e.npy")]
        return ["tokenize", "--vocab", str(m), "--input", str(bad)]
    return build


def _empty_label(d: Path) -> list[str]:
    m = tiny_model(d)
    f = d / "train.tsv"
    f.write_text("sentence\tlabel\nthe movie\t1\nbad movie\t\ngood movie\t0\n")
    return ["finetune", "--model", str(m), "--train-file", str(f), "--dev-file", str(f),
            "--text-column", "sentence", "--output", str(d / "ft"), "--epochs", "1"]


CASES = [
    Case("weights: truncated model.safetensors", _weights_truncated, "model.safetensors"),
    Case("weights: damaged safetensors header", _weights_header, "model.safetensors"),
    Case("weights: one flipped bit (SHA256SUMS present)", _weights_flipped_bit, "sha256"),
    Case("weights: pytorch_model.bin with pickled code", _pickled_bin, "pytorch_model.bin"),
    Case("weights index: a shard path outside the folder", _index_escapes, "model.safetensors.index.json"),
    Case("model.onnx: not an ONNX graph", _onnx_damaged, "model.onnx"),
    Case("config.json: invalid JSON", _config_json, "config.json"),
    Case("config.json: a field of the wrong type", _config_type, "num_hidden_layers"),
    Case("vocab.txt: a duplicate token", _vocab_duplicate, "vocab.txt"),
    Case("vocab.txt: more tokens than the model's embeddings", _vocab_too_large, "vocab.txt"),
    Case("shards: truncated ids.npy", _shard_truncated, "ids.npy"),
    Case("shards: token id above the vocabulary", _shard_ids, "shard-"),
    Case("shards: damaged meta.json", _meta_json, "meta.json"),
    Case("embed state: damaged OUT.embed.json", _embed_state, "e.npy.embed.json"),
    Case("state.pt: pickled code", _state_pickle, "state.pt"),
    Case("state.pt: truncated", _state_truncated, "state.pt"),
    Case("TensorFlow checkpoint: bad magic", _tf_magic, "bert_model.ckpt.index"),
    Case("TensorFlow checkpoint: flipped bit in the data (CRC)", _tf_crc, "bert_model.ckpt.data"),
    Case("TensorFlow checkpoint: truncated data file", _tf_truncated, "bert_model.ckpt.data"),
    Case("invalid UTF-8: finetune train file", _utf8("finetune"), "texts.tsv:3"),
    Case("invalid UTF-8: predict input", _utf8("predict"), "texts.tsv:3"),
    Case("invalid UTF-8: embed input", _utf8("embed"), "texts.tsv:3"),
    Case("invalid UTF-8: tokenize input", _utf8("tokenize"), "texts.tsv:3"),
    Case("user data: an empty label cell", _empty_label, "train.tsv:3"),
]


def run_case(case: Case) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        args = case.build(d)
        result = bertkit(*args, stdin="a good movie\n")
        err = result.stderr.strip()
        lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # tqdm bars aside
        message = lines[-1] if lines else ""
        return {
            "case": case.name, "command": f"bertkit {args[0]}", "exit": result.returncode, "message": message,
            "traceback": "Traceback" in err, "pwned": (d / "pwned").exists(),
            "ok": result.returncode != 0 and "Traceback" not in err and case.expect in message
            and not (d / "pwned").exists(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the table for BENCHMARKS.md")
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    args = parser.parse_args()
    rows = [run_case(c) for c in CASES if args.k in c.name]
    if args.markdown:
        print("| damaged input | command | exit | message (stderr, one line) |")
        print("|---|---|---:|---|")
        for r in rows:
            msg = r["message"].replace("|", "\\|")
            if len(msg) > 160:
                msg = msg[:157] + "..."
            print(f"| {r['case']} | `{r['command']}` | {r['exit']} | {'OK ' if r['ok'] else 'FAIL '}{msg} |")
    else:
        for r in rows:
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['case']:55} exit {r['exit']:3}  {r['message'][:150]}")
    ok = sum(r["ok"] for r in rows)
    print(f"\n{ok}/{len(rows)} cases: one line, non-zero exit, no traceback, the file named; "
          f"{sum(r['traceback'] for r in rows)} tracebacks; {sum(r['pwned'] for r in rows)} pickles executed")


if __name__ == "__main__":
    main()
