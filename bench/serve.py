"""Serving under load: `bertkit serve` vs a naive FastAPI + sentence-transformers server vs infinity-emb.

Each server runs as a subprocess on a free loopback port, serving the same model files; a
bounded asyncio client (httpx) drives it at 1, 8, 32 and 128 concurrent clients sending one text
per request, and at 8 clients sending 32 texts per request. Texts are real and of mixed length:
SST-2 dev sentences with IMDB reviews among them (one in ten), in the same order for every
server. Each level stops at --requests requests or --seconds seconds, whichever comes first.
Reported per level: requests/s, texts/s, p50/p99 latency, errors, and the server's peak RSS
(its whole process tree, sampled every 0.2 s), then bertkit's ratios to the others.

Models: all-MiniLM-L6-v2 embeddings, and an SST-2 classifier (--classifier DIR, or fine-tuned
here: 1 epoch on 3,000 train sentences; speed does not depend on quality). The bare in-process
model call on the same single texts is measured first, the floor for 1-client latency.

    .venv/bin/python bench/serve.py [--models embedding,classification] [--servers bertkit,naive,infinity]
    .venv/bin/python bench/serve.py --soak 10          # bertkit, 32 clients, 10 minutes: errors and RSS growth
    # infinity-emb in its own venv: CPU torch first, and only the server and torch extras
    # ([all] brings torchvision, which pulls a multi-GB CUDA torch):
    python3 -m venv /tmp/infvenv && /tmp/infvenv/bin/pip install torch==2.13.0 \\
        && /tmp/infvenv/bin/pip install "infinity-emb[server,torch]==0.0.78"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BERTKIT_DATA", ROOT.parent / "shared" / "data"))
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
LEVELS = [(1, 1), (8, 1), (32, 1), (128, 1), (8, 32)]  # (clients, texts per request)


def texts_pool(n: int = 2000, seed: int = 0) -> list[str]:
    """SST-2 dev sentences, and IMDB test reviews as one text in ten, shuffled once."""
    lines = (DATA / "glue" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    sst2 = [line.split("\t")[0].strip() for line in lines]
    with open(DATA / "imdb" / "test.jsonl", encoding="utf-8") as f:
        imdb = [json.loads(line)["text"] for _, line in zip(range(n // 10), f)]
    rng = random.Random(seed)
    texts = [rng.choice(sst2) for _ in range(n - len(imdb))] + imdb
    rng.shuffle(texts)
    return texts


# ---------------------------------------------------------------------------- the servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """How to start one contender and talk to it."""

    name: str
    command: list[str]
    request: Callable[[list[str]], tuple[str, dict]]  # texts -> (path, JSON body)
    answers: Callable[[object], list]  # response JSON -> one answer per text
    url: str | None = None  # known in advance (a port chosen here), else read from its output
    env: dict = field(default_factory=dict)


def bertkit_server(model: str, kind: str) -> Server:
    cmd = [sys.executable, "-m", "bertkit.cli", "serve", model, "--port", "0", "--max-client-batch-size", "64"]
    if kind == "embedding":
        return Server("bertkit", cmd, lambda t: ("/embed", {"inputs": t, "truncate": True}), lambda j: j)
    return Server("bertkit", cmd, lambda t: ("/predict", {"inputs": [[x] for x in t], "truncate": True}),
                  lambda j: j)


def naive_server(model: str, kind: str) -> Server:
    cmd = [sys.executable, str(ROOT / "bench" / "naive_server.py"), model, "--kind", kind]
    if kind == "embedding":
        return Server("naive", cmd, lambda t: ("/embed", {"inputs": t}), lambda j: j)
    return Server("naive", cmd, lambda t: ("/predict", {"inputs": [[x] for x in t]}), lambda j: j)


def infinity_server(model: str, kind: str, binary: str) -> Server:
    port = free_port()
    cmd = [binary, "v2", "--model-id", model, "--served-model-name", "m", "--engine", "torch", "--device", "cpu",
           "--port", str(port), "--host", "127.0.0.1", "--no-model-warmup"]
    env = {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}  # the local files, nothing fetched
    route = "/embeddings" if kind == "embedding" else "/classify"
    return Server("infinity", cmd, lambda t: (route, {"model": "m", "input": t}), lambda j: j["data"],
                  url=f"http://127.0.0.1:{port}", env=env)


class Running:
    """A contender's process: start, wait until /health answers, stop."""

    def __init__(self, server: Server, log_dir: Path, timeout: float = 300):
        self.server, self.log = server, log_dir / f"{server.name}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **server.env}
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(server.command, stdout=subprocess.DEVNULL, stderr=self._log_file, env=env)
        deadline, self.url = time.monotonic() + timeout, server.url
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited ({self.proc.returncode}): {self.log.read_text()[-1500:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{server.name} not up within {timeout:.0f} s: {self.log.read_text()[-1500:]}")
            if self.url is None:
                found = re.search(r"on (http://127\.0\.0\.1:\d+)", self.log.read_text())
                self.url = found.group(1) if found else None
            if self.url is not None:
                try:
                    if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.25)

    def rss(self) -> int:
        try:
            p = psutil.Process(self.proc.pid)
            return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])
        except psutil.Error:
            return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()


class PeakRSS:
    """Samples a server's RSS on a thread while a load level runs."""

    def __init__(self, running: Running, every: float = 0.2):
        self.running, self.every, self.samples = running, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.running.rss()))
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max((r for _, r in self.samples), default=0)


# ---------------------------------------------------------------------------- the load


async def drive(running: Running, pool: list[str], clients: int, per_request: int, max_requests: int,
                max_seconds: float) -> dict:
    """`clients` concurrent clients, each sending its next request as soon as the last is answered."""
    server = running.server
    latencies, errors, sent = [], 0, 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=running.url, timeout=120, limits=limits) as client:
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal errors, sent
            while sent < max_requests and time.perf_counter() - start < max_seconds:
                i, sent = sent, sent + 1
                texts = [pool[(i * per_request + j) % len(pool)] for j in range(per_request)]
                path, body = server.request(texts)
                t = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                    ok = r.status_code == 200 and len(server.answers(r.json())) == len(texts)
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    ok = False
                latencies.append(time.perf_counter() - t)
                errors += not ok

        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {"clients": clients, "texts_per_request": per_request, "requests": len(latencies),
            "seconds": round(elapsed, 2), "requests_s": len(latencies) / elapsed,
            "texts_s": len(latencies) * per_request / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "errors": errors}


def bare_call_ms(model: str, kind: str, pool: list[str], n: int) -> float | None:
    """p50 of the model called in this process on one text at a time: the floor for 1-client latency."""
    from bertkit.serve import load_model

    try:
        net = load_model(model)
    except ValueError as e:  # a task head without bertkit.tasks.predictor
        print(f"bare call: {e}", file=sys.stderr)
        return None
    run = (lambda t: net.run(net.prepare([t]))) if hasattr(net, "prepare") else (lambda t: net([t]))
    for t in pool[:5]:
        run(t)
    times = []
    for t in pool[:n]:
        start = time.perf_counter()
        run(t)
        times.append(time.perf_counter() - start)
    return float(np.percentile(np.asarray(times) * 1000, 50))


def quick_classifier(work: Path) -> str:
    """A fine-tuned SST-2 classifier: 1 epoch on 3,000 sentences (speed does not depend on quality)."""
    out = work / "sst2-quick"
    if not (out / "best" / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "bertkit.cli", "finetune", "--task", "sst2", "--model", MINILM,
                        "--out-dir", str(out), "--epochs", "1", "--max-train-examples", "3000",
                        "--max-eval-examples", "300", "--lr", "5e-5", "--data-dir", str(DATA)],
                       check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return str(out / "best")


# ---------------------------------------------------------------------------- the report


def table(kind: str, results: dict[str, list[dict]], bare: float | None) -> str:
    names = list(results)
    head = f"\n{kind}: " + (f"bare in-process call p50 {bare:.1f} ms (one text)" if bare else "")
    rows = [head, "clients x texts | " + " | ".join(
        f"{n}: req/s  texts/s  p50 ms  p99 ms  err  peak MiB" for n in names)]
    for i, (clients, per) in enumerate(LEVELS):
        cells = []
        for n in names:
            r = results[n][i] if i < len(results[n]) else None
            cells.append("-" if r is None else f"{r['requests_s']:7.1f} {r['texts_s']:8.1f} {r['p50_ms']:7.0f} "
                         f"{r['p99_ms']:7.0f} {r['errors']:4d} {r['peak_rss'] / 2**20:8.0f}")
        rows.append(f"{clients:>7} x {per:<5} | " + " | ".join(cells))
    if "bertkit" in results:
        for i, (clients, per) in enumerate(LEVELS):
            b = results["bertkit"][i] if i < len(results["bertkit"]) else None
            if b is None:
                continue
            parts = []
            for n in names:
                o = results[n][i] if n != "bertkit" and i < len(results[n]) else None
                if o and o["texts_s"] > 0:
                    parts.append(f"vs {n}: texts/s x{b['texts_s'] / o['texts_s']:.2f}, "
                                 f"p99 x{b['p99_ms'] / o['p99_ms']:.2f}")
            if clients == 1 and per == 1 and bare:
                parts.append(f"p50 / bare call x{b['p50_ms'] / bare:.2f}")
            if parts:
                rows.append(f"bertkit at {clients} x {per}: " + "; ".join(parts))
    return "\n".join(rows)


def soak(model: str, minutes: float, pool: list[str], log_dir: Path, clients: int = 32) -> dict:
    """bertkit at `clients` clients for `minutes`: errors, and RSS after the first minute vs at the end."""
    running = Running(bertkit_server(model, "embedding"), log_dir)
    try:
        with PeakRSS(running, every=1.0) as rss:
            r = asyncio.run(drive(running, pool, clients, 1, 10**9, minutes * 60))
        start = rss.samples[0][0]
        warm = max((b for t, b in rss.samples if t - start <= 60), default=0)
        end = max(b for t, b in rss.samples if t - start >= minutes * 60 - 60) if minutes > 1 else rss.peak
        r.update(rss_after_warmup_mib=warm / 2**20, rss_last_minute_mib=end / 2**20, peak_rss=rss.peak,
                 rss_growth_pct=100 * (end - warm) / warm if warm else None)
        return r
    finally:
        running.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=MINILM, help="the encoder")
    p.add_argument("--classifier", default=None, help="a fine-tuned SST-2 classifier (default: fine-tune one)")
    p.add_argument("--models", default="embedding,classification")
    p.add_argument("--servers", default="bertkit,naive,infinity")
    p.add_argument("--infinity", default="/tmp/infvenv/bin/infinity_emb", help="infinity_emb executable")
    p.add_argument("--levels", default=",".join(f"{c}x{t}" for c, t in LEVELS), help="clients x texts per request")
    p.add_argument("--requests", type=int, default=600, help="requests per level, at most")
    p.add_argument("--seconds", type=float, default=60, help="seconds per level, at most")
    p.add_argument("--soak", type=float, default=None, metavar="MINUTES", help="only the soak: bertkit, 32 clients")
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "bench-serve"))
    p.add_argument("--json", default=None, help="write every figure here")
    a = p.parse_args()
    LEVELS[:] = [tuple(int(x) for x in level.split("x")) for level in a.levels.split(",")]
    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="bench-serve-", dir=work))
    pool = texts_pool()
    from bertkit.hub import resolve

    encoder = str(resolve(a.model))
    if a.soak is not None:
        r = soak(encoder, a.soak, pool, logs)
        print(json.dumps(r, indent=1))
        if a.json:
            Path(a.json).write_text(json.dumps(r, indent=1) + "\n")
        return
    report: dict = {}
    for kind in a.models.split(","):
        model = encoder if kind == "embedding" else (a.classifier or quick_classifier(work))
        bare = bare_call_ms(model, kind, [t for t in pool if len(t) < 400], 50)
        contenders = {"bertkit": lambda: bertkit_server(model, kind), "naive": lambda: naive_server(model, kind),
                      "infinity": lambda: infinity_server(model, kind, a.infinity)}
        results: dict[str, list[dict]] = {}
        for name in a.servers.split(","):
            if name == "infinity" and not Path(a.infinity).exists():
                print(f"infinity: {a.infinity} not found (see this file's docstring to install it); skipped")
                continue
            try:
                running = Running(contenders[name](), logs)
            except RuntimeError as e:
                print(f"{kind} / {name}: did not start: {e}")
                continue
            try:
                asyncio.run(drive(running, pool, 8, 1, 16, 60))  # warm-up
                results[name] = []
                for clients, per in LEVELS:
                    with PeakRSS(running) as rss:
                        r = asyncio.run(drive(running, pool, clients, per, a.requests, a.seconds))
                    r["peak_rss"] = rss.peak
                    results[name].append(r)
                    print(f"{kind} / {name} / {clients} x {per}: {r['texts_s']:.1f} texts/s, p50 {r['p50_ms']:.0f} "
                          f"ms, p99 {r['p99_ms']:.0f} ms, {r['errors']} errors", flush=True)
            finally:
                running.stop()
        print(table(kind, results, bare))
        report[kind] = {"bare_call_p50_ms": bare, "results": results}
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
