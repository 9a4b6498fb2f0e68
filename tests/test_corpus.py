"""corpus.py: streaming embed in input order, byte-identical resume after SIGKILL, refusals that
name the difference, shards that interleave back to the whole, the CLI, and Ray on a local instance."""

from __future__ import annotations

import inspect
import json
import os
import random
import signal
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit.cli import main
from bertkit.config import BertConfig
from bertkit.corpus import embed_corpus, read_rows
from bertkit.data.corpus import split_sentences
from bertkit.heads import BertModel
from bertkit.infer import Embedder
from bertkit.tokenizer import Tokenizer
from conftest import ROOT, data_path

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    """Real IMDB sentences of mixed lengths (1 to 100+ words), in their order in the reviews."""
    out = []
    with open(data_path("imdb", "test.jsonl"), encoding="utf-8") as f:
        for line in f:
            out += split_sentences(json.loads(line)["text"])
            if len(out) >= 3000:
                return out[:3000]
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm) -> Path:
    """A small randomly initialised BERT with MiniLM's vocabulary, saved as a checkpoint folder:
    the pipeline is under test, not the model."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny")
    BertModel(BertConfig.preset("tiny", max_position_embeddings=128)).save_pretrained(
        folder, tokenizer=Tokenizer.from_pretrained(minilm))
    return folder


@pytest.fixture(scope="module")
def minilm_embedder(minilm) -> Embedder:
    return Embedder.from_pretrained(minilm)


def write_lines(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def npy_bytes(array: np.ndarray) -> bytes:
    f = BytesIO()
    np.save(f, array)
    return f.getvalue()


def test_streamed_npy_is_np_save_of_the_windows_in_input_order(minilm_embedder, sentences, tmp_path):
    texts = sentences[:70] + [""] + sentences[70:90]  # a blank line is a row too (an empty text)
    src = write_lines(tmp_path / "t.txt", texts)
    s = embed_corpus(minilm_embedder, src, tmp_path / "v.npy", window=16, batch_size=4, progress=False)
    assert (s["rows"], s["blank"], s["dim"], s["resumed_at"]) == (91, 1, 384, 0)
    # The same windows through the in-memory path: the file is exactly np.save of their rows.
    by_window = np.concatenate([minilm_embedder(texts[i:i + 16], batch_size=4) for i in range(0, 91, 16)])
    assert (tmp_path / "v.npy").read_bytes() == npy_bytes(by_window)
    # And within float noise of embedding everything at once (other batches, other padding).
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), minilm_embedder(texts, batch_size=8), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt", "v.npy", "v.npy.embed.json"]
    state = json.loads((tmp_path / "v.npy.embed.json").read_text())
    assert state["complete"] and state["rows"] == 91 and state["settings"]["window"] == 16


def test_jsonl_several_inputs_globs_and_stdout(tiny, sentences, tmp_path, capsys):
    write_lines(tmp_path / "a.txt", sentences[:5])
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n\n"  # blank lines skipped
                                              for i, t in enumerate(sentences[5:9])), encoding="utf-8")
    assert list(read_rows([str(tmp_path / "b.jsonl")]))[1] == (str(tmp_path / "b.jsonl"), 3, sentences[6])
    with pytest.raises(ValueError, match=r"b\.jsonl:1: no string field 'body'"):
        list(read_rows([str(tmp_path / "b.jsonl")], text_field="body"))
    embedder = Embedder.from_pretrained(tiny)
    out = tmp_path / "o.jsonl"
    s = embed_corpus(embedder, [str(tmp_path / "a.txt"), str(tmp_path / "*.jsonl")], out, window=3, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert s["rows"] == len(rows) == 9
    assert [(Path(r["file"]).name, r["line"]) for r in rows] == \
        [("a.txt", n) for n in range(1, 6)] + [("b.jsonl", n) for n in (1, 3, 5, 7)]
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), embedder(sentences[:9]), atol=1e-5)
    # '-': the same JSON lines on stdout as they come, nothing on disk.
    capsys.readouterr()
    embed_corpus(embedder, [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")], "-", window=3, progress=False)
    assert capsys.readouterr().out == out.read_text()
    with pytest.raises(FileNotFoundError, match=r"\*\.csv: no file matches"):
        embed_corpus(embedder, str(tmp_path / "*.csv"), tmp_path / "x.npy", progress=False)


def test_windows_bound_what_the_model_is_given(tiny, sentences, tmp_path):
    seen = []

    class Recording(Embedder):  # the real Embedder, recording how many texts each window brings
        def prepare(self, texts):
            seen.append(len(texts))
            return super().prepare(texts)

    base = Embedder.from_pretrained(tiny)
    embedder = Recording(base.model, base.tokenizer)
    src = write_lines(tmp_path / "t.txt", sentences[:1000])
    embed_corpus(embedder, src, tmp_path / "v.npy", window=128, progress=False)
    assert max(seen) == 128 and sum(seen) == 1000 and len(seen) == 8


def run_cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "bertkit.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_sigkill_at_random_points_then_resume_is_byte_identical(tiny, sentences, tmp_path):
    # bench/corpus.py runs many more trials; here two, on 1,200 rows in 38 windows of 32.
    src = write_lines(tmp_path / "t.txt", sentences[:1200])
    whole = tmp_path / "whole.npy"
    embed_corpus(tiny, src, whole, window=32, progress=False)  # one thread, as in the subprocesses
    args = ["embed", "--model", str(tiny), "--input", str(src), "--window", "32", "--no-progress"]
    rng = random.Random(0)
    for trial in range(2):
        out = tmp_path / f"killed{trial}.npy"
        partial = Path(f"{out}.partial")
        # Killed at a random moment after the partial file passes a random size: anywhere in a
        # chunk's life (the model running, its bytes half-written, the state not yet saved).
        kill_at = rng.randrange(128, whole.stat().st_size * 3 // 4)
        p = run_cli([*args, "--output", str(out)])
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline:
            if partial.is_file() and partial.stat().st_size >= kill_at:
                time.sleep(rng.uniform(0, 0.3))
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        assert p.wait(timeout=60) == -signal.SIGKILL, f"trial {trial}: finished before the kill"
        assert not out.exists()
        resumed = run_cli([*args, "--output", str(out)])
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
        assert out.read_bytes() == whole.read_bytes()
        state = json.loads(Path(f"{out}.embed.json").read_text())
        assert state["complete"] and state["rows"] == 1200 and not partial.exists()


def test_sigterm_stops_with_143_and_the_rerun_continues(tiny, sentences, tmp_path):
    src = write_lines(tmp_path / "t.txt", sentences[:1200])
    out = tmp_path / "v.jsonl"
    args = ["embed", "--model", str(tiny), "--input", str(src), "--window", "32", "--output", str(out)]
    p = run_cli(args)
    deadline = time.monotonic() + 120
    while not Path(f"{out}.embed.json").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and "rerun the same command to continue" in err and "Traceback" not in err
    done = json.loads(Path(f"{out}.embed.json").read_text())["rows"]
    assert 0 < done < 1200
    p = run_cli(args)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0 and f"resumed at row {done:,}" in err
    assert [json.loads(line)["line"] for line in out.read_text().splitlines()] == list(range(1, 1201))


def test_resume_refusals_name_the_difference(tiny, sentences, tmp_path):
    src = write_lines(tmp_path / "t.txt", sentences[:300])
    out = tmp_path / "v.npy"
    embedder = Embedder.from_pretrained(tiny)
    first = embed_corpus(tiny, src, out, window=50, progress=False)
    mtime = out.stat().st_mtime_ns
    # Complete, same settings and inputs: nothing is recomputed.
    again = embed_corpus(tiny, src, out, window=50, progress=False)
    assert again["already_complete"] and again["rows"] == 300 and out.stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match=r"other settings.*pooling: 'mean' then, 'cls' now.*--overwrite"):
        embed_corpus(tiny, src, out, window=50, pooling="cls", progress=False)
    redone = embed_corpus(tiny, src, out, window=50, pooling="cls", overwrite=True, progress=False)
    assert not redone["already_complete"] and out.stat().st_mtime_ns != mtime
    np.testing.assert_allclose(np.load(out), Embedder(embedder.model, embedder.tokenizer, pooling="cls")(
        sentences[:300]), atol=1e-5)
    assert first["rows"] == 300

    # An unfinished run: interrupted after 3 windows of 50. Other settings are refused, the inputs checked.
    embed_corpus(tiny, src, out, window=50, overwrite=True, progress=False)
    whole = out.read_bytes()

    def interrupted_run(**options) -> None:
        stopper = Stopping(embedder.model, embedder.tokenizer)
        with pytest.raises(KeyboardInterrupt):
            embed_corpus(stopper, src, out, window=50, overwrite=True, progress=False, **options)
        assert json.loads(Path(f"{out}.embed.json").read_text())["rows"] == 150 and Path(f"{out}.partial").exists()

    interrupted_run()
    with pytest.raises(ValueError, match=r"unfinished run with other settings \(window: 50 then, 60 now\)"):
        embed_corpus(tiny, src, out, window=60, progress=False)
    write_lines(src, ["changed"] + sentences[1:300])
    with pytest.raises(ValueError, match="the first 150 rows differ"):
        embed_corpus(tiny, src, out, window=50, progress=False)
    write_lines(src, sentences[:300])
    s = embed_corpus(tiny, src, out, window=50, progress=False)
    assert s["resumed_at"] == 150 and out.read_bytes() == whole
    interrupted_run()
    s = embed_corpus(tiny, src, out, window=50, resume=False, progress=False)
    assert s["resumed_at"] == 0 and out.read_bytes() == whole
    # A damaged last chunk is found, not built upon.
    interrupted_run()
    partial = Path(f"{out}.partial")
    data = bytearray(partial.read_bytes())
    data[-5] ^= 0xFF
    partial.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="last chunk .* does not match its recorded hash"):
        embed_corpus(tiny, src, out, window=50, progress=False)


class Stopping(Embedder):
    """The real Embedder, interrupted (as by Ctrl-C) when asked for a fourth window."""

    calls = 0

    def prepare(self, texts):
        self.calls += 1
        if self.calls > 3:
            raise KeyboardInterrupt
        return super().prepare(texts)


def test_shards_are_disjoint_and_interleave_back_to_the_whole(tiny, sentences, tmp_path):
    src = write_lines(tmp_path / "t.txt", sentences[:500])
    embedder = Embedder.from_pretrained(tiny)
    parts = []
    for i in range(3):
        s = embed_corpus(embedder, src, tmp_path / f"part{i}.npy", shard=(i, 3), window=64, progress=False)
        parts.append(np.load(tmp_path / f"part{i}.npy"))
        assert s["rows"] == len(range(i, 500, 3))
    whole = np.empty((500, embedder.dim), dtype=np.float32)
    for i, part in enumerate(parts):
        whole[i::3] = part
    np.testing.assert_allclose(whole, embedder(sentences[:500]), atol=1e-5)
    with pytest.raises(ValueError, match="shard 3/3"):
        embed_corpus(embedder, src, tmp_path / "bad.npy", shard=(3, 3), progress=False)


@pytest.mark.skipif("workers" not in inspect.signature(Tokenizer.encode_batch).parameters,
                    reason="Tokenizer.encode_batch(workers=) (the tokenizer's process pool) is not merged yet")
def test_two_tokenizer_workers_give_the_same_bytes(tiny, sentences, tmp_path):
    src = write_lines(tmp_path / "t.txt", sentences[:2000])
    embed_corpus(tiny, src, tmp_path / "one.npy", window=256, workers=1, progress=False)
    embed_corpus(tiny, src, tmp_path / "two.npy", window=256, workers=2, progress=False)
    assert (tmp_path / "one.npy").read_bytes() == (tmp_path / "two.npy").read_bytes()


def test_cli_embed_options_and_errors(tiny, sentences, tmp_path, capsys):
    src = write_lines(tmp_path / "t.txt", sentences[:40])
    out = tmp_path / "v.npy"
    assert main(["embed", "--model", str(tiny), "--input", str(src), "--output", str(out), "--shard", "1/2",
                 "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(out), Embedder.from_pretrained(tiny)(sentences[1:40:2]), atol=1e-5)
    for bad in ("2/2", "x/2", "1"):
        assert main(["embed", "--input", str(src), "--output", str(out), "--shard", bad]) == 2
        assert "is not i/n" in capsys.readouterr().err
    assert main(["embed", "--model", str(tiny), "--input", str(src), "--output", str(out), "--shard", "0/2"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "'1/2' then, '0/2' now" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["embed", "--model", str(tiny), "--input", str(tmp_path / "dir"), "--output", str(out)]) == 2
    assert "dir: no such file" in capsys.readouterr().err


# ---------------------------------------------------------------------------- Ray


RAY_SCRIPT = """
import json, sys
import numpy as np
import ray
from bertkit.cli import main
from bertkit.corpus import embed_ray
model, src, out = sys.argv[1:]
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
rows = embed_ray(model, src, window=16, actors=2).take_all()
np.save(out + "/api.npy", np.stack([r["embedding"] for r in rows]))
json.dump([str(r["text"]) for r in rows], open(out + "/texts.json", "w"))
sys.exit(main(["embed", "--ray", "--model", model, "--input", src, "--output", out + "/ray.jsonl", "--window", "16",
               "--no-progress"]))
"""


def test_ray_vectors_equal_bertkit_embed(minilm, sentences, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'bertkit[ray]')")
    # A blank line, and a line separator that str.splitlines (Ray's read_text) would split on.
    texts = sentences[:60] + ["", "one row \u2028 not two"] + sentences[60:79]
    src = write_lines(tmp_path / "t.txt", texts)
    assert main(["embed", "--model", str(minilm), "--input", str(src), "--output", str(tmp_path / "plain.npy"),
                 "--no-progress"]) == 0
    plain = np.load(tmp_path / "plain.npy")
    # Ray in a process of its own (2 CPUs): its threads must not outlive the test in this process,
    # where later tests fork.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", RAY_SCRIPT, str(minilm), str(src), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # embed_ray: every row, the blank one too, in input order, the vectors of `bertkit embed`.
    assert json.loads((tmp_path / "texts.json").read_text()) == texts
    np.testing.assert_allclose(np.load(tmp_path / "api.npy"), plain, atol=1e-5)
    # The CLI's --ray writes the same file layout from the same rows.
    got = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert [r["line"] for r in got] == list(range(1, 82))
    np.testing.assert_allclose(np.array([r["embedding"] for r in got]), plain, atol=1e-5)
