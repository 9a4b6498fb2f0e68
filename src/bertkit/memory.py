"""Hand memory that the C allocator keeps but no longer uses back to the operating system.

glibc's malloc keeps freed blocks for reuse, and releases only what lies free at the top of
its heaps. With tensors whose shapes change from batch to batch (each padded to its own
longest input), the kept blocks fragment: a long fine-tuning run's resident memory climbs by
gigabytes while its live tensors stay the same size, and a server's creeps up for hours.
malloc_trim(0) returns every free page, wherever it lies. Elsewhere than glibc this does nothing.

    trim = Trimmer(every=30.0)
    for batch in batches:
        step(batch)
        trim()      # at most once every 30 s
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where there is none (macOS, Windows, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_free_memory() -> bool:
    """Return the allocator's free pages to the OS now; True when there was a way to."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


class Trimmer:
    """release_free_memory(), at most once every `every` seconds: a call walks the allocator's
    heaps, and the pages it returns must be faulted in again when next used."""

    def __init__(self, every: float = 30.0):
        self.every = every
        self._last = time.monotonic()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            release_free_memory()
            self._last = time.monotonic()
