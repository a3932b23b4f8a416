"""Reward-server request bodies: read, parsed and checked before anything is queued.

A body is read up to the byte limit (413 beyond it, 400 for a bad Content-Length), parsed as JSON (400 when
malformed) and validated as the pydantic model of its route, :class:`ScoreRequest` or :class:`RewardRequest`:
more items than allowed is 413, any other wrong shape or reward option 422. An item that cannot be encoded is 422
too, all bad items together, a conversation that does not end with the assistant's response among them (it has
nothing to score). Every refusal is a :class:`RequestError` naming the key or ``item i``.
"""

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError
from starlette.requests import ClientDisconnect, Request

from discorm.data.rows import to_conversation
from discorm.errors import ConfigError, DataError
from discorm.model.rm_config import check_reward_options


class RequestError(Exception):
    """A request the server refuses: HTTP ``status``, a message, and the indices of the bad items if any."""

    def __init__(self, status: int, message: str, items: list[int] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.items, self.headers = status, items, headers

    def body(self) -> dict:
        return {"error": str(self)} if self.items is None else {"error": str(self), "items": self.items}


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The request body, streamed up to ``max_body_bytes`` (413 beyond; 499 if the client goes away)."""
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
    return bytes(body)


def _within_limit(items: Any, info: ValidationInfo) -> Any:
    """At most ``max_items`` (from the validation context) items per request, counted before they are checked."""
    limit = (info.context or {}).get("max_items")
    if isinstance(items, list) and limit is not None and len(items) > limit:
        raise PydanticCustomError("too_many_items", "{count} inputs is over the limit of {limit} per request; "
                                  "split it", {"count": len(items), "limit": limit})
    return items


Inputs = Annotated[list[Any], Field(min_length=1), BeforeValidator(_within_limit)]  # each one: Encoder.encode_item
Texts = Annotated[list[StrictStr], Field(min_length=1), BeforeValidator(_within_limit)]


class RewardOptions(BaseModel):
    """The reward options of one request. Any JSON value is taken here and judged by the one shared rule,
    :func:`check_reward_options` (as for the config, ``discorm eval`` and ``discorm score``), with the model's
    head from the validation context."""

    EXPECTED: ClassVar[str]  # the body's shape, for the messages
    reward_mode: Any = None
    reward_alpha: Any = None
    reward_k: Any = None

    @model_validator(mode="after")
    def _shared_rule(self, info: ValidationInfo):
        try:
            check_reward_options(self.reward_mode, self.reward_alpha, self.reward_k, (info.context or {}).get("head"))
        except ConfigError as err:
            raise PydanticCustomError("reward_options", "{reason}", {"reason": str(err)}) from None
        return self

    def options(self) -> dict:
        """The options given (not None), as keyword arguments of ``describe``."""
        return {key: getattr(self, key) for key in RewardOptions.model_fields if getattr(self, key) is not None}


PER_COMPLETION = ("tools", "chat_template_kwargs", "images")  # TRL's columns that go with each completion


class ScoreRequest(RewardOptions):
    """``POST /score``: ``{"inputs": [...]}`` or TRL's ``{"prompts": [...], "completions": [...]}`` (with
    ``tools``, ``chat_template_kwargs`` and ``images``, one per completion, where the data set has them) plus reward
    options and no other key, or the inputs as a bare list."""

    model_config = ConfigDict(extra="forbid")
    EXPECTED: ClassVar[str] = 'a list of inputs, {"inputs": [...]} or {"prompts": [...], "completions": [...]}'
    inputs: Inputs | None = None
    prompts: Annotated[list[Any], BeforeValidator(_within_limit)] | None = None
    completions: Inputs | None = None
    tools: Annotated[list[Any], BeforeValidator(_within_limit)] | None = None  # with completions: one per completion
    chat_template_kwargs: Annotated[list[Any], BeforeValidator(_within_limit)] | None = None  # likewise
    images: Annotated[list[Any], BeforeValidator(_within_limit)] | None = None  # likewise: TRL's images column

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:
        return {"inputs": data} if isinstance(data, list) else data

    @model_validator(mode="after")
    def _one_shape(self):
        if (self.inputs is None) == (self.completions is None and self.prompts is None):
            raise PydanticCustomError("shape", 'give "inputs", or "prompts" and "completions" (one prompt per '
                                      "completion), not both")
        for key in PER_COMPLETION:
            given = getattr(self, key)
            if given is not None and self.inputs is not None:
                raise PydanticCustomError("shape", '"{key}" goes with "completions" (one per completion); an input '
                                          'carries its own ({{"messages": [...], "{key}": ...}})', {"key": key})
            if given is not None and len(given) != len(self.completions or []):
                raise PydanticCustomError("shape", '{count} "{key}" for {completions} completions; send one per '
                                          "completion (null where there is none)",
                                          {"count": len(given), "key": key, "completions": len(self.completions or [])})
        return self

    def pairs(self) -> list[tuple[Any, Any, dict]]:
        """(prompt, completion, its tools, chat_template_kwargs and images) per completion; 422 naming the completions
        without a prompt (and the reverse)."""
        prompts, completions = self.prompts or [], self.completions or []
        if len(prompts) != len(completions):
            unpaired = list(range(min(len(prompts), len(completions)), max(len(prompts), len(completions))))
            what = "completion(s) have no prompt" if len(completions) > len(prompts) else "prompt(s) have no completion"
            raise RequestError(422, f"item(s) {unpaired}: the {what}; send one prompt per completion "
                                    f"({len(prompts)} prompts, {len(completions)} completions)", items=unpaired)
        columns = [(key, getattr(self, key)) for key in PER_COMPLETION]
        options = [{key: values[i] for key, values in columns if values is not None and values[i] is not None}
                   for i in range(len(completions))]
        return list(zip(prompts, completions, options))


class RewardRequest(RewardOptions):
    """``POST /get_reward`` (OpenRLHF): ``{"query": [text, ...]}`` plus reward options, and OpenRLHF's ``prompts``
    (one per query when given) and ``labels``; other keys are ignored."""

    model_config = ConfigDict(extra="ignore")
    EXPECTED: ClassVar[str] = '{"query": [text, ...]}'
    query: Texts
    prompts: list[Any] | None = None
    labels: Any = None

    @model_validator(mode="after")
    def _a_prompt_per_query(self):
        if self.prompts is not None and len(self.prompts) != len(self.query):
            raise PydanticCustomError("shape", "{prompts} prompts for {queries} queries; OpenRLHF sends one prompt "
                                      "per query", {"prompts": len(self.prompts), "queries": len(self.query)})
        return self


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class ClassifyRequest(RewardOptions):
    """``POST /classify`` (vLLM's pooling API, as verl's reward loop calls it): ``{"model", "input": text or
    [text, ...]}``, or vLLM's chat form ``{"model", "messages": [...]}`` (one conversation; a message's content may
    be OpenAI content parts, ``{"type": "image_url", "image_url": {"url": ...}}`` among them, as vLLM takes
    multimodal chat), plus reward options and the conversation's ``chat_template_kwargs``; vLLM's other keys
    (``use_activation``, ``mm_processor_kwargs``, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")
    EXPECTED: ClassVar[str] = '{"model": name, "input": text or [text, ...]} or {"model": name, "messages": [...]}'
    model: Any = None
    input: Annotated[Texts, BeforeValidator(_one_or_many)] | None = None
    messages: Annotated[list[Any], Field(min_length=1)] | None = None
    chat_template_kwargs: Any = None

    @model_validator(mode="after")
    def _one_shape(self):
        if (self.input is None) == (self.messages is None):
            raise PydanticCustomError("shape", 'give "input" (texts) or "messages" (one conversation), not both')
        return self

    def items(self) -> list:
        """The scoring inputs: the texts, or the one conversation."""
        if self.input is not None:
            return self.input
        if self.chat_template_kwargs is not None:
            return [{"messages": self.messages, "chat_template_kwargs": self.chat_template_kwargs}]
        return [self.messages]


def _texts_or_ids(value: Any, info: ValidationInfo) -> Any:
    """OpenAI's ``input``: one text, one list of token ids, or a list of either -> a list of inputs."""
    if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, int) for v in value)):
        value = [value]
    return _within_limit(value, info)


class EmbeddingsRequest(RewardOptions):
    """``POST /v1/embeddings`` (SGLang's OpenAI-style route, where verl reads a reward): ``{"model", "input": text,
    [text, ...], [token id, ...] or [[token id, ...], ...]}`` plus reward options; ``encoding_format`` ``float``
    (the default) or ``base64``; OpenAI's other keys (``dimensions``, ``user``) are ignored."""

    model_config = ConfigDict(extra="ignore")
    EXPECTED: ClassVar[str] = ('{"model": name, "input": text, [text, ...], [token id, ...] or [[token id, ...], '
                               '...]}')
    model: Any = None
    input: Annotated[list[Any], Field(min_length=1), BeforeValidator(_texts_or_ids)]
    encoding_format: Literal["float", "base64"] = "float"


# pydantic's error types in the server's words: {key} the key, {item} the item index, {input} the value given and
# {found} its type
WORDING = {
    "missing": 'missing "{key}"; expected {expected}',
    "extra_forbidden": "unknown key {key!r:.60} (allowed: {allowed})",
    "model_type": "expected {expected}, found {found}",
    "too_short": '"{key}" must be a non-empty list, found an empty one',
    "list_type": '"{key}" must be a non-empty list, found {found}',
    "string_type": '"{key}" must be a list of strings; item {item} is of type {found}',
    "string_unicode": "key {input!r:.60} is not valid Unicode text (it holds a lone surrogate)",
    "too_many_items": "{msg}",
    "literal_error": '"{key}" {msg}, found {input!r:.60}',
    "reward_options": "{msg}",
    "shape": "{msg}",
}


def refusal(errors: list[dict], schema: type[RewardOptions] | None = None) -> RequestError:
    """Validation errors -> one RequestError naming each key and item: 413 when there are too many items, else
    422. With the body's ``schema``, in the words above; without (FastAPI's own checks), as pydantic puts them."""
    problems = []
    for error in errors:
        loc, given = error["loc"], error.get("input")
        template = WORDING.get(error["type"]) if schema else None
        words = {"key": loc[0] if loc else "", "item": loc[1] if len(loc) > 1 else "", "where": ".".join(map(str, loc)),
                 "msg": error["msg"], "input": given, "found": type(given).__name__,
                 "expected": getattr(schema, "EXPECTED", ""), "allowed": ", ".join(getattr(schema, "model_fields", ()))}
        problems.append((template or ("{where}: {msg}" if loc else "{msg}")).format(**words))
    problems = list(dict.fromkeys(problems))
    message = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
    items = sorted({e["loc"][1] for e in errors if len(e["loc"]) > 1 and isinstance(e["loc"][1], int)})
    status = 413 if any(e["type"] == "too_many_items" for e in errors) else 422
    return RequestError(status, message, items=items or None)


def parse_body(schema: type[RewardOptions], body: bytes, head, max_items: int) -> RewardOptions:
    """A JSON body as ``schema``, its reward options checked for ``head`` (400 if it is not JSON)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RequestError(400, f"malformed JSON: {str(err)[:200]}") from None
    try:
        return schema.model_validate(payload, context={"head": head, "max_items": max_items})
    except ValidationError as err:
        raise refusal(err.errors(include_url=False), schema) from None


def check_response(item: Any, where: str) -> Any:
    """``item`` itself when it is a text or a conversation whose last turn is the assistant's (the response the
    reward is read at); DataError for a conversation of system and user turns only, or one that ends with a user
    turn, which the chat template could not even render as a response."""
    conversation = to_conversation(item, where)
    if not isinstance(conversation, str) and (role := conversation[1][-1]["role"]) != "assistant":
        roles = [m["role"] for part in conversation for m in part]
        raise DataError(f"{where}: the conversation (roles {roles}) ends with a {role} turn, not with the "
                        "assistant's response, so there is nothing to score; end it with the assistant message "
                        "to be scored.")
    return item


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
