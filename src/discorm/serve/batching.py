"""Micro-batching for the reward server, with failures isolated to the items that cause them.

Concurrent requests put their (already validated) token sequences in one queue; a worker takes up to
``max_batch_size`` items, waiting at most ``max_wait_ms`` for more, and scores them in one thread. When a
micro-batch fails (an exception, or a non-finite score), its items are scored again one by one, so only the
requests holding a bad item fail, each naming its bad items. The queue is bounded in items: a request that does
not fit is refused at once (the server answers 503), never queued without limit. A request that stops waiting
(its client went away, or its deadline passed) cancels its future: its items leave the queue's count at once and
are never scored; a micro-batch already on the model runs to its end.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from discorm.model.inference import score_sequences
from discorm.serve.metrics import ServerMetrics

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The request's items do not fit in the bounded queue."""


class ItemsFailed(Exception):
    """Some items of one request could not be scored: ``failures`` maps item index -> reason."""

    def __init__(self, failures: dict[int, str]):
        super().__init__("; ".join(f"item {i}: {reason}" for i, reason in sorted(failures.items())))
        self.failures = failures


@dataclass
class _Job:
    sequences: list[list[int]]
    future: asyncio.Future
    taken: bool = False  # by the worker: its items are counted until the micro-batch is answered


class MicroBatcher:
    """Scores the token sequences of concurrent requests together; one worker thread runs the model."""

    def __init__(self, model, max_batch_size: int = 16, max_wait_ms: float = 5.0, max_queue_items: int = 1024,
                 metrics: ServerMetrics | None = None):
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue_items = max_queue_items
        self.metrics = metrics or ServerMetrics()
        self.pending_items = 0  # queued or being scored
        self.metrics.queue_depth.set_function(lambda: self.pending_items)
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="discorm-score")
        self.task: asyncio.Task | None = None

    def submit(self, sequences: list[list[int]]) -> asyncio.Future:
        """Queue one request's sequences; the future gives their head params (N, K) or raises ItemsFailed."""
        if self.pending_items + len(sequences) > self.max_queue_items:
            raise QueueFull(f"{self.pending_items} items are waiting (limit {self.max_queue_items})")
        job = _Job(sequences, asyncio.get_running_loop().create_future())
        self.pending_items += len(sequences)
        job.future.add_done_callback(lambda _: self._dropped(job))
        self.queue.put_nowait(job)
        return job.future

    def _dropped(self, job: _Job) -> None:
        """A future cancelled while its job waits in the queue: its items no longer count (the worker skips it)."""
        if job.future.cancelled() and not job.taken:
            self.pending_items -= len(job.sequences)

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _next_live_job(self, deadline: float | None = None) -> _Job:
        """The next job whose request still waits, taken by the worker; cancelled ones are dropped on the way.
        TimeoutError when none comes before ``deadline`` (the event loop's clock)."""
        loop = asyncio.get_running_loop()
        while True:
            job = await asyncio.wait_for(self.queue.get(), None if deadline is None else deadline - loop.time())
            if not job.future.done():
                job.taken = True
                return job

    async def _next_jobs(self) -> list[_Job]:
        jobs = [await self._next_live_job()]
        size = len(jobs[0].sequences)
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while size < self.max_batch_size:
            try:
                job = await self._next_live_job(deadline)
            except asyncio.TimeoutError:
                break
            jobs.append(job)
            size += len(job.sequences)
        return jobs

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_jobs()
            try:
                sequences = [s for job in jobs for s in job.sequences]
                results = await loop.run_in_executor(self.executor, self.score_isolated, sequences)
                self._answer(jobs, results)
            finally:
                self.pending_items -= sum(len(job.sequences) for job in jobs)

    def _answer(self, jobs: list[_Job], results: list[torch.Tensor | str]) -> None:
        start = 0
        for job in jobs:
            mine = results[start : start + len(job.sequences)]
            start += len(job.sequences)
            if job.future.done():
                continue
            failures = {i: r for i, r in enumerate(mine) if isinstance(r, str)}
            if failures:
                job.future.set_exception(ItemsFailed(failures))
            else:
                job.future.set_result(torch.stack(mine))

    def score_isolated(self, sequences: list[list[int]]) -> list[torch.Tensor | str]:
        """Head params per sequence (K,), or the reason it failed; a failed batch is retried item by item."""
        self.metrics.batches.inc()
        try:
            params = score_sequences(self.model, sequences, self.max_batch_size)  # shared prompts once
            if bool(torch.isfinite(params).all()):
                self.metrics.items_scored.inc(len(sequences))
                return list(params)
        except Exception as err:  # noqa: BLE001 - any failure of the batch is narrowed down below
            logger.warning("a micro-batch of %d items failed (%s: %s); retrying item by item",
                           len(sequences), type(err).__name__, err)
        self.metrics.batch_retries.inc()
        return [self._score_one(sequence) for sequence in sequences]

    def _score_one(self, sequence: list[int]) -> torch.Tensor | str:
        try:
            params = score_sequences(self.model, [sequence], 1)[0]
        except Exception as err:  # noqa: BLE001 - the reason goes back to the one request holding the item
            self.metrics.item_failures.inc()
            return f"scoring failed ({type(err).__name__}: {str(err)[:200]})"
        if not bool(torch.isfinite(params).all()):
            self.metrics.item_failures.inc()
            return f"the model gave a non-finite score ({params.tolist()})"
        self.metrics.items_scored.inc()
        return params
