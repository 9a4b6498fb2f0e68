"""Dynamic batching: inputs of many concurrent requests run through the model together.

Each request's inputs are queued one entry per input, with a future the request awaits. A single
worker coroutine takes the oldest waiting inputs up to a token budget, hands them to the model's
`run` on ONE worker thread (torch already uses every core; a second model thread would only fight
it for them) and puts each result into its own input's future. Inside `run` the batch is sorted by
length and padded per sub-batch (batching.sorted_batches), so short and long inputs taken together
do not pad each other.

Nobody waits for company: when the model is idle the first input runs at once; inputs that arrive
while it is busy pile up and make the next batch bigger. Batch size thus follows the load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bertkit.memory import Trimmer

log = logging.getLogger(__name__)


class BatchFailed(Exception):
    """The model raised on a batch: every request with an input in that batch gets this error."""


@dataclass
class _Entry:
    prepared: Any  # batching.Prepared (anything with n_tokens)
    future: asyncio.Future
    queued: float  # time.perf_counter() when it arrived


class Batcher:
    """Queue of prepared inputs -> batches of at most `max_batch_tokens` word pieces -> `run`.

    run(prepared_list, batch_size) must return one result per input, in order (Embedder.run,
    Predictor.run). A single input longer than the budget runs alone.
    on_batch(n_inputs, n_tokens, queue_seconds, run_seconds), if given, is called after each batch.
    """

    def __init__(self, run: Callable[[list, int], Sequence], max_batch_tokens: int, *, batch_size: int = 32,
                 on_batch: Callable[[int, int, list[float], float], None] | None = None):
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}")
        self.run, self.max_batch_tokens, self.batch_size, self.on_batch = run, max_batch_tokens, batch_size, on_batch
        self.waiting: deque[_Entry] = deque()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="bertkit-model")
        self.trim = Trimmer()  # batches of ever-changing shapes would fragment the heap: RSS would creep up
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._wake = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="bertkit-batcher")

    async def stop(self) -> None:
        """Stop the worker (after the server has answered every request) and its thread."""
        for entry in self.waiting:  # none after a graceful shutdown
            entry.future.cancel()
        self.waiting.clear()
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self.pool.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def __len__(self) -> int:
        """Inputs waiting for the model."""
        return len(self.waiting)

    async def submit(self, prepared: Sequence) -> list:
        """Queue one request's prepared inputs; their results, in order, once their batches have run."""
        if not self.running:
            raise RuntimeError("the batcher is not running (call start() on the server's event loop)")
        if not prepared:
            return []
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        futures = [loop.create_future() for _ in prepared]
        self.waiting.extend(_Entry(p, f, now) for p, f in zip(prepared, futures))
        self._wake.set()
        try:
            await asyncio.wait(futures)
        except BaseException:  # the request was cancelled (client gone, server stopping)
            for f in futures:
                f.cancel()  # its inputs still waiting are skipped
            raise
        errors = [f.exception() for f in futures]  # every one read, so asyncio logs none as lost
        for error in errors:
            if error is not None:
                raise error
        return [f.result() for f in futures]

    def _take(self) -> list[_Entry]:
        """The oldest waiting inputs whose word pieces fit the budget (at least one)."""
        batch, tokens = [], 0
        while self.waiting:
            entry = self.waiting[0]
            if entry.future.done():  # its request was cancelled
                self.waiting.popleft()
                continue
            if batch and tokens + entry.prepared.n_tokens > self.max_batch_tokens:
                break
            batch.append(self.waiting.popleft())
            tokens += entry.prepared.n_tokens
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.pool, self.run, [e.prepared for e in batch], self.batch_size)
                if len(results) != len(batch):
                    raise RuntimeError(f"the model returned {len(results)} results for {len(batch)} inputs")
            except Exception as e:  # the server keeps serving; only this batch's requests fail
                error = BatchFailed(f"{type(e).__name__}: {e}")
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(error)
            else:
                for entry, result in zip(batch, results):
                    if not entry.future.done():
                        entry.future.set_result(result)
            self.pool.submit(self.trim)  # on the model thread, after this batch's answers are out
            if self.on_batch is not None:
                try:
                    self.on_batch(len(batch), sum(e.prepared.n_tokens for e in batch),
                                  [start - e.queued for e in batch], time.perf_counter() - start)
                except Exception:  # bookkeeping must never stop the worker
                    log.exception("batch statistics failed")
