"""`discorm serve`: rewards over HTTP for RL loops (FastAPI + uvicorn).

- ``POST /score``: a list of inputs, or ``{"inputs": [...], "reward_mode", "reward_alpha", "reward_k"}`` ->
  ``{"rewards", "reward_mode"}`` plus the head's ``means``/``sigmas``/``attributes``/... per input.
- ``POST /score`` also takes TRL's ``{"prompts": [...], "completions": [...]}`` (texts or messages).
- ``POST /get_reward`` (OpenRLHF): ``{"query": [rendered texts], "prompts", "labels"}`` -> ``{"rewards", "scores"}``
  and, for a distributional or uncertainty-aware head, ``extra_logs`` with the mean, spreads and a quantile.
- ``POST /classify`` (vLLM's pooling API, verl's reward loop): ``{"model", "input"}`` (or ``"messages"``) ->
  ``{"data": [{"index", "probs"}]}``, the reward last in ``probs``.
- ``POST /v1/embeddings`` (SGLang's route, verl's reward loop): ``{"model", "input": texts or token ids}`` ->
  ``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}]}``, the reward last in
  ``embedding``.
- With a policy tokenizer (``--policy-tokenizer``) every rendered text is read back into messages and rendered
  with the model's own template (``data/retemplate.py``); without one, texts are scored as given.
- ``GET /health`` (open to all) and ``GET /metrics`` (Prometheus); with an API key every other route needs it.

Images (a vision-language model): an input's prompt may hold images, as content parts (``{"type": "image_url",
"image_url": {"url": ...}}``, ``{"type": "image", "image": ...}``) or as the input's ``"images"`` list with
``<image>`` placeholders (TRL's ``images``, one list per completion). Data URIs are always read; file paths only
under the operator's ``media_root`` (none: paths are refused), relative ones from there; http(s) URLs are fetched
only with ``allow_image_urls``. Every image is checked before it is queued (``data/images.py``): a bad one is a 422
naming its item.

Who may call it: a POST body must be sent as ``Content-Type: application/json``, a type a web page cannot send to
another origin without the browser asking first (a CORS preflight, which this server does not answer). On a
loopback address every request's ``Host`` must name the loopback (``localhost``, ``127.0.0.1``, ``[::1]``) and the
server's port, so a web page whose own domain name was re-pointed at 127.0.0.1 (DNS rebinding) gets nothing. Any
other address needs an API key, which a web page does not have; clients reach such a server by any name, so its
``Host`` is not checked.

Refusals are JSON ``{"error", "items"?}``: 400 malformed JSON, 401 missing or wrong API key, 408 the body did
not arrive within the deadline, 413 body or item count over the limit, 415 a body not sent as JSON, 421 a
``Host`` that does not name the loopback server, 422 a bad shape, reward option or item (all bad items by index;
a conversation must end with the assistant's response), 503 + ``Retry-After`` queue full or not scored within
the deadline, 500 a server bug (logged; serving goes on). A request whose client disconnects, or whose deadline
passes, leaves the queue unscored. Shutdown (SIGTERM / Ctrl-C) finishes the requests in flight.
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations of routes and dependencies at run time.

import asyncio
import base64
import hmac
import ipaddress
import logging
import math
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated

import numpy as np

from discorm.errors import ConfigError, DataError, DiscoRMError

try:
    import uvicorn
    from fastapi import APIRouter, Depends, FastAPI, Request, Security
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
    from prometheus_client.exposition import choose_encoder
except ModuleNotFoundError as missing:
    raise DiscoRMError(f"the reward server needs FastAPI, uvicorn and prometheus-client ({missing.name} is not "
                       "installed): pip install 'discorm[serve]'.") from None

from discorm.data.images import ImagePolicy
from discorm.data.retemplate import Retemplater
from discorm.data.rows import describe as describe_value
from discorm.data.tokenize import Encoder
from discorm.model.inference import describe
from discorm.model.loading import load_policy_tokenizer
from discorm.model.reward_model import RewardModel
from discorm.serve.batching import ItemsFailed, MicroBatcher, QueueFull
from discorm.serve.metrics import RequestMetrics, ServerMetrics
from discorm.serve.validation import (
    ClassifyRequest,
    EmbeddingsRequest,
    RequestError,
    RewardOptions,
    RewardRequest,
    ScoreRequest,
    check_response,
    encode_items,
    parse_body,
    read_body,
    refusal,
)

logger = logging.getLogger(__name__)

API_KEY_ENV = "DISCORM_API_KEY"
RETRY_AFTER_S = 1
BUSY = {"Retry-After": str(RETRY_AFTER_S)}


@dataclass
class Server:
    """What the routes of one app share (``app.state.server``)."""

    model: RewardModel
    reader: Retemplater  # the model's Encoder, reading texts in the policy's format when there is one
    batcher: MicroBatcher
    metrics: ServerMetrics
    name: str | None  # the model's folder name, never a path
    api_key: str | None
    hosts: frozenset[str] | None  # the names a request's Host may give (with the server's port); None: any
    max_items: int
    max_body_bytes: int
    max_queue_items: int
    request_timeout_s: float


async def current_server(request: Request) -> Server:
    return request.app.state.server


ServerDep = Annotated[Server, Depends(current_server)]


async def request_deadline(server: ServerDep) -> float:
    """When the request must be answered, on the event loop's clock (one value per request: dependencies are
    cached)."""
    return asyncio.get_running_loop().time() + server.request_timeout_s


Deadline = Annotated[float, Depends(request_deadline)]


async def check_host(request: Request, server: ServerDep) -> None:
    """421 unless the ``Host`` header names one of the server's names and the port it serves on (see the module
    docstring). Starlette's TrustedHostMiddleware ignores the port and answers in plain text, hence this one."""
    if server.hosts is None:
        return
    given = request.headers.get("host", "")
    name, port = split_host(given)
    served = request.scope.get("server")
    if name not in server.hosts or (served and served[1] is not None and port != served[1]):
        where = f":{served[1]}" if served and served[1] is not None else ""
        raise RequestError(421, f"the Host header {given[:80]!r} does not name this loopback server; connect to "
                                f"http://127.0.0.1{where} (or localhost{where}). To reach the server under another "
                                "name, bind it to that address (--host) with an API key.")


def split_host(value: str) -> tuple[str, int | None]:
    """A Host header -> (lower-case name, port: 80 when none is given; None when it is not a port)."""
    if value.startswith("["):  # an IPv6 address, [::1]:8000
        name, _, rest = value[1:].partition("]")
        if rest and not rest.startswith(":"):
            return name.lower(), None
        port = rest[1:]
    else:
        name, _, port = value.partition(":")
    if not port:
        return name.lower(), 80
    return name.lower(), int(port) if port.isdigit() else None


bearer_key = HTTPBearer(auto_error=False)
header_key = APIKeyHeader(name="X-API-Key", auto_error=False)
query_key = APIKeyQuery(name="api_key", auto_error=False)  # for clients that only take a URL (OpenRLHF)


async def require_key(server: ServerDep, bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_key)],
                      header: Annotated[str | None, Security(header_key)],
                      query: Annotated[str | None, Security(query_key)]) -> None:
    """401 unless the app has no key or the request carries it, in any of the three places."""
    if server.api_key is None:
        return
    supplied = (bearer.credentials if bearer else None) or header or query or ""
    if not hmac.compare_digest(supplied.encode(), server.api_key.encode()):
        raise RequestError(401, "missing or wrong API key; send the header `Authorization: Bearer <key>` (or "
                                "`X-API-Key: <key>`)", headers={"WWW-Authenticate": "Bearer"})


class JSONBody:
    """Dependency: the body read within the deadline (408 if it does not arrive in time) as a ``schema``."""

    def __init__(self, schema: type[RewardOptions]):
        self.schema = schema

    async def __call__(self, request: Request, server: ServerDep, deadline: Deadline) -> RewardOptions:
        content_type = request.headers.get("content-type", "")
        if content_type.partition(";")[0].strip().lower() != "application/json":
            raise RequestError(415, f"the body must be JSON sent with the header `Content-Type: application/json` "
                                    f"(found {content_type[:60] or 'none'!r})")
        try:
            body = await asyncio.wait_for(read_body(request, server.max_body_bytes),
                                          deadline - asyncio.get_running_loop().time())
        except asyncio.TimeoutError:
            raise RequestError(408, f"the request body did not arrive within {server.request_timeout_s} s") from None
        return parse_body(self.schema, body, server.model.head, server.max_items)


def encode_inputs(server: Server, items: list) -> list[list[int]]:
    """Scoring inputs -> token sequences; 422 naming every bad item, a conversation without a response among them."""
    return encode_items(items, lambda item, where: server.reader.encode_item(check_response(item, where), where))


def encode_pairs(server: Server, pairs: list[tuple]) -> list[list[int]]:
    """TRL's (prompt, completion, options) -> token sequences; a completion given as messages must end with the
    assistant's turn (an empty or missing one is named by the reader)."""
    def encode(pair: tuple, where: str) -> list[int]:
        prompt, completion, options = pair
        if completion:
            check_response({"prompt": [], "response": completion}, where)
        return server.reader.encode_joined(prompt, completion, where, options)

    return encode_items(pairs, encode)


async def score_sequences(server: Server, request: Request, sequences: list[list[int]], options: dict,
                          deadline: float) -> list[dict]:
    """Queue the sequences, wait for their head params until the deadline and describe them with ``options``."""
    return described(server, await head_params(server, request, sequences, deadline), options)


async def head_params(server: Server, request: Request, sequences: list[list[int]], deadline: float):
    """Queue the sequences and wait for their head params (N, K) until the deadline, while the client is there:
    when it disconnects or the deadline passes, the queued work is cancelled, never scored."""
    try:
        future = server.batcher.submit(sequences)
    except QueueFull as err:
        raise RequestError(503, f"the server is busy ({err}); retry in {RETRY_AFTER_S} s", headers=BUSY) from None
    gone = asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait({future, gone}, timeout=deadline - asyncio.get_running_loop().time(),
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not future.done():  # the client went away, the deadline passed or this request was cancelled
            future.cancel()
    if future.cancelled():
        if gone.done() and not gone.cancelled():
            raise RequestError(499, "the client disconnected before its items were scored")
        raise RequestError(503, f"not scored within {server.request_timeout_s} s; the server is busy",
                           headers=BUSY)
    try:
        return future.result()
    except ItemsFailed as err:
        raise RequestError(422, str(err), items=sorted(err.failures)) from None


async def client_gone(request: Request) -> None:
    """Returns once the client disconnects: the body has been read, so the next ASGI message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def described(server: Server, params, options: dict) -> list[dict]:
    """``describe`` records of the head params with ``options``; 422 naming the items whose reward is not finite."""
    records = describe(server.model, params, **options)
    bad = [i for i, r in enumerate(records) if not math.isfinite(r["reward"])]
    if bad:
        raise RequestError(422, f"the reward of item(s) {bad} is not finite with these reward options", items=bad)
    return records


router = APIRouter()
KEYED = [Security(require_key)]


@router.get("/health")
async def health(server: ServerDep):
    """Liveness and load: the model, its head and reward mode, the queue depth, the most items per request."""
    return {"status": "ok", "model": server.name, "head": server.model.head.kind,
            "reward_mode": server.model.rm_config.reward_mode, "queue_depth": server.batcher.pending_items,
            "max_queue_items": server.max_queue_items, "max_items": server.max_items}


@router.get("/metrics", dependencies=KEYED)
async def prometheus_metrics(request: Request, server: ServerDep) -> Response:
    """The app's Prometheus series, in the format the scraper's ``Accept`` header asks for."""
    encode, content_type = choose_encoder(request.headers.get("accept"))  # text format 0.0.4 unless asked otherwise
    return Response(encode(server.metrics.registry), media_type=content_type)


@router.post("/score", dependencies=KEYED)
async def score(body: Annotated[ScoreRequest, Depends(JSONBody(ScoreRequest))], request: Request,
                server: ServerDep, deadline: Deadline):
    """Rewards of the inputs (texts, chat messages, ``{"prompt", "response"}``) or of TRL's prompts + completions,
    with the request's reward options."""
    sequences = encode_inputs(server, body.inputs) if body.inputs is not None else encode_pairs(server, body.pairs())
    records = await score_sequences(server, request, sequences, body.options(), deadline)
    answer = {"rewards": [r["reward"] for r in records], "reward_mode": records[0]["reward_mode"]}
    for key in records[0].keys() - {"reward", "reward_mode"}:  # "means", "sigmas", "sigmas_epistemic", ...
        answer[plural(key)] = [r[key] for r in records]
    return answer


def plural(key: str) -> str:
    """A per-item summary key as the name of its list: mean -> means, sigma_epistemic -> sigmas_epistemic,
    attributes and attribute_sigmas as they are."""
    if key.endswith("s"):
        return key
    if key.startswith("sigma_"):
        return f"sigmas_{key.removeprefix('sigma_')}"
    return f"{key}s"


@router.post("/get_reward", dependencies=KEYED)
async def get_reward(body: Annotated[RewardRequest, Depends(JSONBody(RewardRequest))], request: Request,
                     server: ServerDep, deadline: Deadline):
    """OpenRLHF's remote reward model: rewards of rendered conversations (prompt + response; ``prompts`` and
    ``labels`` are accepted and not needed). For a distributional head or one with epistemic uncertainty,
    ``extra_logs`` holds per query the ``mean``, the spreads (``sigma``, ``sigma_aleatoric``, ``sigma_epistemic``)
    and, for a distributional head, the quantile at the request's ``reward_alpha`` (``quantile_<alpha>``)."""
    sequences = encode_inputs(server, body.query)
    params = await head_params(server, request, sequences, deadline)
    records = described(server, params, body.options())
    rewards = [r["reward"] for r in records]
    answer = {"rewards": rewards, "scores": rewards}
    head = server.model.head
    if head.distributional or head.epistemic:
        logged = [key for key in ("mean", "sigma", "sigma_aleatoric", "sigma_epistemic") if key in records[0]]
        answer["extra_logs"] = {key: [r[key] for r in records] for key in logged}
    if head.distributional:
        alpha = body.reward_alpha if body.reward_alpha is not None else server.model.rm_config.reward_alpha
        quantiles = described(server, params, {"reward_mode": "lower_quantile", "reward_alpha": alpha})
        answer["extra_logs"][f"quantile_{alpha:g}"] = [r["reward"] for r in quantiles]
    return answer


@router.post("/classify", dependencies=KEYED)
async def classify(body: Annotated[ClassifyRequest, Depends(JSONBody(ClassifyRequest))], request: Request,
                   server: ServerDep, deadline: Deadline):
    """vLLM's pooling API as verl's reward loop reads it (``data[i].probs[-1]``): per input ``probs`` = [reward] for
    a scalar head, [mean, sigma, reward] for a distributional one; the reward by the request's reward options."""
    sequences = encode_inputs(server, body.items())
    records = await score_sequences(server, request, sequences, body.options(), deadline)
    data = [{"index": i, "object": "classification", "label": "reward", "num_classes": len(values), "probs": values}
            for i, values in enumerate(reward_last(server, records))]
    tokens = sum(map(len, sequences))
    return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
            "model": body.model if isinstance(body.model, str) else server.name, "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}}


def reward_last(server: Server, records: list[dict]) -> list[list[float]]:
    """Per item the values an RL loop reads the reward from as the last one: [reward] for a scalar head, [mean,
    sigma, reward] for a distributional one."""
    spread = server.model.head.distributional
    return [[r["mean"], r["sigma"], r["reward"]] if spread else [r["reward"]] for r in records]


@router.post("/v1/embeddings", dependencies=KEYED)
async def embeddings(body: Annotated[EmbeddingsRequest, Depends(JSONBody(EmbeddingsRequest))], request: Request,
                     server: ServerDep, deadline: Deadline):
    """SGLang's embeddings route as verl reads a reward from it (``data[i].embedding[-1]``): per input the
    ``embedding`` [reward] for a scalar head, [mean, sigma, reward] for a distributional one. A text is a rendered
    conversation (re-templated with a policy tokenizer), token ids are scored as given."""
    encoder = server.reader.encoder

    def encode(item, where: str) -> list[int]:
        if isinstance(item, str):
            return server.reader.encode_item(item, where)
        if isinstance(item, list):
            return encoder.encode_ids(item, where)
        raise DataError(f"{where}: expected a text or a list of token ids, found {describe_value(item)}.")

    sequences = encode_items(body.input, encode)
    records = await score_sequences(server, request, sequences, body.options(), deadline)
    vectors = reward_last(server, records)
    if body.encoding_format == "base64":
        vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    tokens = sum(map(len, sequences))
    return {"object": "list", "model": body.model if isinstance(body.model, str) else server.name,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


async def refused(_request: Request, err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    return await refused(request, refusal(err.errors()))


async def internal_error(request: Request, err: Exception) -> JSONResponse:
    """A server bug. Starlette re-raises it once this answer is sent, so uvicorn logs its traceback (and closes
    that connection); the server goes on serving."""
    logger.error("unexpected error on %s %s: %s: %s", request.method, request.url.path, type(err).__name__, err)
    return JSONResponse({"error": "internal server error (logged)"}, status_code=500)


@asynccontextmanager
async def lifespan(app: FastAPI):
    """The micro-batcher runs while the server does; it stops once the requests in flight are answered."""
    app.state.server.batcher.start()
    try:
        yield
    finally:
        await app.state.server.batcher.stop()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def check_access(host: str, api_key: str | None, key_source: str = "api_key") -> None:
    """Who may reach the server: a key must be sendable (not blank, no whitespace at its ends: a header cannot
    carry that), and a host other than a loopback address needs one."""
    if api_key is not None and (not api_key.strip() or api_key != api_key.strip()):
        what = "is blank" if not api_key.strip() else "begins or ends with whitespace"
        raise ConfigError(f"{key_source} {what}, so no client could send it in a header; give a key of visible "
                          "characters (e.g. from `openssl rand -hex 16`), or none on a loopback host.")
    if api_key is None and not is_loopback(host):
        raise ConfigError(f"--host {host} exposes the reward server beyond this machine, so it needs an API key: "
                          f"pass --api-key KEY or set {API_KEY_ENV}, or bind to 127.0.0.1.")


def model_name(path: str | None) -> str | None:
    """The last part of a model's folder or hub name: /health and /classify show no paths."""
    return (PurePath(path).name or None) if path else None


def image_policy(media_root: str | None, allow_urls: bool, max_pixels: int, max_bytes: int) -> ImagePolicy:
    """The server's image policy: paths only under ``media_root`` (an existing folder), relative ones from there."""
    if media_root is not None and not Path(media_root).is_dir():
        raise ConfigError(f"--media-root {media_root} is not a folder; name the folder whose images clients may "
                          "send by path, or leave it out (clients then send data URIs).")
    for key, value in (("--max-image-pixels", max_pixels), ("--max-image-bytes", max_bytes)):
        if value <= 0:
            raise ConfigError(f"{key} {value} must be positive.")
    root = str(Path(media_root).resolve()) if media_root is not None else None
    return ImagePolicy(base_dir=root, media_root=root, allow_paths=root is not None, allow_urls=allow_urls,
                       max_pixels=max_pixels, max_bytes=max_bytes)


def create_app(model, max_batch_size: int = 16, max_items: int = 256, max_body_bytes: int = 4_000_000,
               api_key: str | None = None, max_queue_items: int = 1024, request_timeout_s: float = 30.0,
               name: str | None = None, max_wait_ms: float = 5.0, policy_tokenizer=None,
               host: str = "127.0.0.1", media_root: str | None = None, allow_image_urls: bool = False,
               max_image_pixels: int = ImagePolicy.max_pixels, max_image_bytes: int = ImagePolicy.max_bytes) -> FastAPI:
    """The ASGI app. ``api_key``: when set, every scoring route and /metrics need it (``Authorization: Bearer
    KEY``, ``X-API-Key: KEY`` or ``?api_key=KEY``); /health stays open for liveness probes. ``policy_tokenizer``
    (a tokenizer, its folder or name): texts are rendered by its chat template and are re-templated. ``host``: the
    address it is served on; on a loopback address (the default) every request's ``Host`` header must name the
    loopback and the server's port (421 otherwise; a test client needs ``base_url="http://127.0.0.1"``), any other
    address needs ``api_key``. ``name``: shown by /health (default: the base model's folder name). Images (see
    the module docstring): ``media_root`` the one folder whose files may be named, ``allow_image_urls`` fetch
    http(s) URLs, ``max_image_pixels`` / ``max_image_bytes`` the largest image taken."""
    check_access(host, api_key)
    policy = image_policy(media_root, allow_image_urls, max_image_pixels, max_image_bytes)
    if max_queue_items < max_items:
        raise ConfigError(f"the queue ({max_queue_items} items) must hold at least one full request ({max_items} "
                          "items).")
    model.eval()
    metrics = ServerMetrics()
    batcher = MicroBatcher(model, max_batch_size, max_wait_ms, max_queue_items, metrics)
    app = FastAPI(title="DiscoRM reward server", lifespan=lifespan, dependencies=[Depends(check_host)])
    reader = Retemplater(Encoder.for_model(model), load_policy_tokenizer(policy_tokenizer))
    reader.encoder.image_policy = policy
    hosts = LOOPBACK_NAMES | {host.lower()} if is_loopback(host) else None
    app.state.server = Server(model, reader, batcher, metrics, name or model_name(model.rm_config.base_model),
                              api_key, hosts, max_items, max_body_bytes, max_queue_items, request_timeout_s)
    app.include_router(router)
    app.add_middleware(RequestMetrics, metrics=metrics)
    for error, handler in ((RequestError, refused), (RequestValidationError, invalid_request),
                           (Exception, internal_error)):
        app.add_exception_handler(error, handler)
    return app


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 16,
          api_key: str | None = None, max_items: int = 256, max_queue_items: int = 1024,
          request_timeout_s: float = 30.0, max_body_bytes: int = 4_000_000,
          policy_tokenizer: str | None = None, media_root: str | None = None, allow_image_urls: bool = False,
          max_image_pixels: int = ImagePolicy.max_pixels, max_image_bytes: int = ImagePolicy.max_bytes) -> None:
    """Load a model and serve it until SIGTERM / Ctrl-C (in-flight requests are finished first). A host other
    than a loopback address needs an API key (``api_key`` or the DISCORM_API_KEY environment variable)."""
    key_source = "--api-key" if api_key is not None else API_KEY_ENV
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    check_access(host, api_key, key_source)
    for key, value in (("--batch-size", max_batch_size), ("--max-items", max_items), ("--max-queue", max_queue_items),
                       ("--timeout", request_timeout_s), ("--max-body-bytes", max_body_bytes)):
        if value <= 0:
            raise ConfigError(f"{key} {value} must be positive.")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port; use a number from 1 to 65535 (0: any free port).")
    image_policy(media_root, allow_image_urls, max_image_pixels, max_image_bytes)  # before the model: fails fast
    policy = load_policy_tokenizer(policy_tokenizer)  # before the model: an unknown name fails fast
    model = RewardModel.from_pretrained(model_dir)
    app = create_app(model, max_batch_size, max_items, max_body_bytes, api_key=api_key,
                     max_queue_items=max_queue_items, request_timeout_s=request_timeout_s,
                     name=Path(model_dir).resolve().name, policy_tokenizer=policy, host=host, media_root=media_root,
                     allow_image_urls=allow_image_urls, max_image_pixels=max_image_pixels,
                     max_image_bytes=max_image_bytes)
    logger.info("serving %s (%s head) on http://%s:%d%s", model_dir, model.head.kind, host, port,
                " (API key required)" if api_key else "")
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=request_timeout_s + 5)
