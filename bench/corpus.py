"""Corpus-scale embedding: peak memory against corpus size, streaming vs in-memory throughput,
SIGKILL/resume trials, and Ray against the plain path.

    flock /tmp/bertkit-bench.lock .venv/bin/python bench/corpus.py \\
        --rss 100000,1000000 --throughput 100000 --kills 20 --ray 20000

The corpus: the first 100,000 sentences of IMDB's training reviews (the pre-training sentence
splitter; --base), repeated to the size asked for. Every size thus holds the same distinct texts, so the
tokenizer's cache (bounded on its own) holds the same, and what can grow with the corpus is the
pipeline's memory alone.

(a) --rss: `bertkit embed` in a fresh process per size, with a small randomly initialised BERT
    (preset tiny, MiniLM's vocabulary): the pipeline's memory is under test, not the model's speed.
    Peak RSS is the child's ru_maxrss (os.wait4), i.e. its VmHWM.
(b) --throughput: all-MiniLM-L6-v2 on N lines, embed_corpus (streaming, windows of 4,096) against
    one Embedder call on all N texts (in memory, one global length sort), same process, same texts.
(c) --kills: `bertkit embed` (tiny model) SIGKILLed at a random moment after its partial output
    passes a random size, rerun to completion, compared byte for byte with an uninterrupted run.
(d) --ray: embed_ray on a local Ray instance of --ray-cpus CPUs (one actor per CPU, one torch
    thread each) against embed_corpus with torch using as many threads, MiniLM, windows of 1,024
    on both sides; texts/s per core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bertkit.config import BertConfig
from bertkit.corpus import embed_corpus
from bertkit.data.corpus import split_sentences
from bertkit.heads import BertModel
from bertkit.infer import Embedder
from bertkit.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BERTKIT_DATA", ROOT.parent / "shared" / "data"))
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BASE_SENTENCES = 100_000


def sentences(n: int = BASE_SENTENCES) -> list[str]:
    out: list[str] = []
    with open(DATA / "imdb" / "train.jsonl", encoding="utf-8") as f:
        for line in f:
            out += split_sentences(json.loads(line)["text"])
            if len(out) >= n:
                break
    return out[:n]


def write_corpus(path: Path, lines: int, base: list[str]) -> Path:
    """`lines` lines: the base sentences, repeated."""
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, lines, len(base)):
            f.write("".join(t + "\n" for t in base[: min(len(base), lines - start)]))
    return path


def tiny_model(folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        BertModel(BertConfig.preset("tiny", max_position_embeddings=128)).save_pretrained(
            folder, tokenizer=Tokenizer.from_pretrained(MINILM))
    return folder


def cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, "-m", "bertkit.cli", "embed", *args, "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, load average {load}"


# ---------------------------------------------------------------------------- (a) memory


def peak_rss(work: Path, model: Path, sizes: list[int], base: list[str]) -> list[dict]:
    rows = []
    for n in sizes:
        src = write_corpus(work / f"corpus-{n}.txt", n, base)
        out = work / f"rss-{n}.npy"
        start = time.perf_counter()
        p = cli(["--model", str(model), "--input", str(src), "--output", str(out), "--overwrite"])
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        if p.returncode != 0:
            raise SystemExit(f"embed of {n} lines failed: {p.stderr.read()}")
        rows.append({"lines": n, "peak_rss_mb": usage.ru_maxrss / 1024, "seconds": seconds,
                     "texts_per_s": n / seconds, "output_mb": out.stat().st_size / 2**20})
        print(f"  {n:>9,} lines: peak RSS {rows[-1]['peak_rss_mb']:.0f} MB, {seconds:.0f} s", flush=True)
        src.unlink()
        out.unlink()
    return rows


# ---------------------------------------------------------------------------- (b) throughput


def throughput(work: Path, n: int, base: list[str]) -> dict:
    texts = (base * (n // len(base) + 1))[:n]
    src = write_corpus(work / "tp.txt", n, base)
    embedder = Embedder.from_pretrained(MINILM)
    embedder(texts[:64])  # warm-up
    t = time.perf_counter()
    embed_corpus(embedder, src, work / "tp.npy", overwrite=True, progress=False)
    streaming = time.perf_counter() - t
    t = time.perf_counter()
    in_memory = embedder(texts)
    memory_s = time.perf_counter() - t
    diff = float(np.abs(np.load(work / "tp.npy") - in_memory).max())
    return {"lines": n, "streaming_texts_per_s": n / streaming, "in_memory_texts_per_s": n / memory_s,
            "ratio": memory_s / streaming, "max_abs_diff": diff}


# ---------------------------------------------------------------------------- (c) kills


def kill_trials(work: Path, model: Path, trials: int, lines: int, base: list[str], seed: int = 0) -> dict:
    src = write_corpus(work / "kill.txt", lines, base)
    args = ["--model", str(model), "--input", str(src), "--window", "256"]
    whole = work / "whole.npy"
    if cli([*args, "--output", str(whole), "--overwrite"]).wait() != 0:
        raise SystemExit("the uninterrupted run failed")
    rng, identical, killed_at = random.Random(seed), 0, []
    for trial in range(trials):
        out = work / "killed.npy"
        for f in (out, Path(f"{out}.partial"), Path(f"{out}.embed.json")):
            f.unlink(missing_ok=True)
        kill_at = rng.randrange(1, whole.stat().st_size)
        p = cli([*args, "--output", str(out)])
        partial = Path(f"{out}.partial")
        while p.poll() is None:
            if partial.is_file() and partial.stat().st_size >= kill_at:
                time.sleep(rng.uniform(0, 1))  # anywhere in the next chunk's life
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        p.wait()
        state = Path(f"{out}.embed.json")
        killed_at.append(json.loads(state.read_text())["rows"] if state.is_file() else 0)
        if cli([*args, "--output", str(out)]).wait() != 0:
            raise SystemExit(f"trial {trial}: the resumed run failed")
        identical += out.read_bytes() == whole.read_bytes()
        print(f"  trial {trial}: killed after {killed_at[-1]:,} rows, "
              f"{'identical' if identical == trial + 1 else 'DIFFERENT'}", flush=True)
    return {"lines": lines, "trials": trials, "identical": identical, "rows_done_at_kill": killed_at}


# ---------------------------------------------------------------------------- (d) Ray


def ray_vs_plain(work: Path, n: int, cpus: int, base: list[str], window: int = 1024) -> dict:
    """Windows of 1,024 rows on both sides: the same batches, and enough windows to keep every actor busy."""
    import ray

    from bertkit.corpus import embed_ray

    src = write_corpus(work / "ray.txt", n, base)
    torch.set_num_threads(cpus)
    embedder = Embedder.from_pretrained(MINILM)
    embedder(base[:64])
    t = time.perf_counter()
    embed_corpus(embedder, src, work / "plain.npy", window=window, overwrite=True, progress=False)
    plain = time.perf_counter() - t
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        embed_ray(MINILM, str(src), actors=cpus, window=window).materialize()  # warm-up: not timed
        t = time.perf_counter()
        ds = embed_ray(MINILM, str(src), actors=cpus, window=window)
        vectors = np.stack([r["embedding"] for r in ds.take_all()])
        on_ray = time.perf_counter() - t
    finally:
        ray.shutdown()
    diff = float(np.abs(vectors - np.load(work / "plain.npy")).max())
    return {"lines": n, "cpus": cpus, "plain_texts_per_s_per_core": n / plain / cpus,
            "ray_texts_per_s_per_core": n / on_ray / cpus, "ratio": plain / on_ray, "max_abs_diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rss", default="100000,1000000", help="comma-separated corpus sizes (lines); '' skips")
    ap.add_argument("--throughput", type=int, default=100_000, help="lines for MiniLM streaming vs in memory; 0 skips")
    ap.add_argument("--kills", type=int, default=20, help="SIGKILL/resume trials; 0 skips")
    ap.add_argument("--kill-lines", type=int, default=20_000)
    ap.add_argument("--ray", type=int, default=20_000, help="lines for Ray vs plain; 0 skips")
    ap.add_argument("--ray-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--base", type=int, default=BASE_SENTENCES, help="distinct IMDB sentences the corpus repeats "
                    "(a smoke run of small sizes wants fewer, so that its sizes too share their texts)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    results: dict = {"machine": machine()}
    print(results["machine"], flush=True)
    base = sentences(a.base)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = tiny_model(work / "tiny")
        if a.rss:
            print("(a) peak RSS, tiny random BERT:", flush=True)
            results["rss"] = peak_rss(work, model, [int(x) for x in a.rss.split(",")], base)
        if a.throughput:
            print("(b) MiniLM, streaming vs in memory:", flush=True)
            results["throughput"] = tp = throughput(work, a.throughput, base)
            print(f"  {tp['streaming_texts_per_s']:.1f} vs {tp['in_memory_texts_per_s']:.1f} texts/s: "
                  f"{tp['ratio']:.3f}x, max |diff| {tp['max_abs_diff']:.1e}", flush=True)
        if a.kills:
            print("(c) SIGKILL at random points, then resume:", flush=True)
            results["kills"] = k = kill_trials(work, model, a.kills, a.kill_lines, base)
            print(f"  {k['identical']}/{k['trials']} byte-identical", flush=True)
        if a.ray:
            print("(d) Ray vs plain, MiniLM:", flush=True)
            results["ray"] = r = ray_vs_plain(work, a.ray, a.ray_cpus, base)
            print(f"  per core: Ray {r['ray_texts_per_s_per_core']:.1f} vs plain {r['plain_texts_per_s_per_core']:.1f} "
                  f"texts/s: {r['ratio']:.3f}x, max |diff| {r['max_abs_diff']:.1e}", flush=True)
    results["load_after"] = os.getloadavg()
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
