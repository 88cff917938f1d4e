"""Cross-request batching: the images of requests that arrive together go through the
network as one batch.

One thread runs the model, one batch at a time (ONNX Runtime and torch already spread one
batch over every core). Requests queue while it is busy; when it is free, the worker takes
everything queued, up to ``max_batch`` images, waiting at most ``max_wait_s`` for more
once the queue is empty, and hands each request its own rows. With ``enabled=False``
every request is its own batch, in arrival order, on the same single thread.

The default wait is 0: a lone request is never delayed, and only requests that queued
while the model was busy are merged. On a 2-core CPU merging gained little (ONNX Runtime
spends about as long per image in a batch of 8 as alone; ``benchmarks/RESULTS.md``,
section serve), so batching must at least cost nothing when it cannot help.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class MicroBatcher:
    """Runs ``predict(items) -> results`` (one result per item, in order) for the items
    of concurrent :meth:`predict` calls, merged into batches.

    ``batches_run`` and ``items_run`` count what went through ``predict``: fewer batches
    than requests means requests were merged.
    """

    def __init__(self, predict: Callable[[list], list], max_batch: int = 32,
                 max_wait_s: float = 0.0, enabled: bool = True):
        self._predict = predict
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.enabled = enabled
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferkit-predict")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._held = None  # a job that did not fit into the last batch
        self.batches_run = 0
        self.items_run = 0

    def _run(self, items: list) -> list:
        results = self._predict(items)
        if len(results) != len(items):
            raise RuntimeError(f"the model gave {len(results)} results for {len(items)} images")
        self.batches_run += 1
        self.items_run += len(items)
        return results

    async def predict(self, items: list) -> list:
        """The results of ``items``, computed in a batch with whatever else is queued."""
        loop = asyncio.get_running_loop()
        if not items:
            return []
        if not self.enabled:
            return await loop.run_in_executor(self._executor, self._run, list(items))
        if self._loop is not loop or self._worker is None or self._worker.done():
            # First use on this event loop (a test client may run several in turn).
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._work())
        future = loop.create_future()
        self._queue.put_nowait((list(items), future))
        return await future

    async def _gather(self, first) -> list:
        """``first`` and the jobs queued behind it, up to ``max_batch`` items."""
        loop = asyncio.get_running_loop()
        jobs, size = [first], len(first[0])
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if size + len(job[0]) > self.max_batch:
                self._held = job  # too big to join: it opens the next batch
                break
            jobs.append(job)
            size += len(job[0])
        return jobs

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        self._held = None
        while True:
            first, self._held = self._held or await self._queue.get(), None
            jobs = await self._gather(first)
            jobs = [(items, future) for items, future in jobs if not future.done()]
            if not jobs:  # every client of this batch went away
                continue
            items = [item for job_items, _ in jobs for item in job_items]
            try:
                results = await loop.run_in_executor(self._executor, self._run, items)
            except Exception as exc:  # noqa: BLE001 - each waiting request gets the error
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for job_items, future in jobs:
                if not future.done():
                    future.set_result(results[start:start + len(job_items)])
                start += len(job_items)

    async def close(self) -> None:
        """Stop the worker of this event loop (a later :meth:`predict` starts another)."""
        if self._worker is not None and self._loop is asyncio.get_running_loop():
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._worker = None
