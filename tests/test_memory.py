"""bertkit.memory: free heap pages go back to the OS."""

import subprocess
import sys
import time

import pytest

from bertkit import memory

# In a fresh process: free 0.5-3.5 MB tensors that glibc placed on its heap (a freed 8 MB block
# first lifts its mmap threshold), keep the last one so the heap's top cannot shrink by itself,
# then trim. Prints the resident MB above the start after freeing and after trimming.
SCRIPT = """
import os, torch
from bertkit.memory import release_free_memory
def rss(): return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
torch.set_num_threads(1)
x = torch.ones(8 << 20, dtype=torch.uint8); del x
base = rss()
blocks = [torch.ones((1 + i % 7) << 19, dtype=torch.uint8) for i in range(400)]
last = blocks[-1]; del blocks
freed = rss() - base
if not release_free_memory(): raise SystemExit(3)
print(freed, rss() - base)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; malloc_trim is glibc's")
def test_release_free_memory_returns_a_fragmented_heap():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    if run.returncode == 3:
        pytest.skip("no glibc malloc_trim here (musl?)")
    assert run.returncode == 0, run.stderr
    freed, trimmed = (float(x) for x in run.stdout.split())
    assert freed > 300, f"the allocator kept only {freed:.0f} MB: the test no longer fragments its heap"
    assert trimmed < 0.2 * freed, f"{freed:.0f} MB kept after freeing, still {trimmed:.0f} MB after the trim"


def test_trimmer_trims_at_most_once_per_period(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(time.monotonic()))
    trim = memory.Trimmer(every=0.2)
    for _ in range(5):
        trim()
    assert calls == []  # the period starts when the trimmer is made
    time.sleep(0.25)
    trim()
    trim()
    assert len(calls) == 1
