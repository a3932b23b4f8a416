"""Reading and checking reward-server requests before anything is queued.

Every problem becomes a :class:`RequestError` with the HTTP status and a message naming what is wrong and where
(the key, or ``item i`` for the i-th input), so a bad request is answered 4xx and never reaches the model.
"""

from __future__ import annotations

import json
import math
from typing import Any

from discorm.config import check_range
from discorm.errors import ConfigError, DataError, DiscoRMError
from discorm.model.rm_config import REWARD_MODES

OPTION_KEYS = ("reward_mode", "reward_alpha", "reward_k")
SCORE_KEYS = ("inputs", *OPTION_KEYS)


class RequestError(Exception):
    """A request the server refuses: HTTP ``status``, a message, and the indices of the bad items if any."""

    def __init__(self, status: int, message: str, items: list[int] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.items, self.headers = status, items, headers

    def body(self) -> dict:
        return {"error": str(self)} if self.items is None else {"error": str(self), "items": self.items}


async def read_json(request, max_body_bytes: int) -> Any:
    """The request body as JSON, read up to ``max_body_bytes`` (413 beyond, 400 if it is not JSON)."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise RequestError(400, f"invalid Content-Length header {declared[:40]!r}")
    if declared is not None and int(declared) > max_body_bytes:
        raise RequestError(413, f"request body of {declared} bytes is over the {max_body_bytes}-byte limit")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise RequestError(413, f"request body is over the {max_body_bytes}-byte limit")
    except ClientDisconnect:
        raise RequestError(499, "the client disconnected before sending the whole body") from None
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RequestError(400, f"malformed JSON: {str(err)[:200]}") from None


def check_reward_options(mode: str | None, alpha: float | None, head) -> None:
    """The rule for reward options given per call (a server request, ``discorm score``): a known mode, a spread
    to use when the mode needs one, and a quantile level inside (0, 1). Raises ConfigError."""
    if mode is not None and mode not in REWARD_MODES:
        raise ConfigError(f"reward_mode={mode!r} is not valid; use one of {', '.join(REWARD_MODES)}")
    if mode not in (None, "mean") and not head.distributional:
        raise ConfigError(f"reward_mode={mode!r} needs a distributional head; this model's {head.kind} head has "
                          "no spread, so use mean")
    check_range("reward_alpha", alpha, low=1e-6, high=1 - 1e-6)


def reward_options(payload: dict, head) -> dict:
    """``reward_mode`` / ``reward_alpha`` / ``reward_k`` of one request, checked (422 when invalid)."""
    options = {key: payload[key] for key in OPTION_KEYS if payload.get(key) is not None}
    for key in ("reward_alpha", "reward_k"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise RequestError(422, f'"{key}"={value!r} must be a finite number')
    try:
        check_reward_options(options.get("reward_mode"), options.get("reward_alpha"), head)
    except DiscoRMError as err:
        raise RequestError(422, str(err)) from None
    return options


def check_items(items: Any, max_items: int, name: str) -> list:
    if not isinstance(items, list) or not items:
        raise RequestError(422, f'"{name}" must be a non-empty list, found {type(items).__name__}')
    if len(items) > max_items:
        raise RequestError(413, f"{len(items)} inputs is over the limit of {max_items} per request; split it")
    return items


def score_request(payload: Any, max_items: int, head) -> tuple[list, dict]:
    """``POST /score`` body -> (inputs, reward options). A bare list is the inputs; a dict may hold
    ``inputs`` and the reward options only."""
    if isinstance(payload, list):
        return check_items(payload, max_items, "inputs"), {}
    if not isinstance(payload, dict):
        raise RequestError(422, f'expected a list of inputs or {{"inputs": [...]}}, found {type(payload).__name__}')
    unknown = sorted(set(payload) - set(SCORE_KEYS))
    if unknown:
        raise RequestError(422, f"unknown key(s) {unknown[:5]}; allowed: {', '.join(SCORE_KEYS)}")
    if "inputs" not in payload:
        raise RequestError(422, 'missing "inputs": send {"inputs": [...]} or a bare list')
    return check_items(payload["inputs"], max_items, "inputs"), reward_options(payload, head)


def reward_request(payload: Any, max_items: int, head) -> tuple[list[str], dict]:
    """``POST /get_reward`` body (OpenRLHF: ``{"query": [texts], "prompts": ..., "labels": ...}``) ->
    (texts, reward options); keys other than the query and the reward options are ignored."""
    if not isinstance(payload, dict) or "query" not in payload:
        raise RequestError(422, 'expected {"query": [text, ...]}')
    queries = check_items(payload["query"], max_items, "query")
    bad = [i for i, q in enumerate(queries) if not isinstance(q, str)]
    if bad:
        raise RequestError(422, f'"query" must be a list of strings; item {bad[0]} is a '
                                f'{type(queries[bad[0]]).__name__}', items=bad)
    return queries, reward_options(payload, head)


def encode_items(items: list, encode) -> list[list[int]]:
    """Every item through ``encode(item, where)``; all bad items are reported together (422)."""
    sequences, failures = [], {}
    for i, item in enumerate(items):
        try:
            sequences.append(encode(item, f"item {i}"))
        except DataError as err:
            failures[i] = str(err)
    if failures:
        raise RequestError(422, " ".join(failures.values()), items=sorted(failures))
    return sequences
