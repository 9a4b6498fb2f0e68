"""How fast bertkit reads Google's TensorFlow checkpoints (tf_checkpoint.py).

    python bench/tf_checkpoint.py                # crc32c throughput on 100 MB of random bytes
    python bench/tf_checkpoint.py CHECKPOINT_DIR # also: read every tensor, and convert

A BERT-base-sized checkpoint to time (440 MB, random weights) comes from the fixture
script, which needs TensorFlow (see tests/fixtures/tf/make_fixtures.py):

    /tmp/tfvenv/bin/python tests/fixtures/tf/make_fixtures.py --bert-base /tmp/bert_base_tf
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bertkit import tf_checkpoint as tfc


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def crc_speed() -> None:
    data = np.random.default_rng(0).integers(0, 256, 100_000_000, dtype=np.uint8)
    tfc.crc32c(data[:1_000_000])  # tables
    seconds = best_of(3, lambda: tfc.crc32c(data))
    print(f"crc32c: 100 MB in {seconds:.3f} s = {100 / seconds:.0f} MB/s")
    for size in (3072, 2_359_296, 93_763_584):  # a BERT-base bias, a 768x768 kernel, the word embeddings
        seconds = best_of(5, lambda size=size: tfc.crc32c(data[:size]))
        print(f"crc32c: {size:>10,} bytes in {seconds * 1e3:8.2f} ms = {size / seconds / 1e6:4.0f} MB/s")


def main() -> None:
    crc_speed()
    if len(sys.argv) < 2:
        return
    folder = Path(sys.argv[1])
    prefix = tfc.checkpoint_prefix(folder)
    total = sum(p.stat().st_size for p in prefix.parent.glob(prefix.name + ".data-*"))

    def read_plain():  # the same reads without checks or parsing: the disk / page cache alone
        with open(next(prefix.parent.glob(prefix.name + ".data-*")), "rb") as f:
            buf = np.empty(1 << 24, np.uint8)
            while f.readinto(buf):
                pass

    read_plain()  # warm the page cache, so that every timing below reads from memory
    print(f"plain read of {total / 1e6:.0f} MB: {best_of(3, read_plain):.2f} s")
    seconds = best_of(3, lambda: sum(1 for _ in tfc.read_tf_variables(folder)))
    print(f"read_tf_variables: {seconds:.2f} s = {total / seconds / 1e6:.0f} MB/s (CRC-checked)")
    seconds = best_of(3, lambda: sum(1 for _ in tfc.read_tf_weights(folder)))
    print(f"read_tf_weights: {seconds:.2f} s (plus renaming, transposing the kernels)")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        tfc.convert_tf_checkpoint(folder, Path(tmp) / "out")
        print(f"convert_tf_checkpoint: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
