"""`bertkit prepare` scaling: one worker process against several, same corpus, same seed.

    flock /tmp/bertkit-bench.lock .venv/bin/python bench/prepare.py [--reviews 10000] [--workers 2]

Builds NSP shards from the first `--reviews` IMDB train reviews (JSON lines, MiniLM's
vocabulary) with workers=1 and workers=N, alternating, `--repeat` times each; the best
wall time counts (other jobs may share the CPU). Every file the runs write must be byte-identical
across worker counts, or the bench fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from bertkit.data import prepare
from bertkit.hub import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
IMDB = Path(os.environ.get("BERTKIT_DATA", ROOT.parent / "shared" / "data")) / "imdb" / "train.jsonl"


def digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reviews", type=int, default=10000, help="first N IMDB train reviews")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--max-seq-length", type=int, default=128)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bertkit-bench-prepare-"))
    corpus = tmp / "imdb.jsonl"
    with open(IMDB, encoding="utf-8") as src, open(corpus, "w", encoding="utf-8") as dst:
        for _, line in zip(range(args.reviews), src):
            dst.write(line)
    print(f"corpus: {args.reviews} IMDB train reviews, {corpus.stat().st_size / 1e6:.1f} MB; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")

    best: dict[int, float] = {}
    files: dict[int, dict[str, str]] = {}
    for _ in range(args.repeat):
        for workers in (1, args.workers):
            out = tmp / f"w{workers}"
            t0 = time.perf_counter()
            counts = prepare(DEFAULT_MODEL, [corpus], out, max_seq_length=args.max_seq_length, workers=workers,
                             progress=False)
            best[workers] = min(best.get(workers, float("inf")), time.perf_counter() - t0)
            files[workers] = digest(out)
    identical = files[1] == files[args.workers]
    ratio = best[1] / best[args.workers]
    print(f"instances: {counts['stats']['instances']:,} in {len(counts['shards'])} shards")
    print(f"| workers | best of {args.repeat} (s) | speed-up | shards |")
    print("|---|---|---|---|")
    print(f"| 1 | {best[1]:.1f} | 1.00x | |")
    print(f"| {args.workers} | {best[args.workers]:.1f} | **{ratio:.2f}x** | "
          f"{'byte-identical' if identical else 'DIFFERENT'} ({len(files[1])} files) |")
    print(json.dumps({"reviews": args.reviews, "seconds": best, "ratio": ratio, "identical": identical}))
    sys.exit(0 if identical else 1)


if __name__ == "__main__":
    main()
