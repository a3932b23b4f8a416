"""`discorm serve`: rewards over HTTP for RL loops (FastAPI + uvicorn).

- ``POST /score``: ``[{"messages": [...]}, {"prompt": ..., "response": ...}, ...]`` (or ``{"inputs": [...]}``)
  -> ``{"rewards": [...], "reward_mode": ...}`` plus ``"sigmas"`` for distributional heads.
- ``POST /get_reward``: OpenRLHF's remote reward-model protocol, ``{"query": [full texts]}`` ->
  ``{"rewards": [...]}``; the texts are scored as given (already rendered with the chat template).
- ``GET /health``.

(No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations at run time.)

Concurrent requests are gathered into micro-batches (up to ``max_batch_size`` items, waiting at most
``max_wait_ms``). Bad requests get 400 (malformed JSON), 413 (too large) or 422 (missing/invalid fields), and the
server keeps serving.
"""


import asyncio
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import torch

from discorm.data.tokenize import Encoder
from discorm.errors import DiscoRMError
from discorm.serve.scoring import describe, score_ids

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    sequences: list[list[int]]
    future: asyncio.Future = field(default=None)


class MicroBatcher:
    """Collects the token sequences of concurrent requests and scores them together in a worker thread."""

    def __init__(self, model, max_batch_size: int = 16, max_wait_ms: float = 5.0):
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def submit(self, sequences: list[list[int]]) -> torch.Tensor:
        job = _Job(sequences, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0].sequences)
            deadline = loop.time() + self.max_wait
            while size < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                size += len(job.sequences)
            sequences = [s for job in jobs for s in job.sequences]
            try:
                params = await loop.run_in_executor(None, score_ids, self.model, sequences, self.max_batch_size)
            except Exception as err:  # noqa: BLE001 - the error goes back to the requests, the loop survives
                for job in jobs:
                    job.future.set_exception(err)
                continue
            start = 0
            for job in jobs:
                job.future.set_result(params[start : start + len(job.sequences)])
                start += len(job.sequences)


def create_app(model, max_batch_size: int = 16, max_items: int = 256, max_body_bytes: int = 4_000_000):
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
    except ImportError:
        raise DiscoRMError("the reward server needs FastAPI and uvicorn: pip install 'discorm[serve]'.") from None

    model.eval()
    encoder = Encoder.for_model(model)
    batcher = MicroBatcher(model, max_batch_size)

    @asynccontextmanager
    async def lifespan(_app):
        batcher.task = asyncio.create_task(batcher.run())
        yield
        batcher.task.cancel()

    app = FastAPI(title="DiscoRM reward server", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def read_json(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > max_body_bytes:
            return None, error(413, f"request body of {declared} bytes is over the {max_body_bytes}-byte limit")
        body = await request.body()
        if len(body) > max_body_bytes:
            return None, error(413, f"request body is over the {max_body_bytes}-byte limit")
        try:
            return json.loads(body), None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return None, error(400, f"malformed JSON: {err}")

    async def score_items(items: list, encode) -> tuple[list[dict] | None, JSONResponse | None]:
        if not isinstance(items, list) or not items:
            return None, error(422, "expected a non-empty list of inputs")
        if len(items) > max_items:
            return None, error(413, f"{len(items)} inputs is over the limit of {max_items} per request")
        try:
            sequences = [encode(item, f"item {i}") for i, item in enumerate(items)]
        except (DiscoRMError, KeyError, TypeError, AttributeError) as err:
            return None, error(422, f"invalid input: {err}")
        params = await batcher.submit(sequences)
        return describe(model, params), None

    @app.get("/health")
    async def health():
        return {"status": "ok", "head": model.head.kind, "reward_mode": model.rm_config.reward_mode}

    @app.post("/score")
    async def score(request: Request):
        payload, failure = await read_json(request)
        if failure:
            return failure
        items = payload.get("inputs") if isinstance(payload, dict) else payload
        records, failure = await score_items(items, encoder.encode_item)
        if failure:
            return failure
        body = {"rewards": [r["reward"] for r in records], "reward_mode": model.rm_config.reward_mode}
        for name in records[0].keys() - {"reward", "reward_mode"}:
            body[f"{name}s"] = [r[name] for r in records]  # e.g. "means", "sigmas"
        return body

    @app.post("/get_reward")
    async def get_reward(request: Request):
        payload, failure = await read_json(request)
        if failure:
            return failure
        if not isinstance(payload, dict) or "query" not in payload:
            return error(422, 'expected {"query": [text, ...]}')
        queries = payload["query"]
        if isinstance(queries, list) and not all(isinstance(q, str) for q in queries):
            return error(422, '"query" must be a list of strings')
        records, failure = await score_items(queries, lambda text, where: encoder.encode_text(text))
        if failure:
            return failure
        rewards = [r["reward"] for r in records]
        return {"rewards": rewards, "scores": rewards}

    return app


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 16) -> None:
    from discorm.model.reward_model import RewardModel

    model = RewardModel.from_pretrained(model_dir)
    app = create_app(model, max_batch_size)
    import uvicorn

    logger.info("serving %s (%s head) on http://%s:%d", model_dir, model.head.kind, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
