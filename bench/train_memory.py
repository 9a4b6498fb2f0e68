"""Resident memory of a fine-tuning run with the allocator's free pages trimmed (bertkit's default) and without.

    .venv/bin/python bench/train_memory.py --task squad --steps 60 --threads 1

Each arm is a fresh process running `bertkit.tasks.finetune.finetune` on the task for --steps optimizer
steps (bf16 autocast, seed 42, a 2,000-example training subset, 200 dev examples); a thread samples
VmRSS every half second. "untrimmed" swaps bertkit.train's Trimmer for one that never trims, i.e. the
loop as it was before. Printed: RSS at the start, peak and last RSS, and seconds per step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def arm(trimmed: bool, task: str, steps: int, out: str) -> dict:
    """One run in this process -> its figures."""
    import bertkit.train
    from bertkit.tasks.finetune import finetune

    if not trimmed:
        bertkit.train.Trimmer = lambda *a, **k: (lambda: None)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.monotonic(), rss_mib()))
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.monotonic()
    summary = finetune(task=task, output=out, max_steps=steps, max_train_examples=2000, max_eval_examples=200,
                       mixed_precision="bf16", progress=False, seed=42)
    done.set()
    train_s = summary["train_seconds"]
    rss = [r for _, r in samples]
    return {"arm": "trimmed" if trimmed else "untrimmed", "steps": summary["step"],
            "s_per_step": train_s / max(summary["step"], 1), "rss_start_mib": rss[0], "rss_peak_mib": max(rss),
            "rss_last_mib": rss[-1], "wall_s": time.monotonic() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="squad")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--arms", default="untrimmed,trimmed")
    p.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # a child's own arm
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.arm:
        print(json.dumps(arm(a.arm == "trimmed", a.task, a.steps, a.out)))
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(a.threads),
           "MKL_NUM_THREADS": str(a.threads)}
    rows = []
    for name in a.arms.split(","):
        with tempfile.TemporaryDirectory() as d:
            run = subprocess.run([sys.executable, __file__, "--task", a.task, "--steps", str(a.steps), "--arm", name,
                                  "--out", str(Path(d) / "run")], env=env, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"{name}: exit {run.returncode}: {run.stderr[-2000:]}")
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{a.task}, {a.steps} steps, {a.threads} thread(s)\n")
    print("| arm | RSS at start, MiB | peak | last | s/step |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['arm']} | {r['rss_start_mib']:,.0f} | {r['rss_peak_mib']:,.0f} | {r['rss_last_mib']:,.0f} "
              f"| {r['s_per_step']:.2f} |")


if __name__ == "__main__":
    main()
