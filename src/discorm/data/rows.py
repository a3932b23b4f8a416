"""What every input format reads a row with: chat messages, checked values and the column mapping of a source.

The converters of ``data/pairs.py``, ``data/listwise.py`` and ``data/ratings.py`` (and a format a plugin adds) build
their records from these; ``data/formats.py`` picks the converter. Errors name where the row was read (``where``:
file:line or file row N), the column and the value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from discorm.data.images import IMAGE_PLACEHOLDER
from discorm.errors import DataError

Message = dict  # {"role": "system" | "user" | "assistant" | "tool", "content": str} + the optional MESSAGE_KEYS
ROLES = ("system", "user", "assistant", "tool")
# optional message keys the chat template reads: the assistant's reasoning and tool calls (``tool_calls`` is kept as a
# JSON text, so that an Arrow table stores every row's calls alike; ``templates.Renderer`` reads it back), and the
# name and call id of a tool turn
MESSAGE_KEYS = ("reasoning_content", "tool_calls", "name", "tool_call_id")
CHAT_KEYS = ("tools", "chat_template_kwargs")  # a row's (or an input's) keys that the chat template reads
PART_IMAGES = "images"  # the key under which read_messages leaves a message's image parts for data/media.py
TEXT_PARTS = ("text", "input_text")
IMAGE_PARTS = {"image": ("image", "url", "path"), "image_url": ("image_url",), "input_image": ("image_url",)}
MEDIA_PARTS = ("video", "video_url", "input_video", "audio", "audio_url", "input_audio")


class SkipPair(Exception):
    """A row that is well-formed but unusable; counted under ``reason`` (or an error with strict_data)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class FormatSpec:
    """How to read the rows of one source: the format's name, the column of each key the format reads (the format's
    own names, renamed by a dataset_info.json entry's ``columns``; made by ``DataFormat.spec``), the role tags
    (sharegpt), the label columns, the strength scale and, for rated rows, the head's attributes (and the heads
    that learn from ratings, named when the head does not)."""

    name: str
    columns: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    margin_column: str = "margin"
    soft_label_column: str = "soft_label"
    noise_column: str = "noise"
    strength_scale: float | None = None  # the largest |strength| a row may give (None: strengths are refused)
    attributes: tuple = ()
    rated_heads: tuple[str, ...] = ()
    base_dir: str | None = None  # relative image paths are read from here (the data file's folder, dataset_dir)

    def column(self, key: str) -> str:
        return self.columns.get(key) or key


def missing(value) -> bool:
    """None, or NaN (how CSV and parquet tables spell an empty cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def describe(value) -> str:
    """A value as an error message shows it: its type and its start (NaN as ``float ('nan')``)."""
    if value is None:
        return "an empty value"
    if isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return f"bytes that are not UTF-8 text ({value[:30]!r})"
        return f"bytes ({value[:30]!r}); store the column as UTF-8 strings"
    return f"{type(value).__name__} ({str(value)[:60]!r})"


def expect(value, types, column: str, where: str):
    """``value`` if it is of ``types``, else a DataError naming the column and what was found."""
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise DataError(f"{where}: column {column!r} should be {names}, found {describe(value)}. Fix that row "
                        "or drop it.")
    return value


def check_text(text: str, where: str) -> str:
    """The text, if it is valid Unicode (JSON's \\u escapes can make lone surrogates, which cannot be stored)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(f"{where or 'text'}: character {err.start} is a lone surrogate ({text[err.start]!r}), which "
                        "is not valid Unicode; fix the text (or its JSON \\u escapes).") from None
    return text


def message_content(content, column: str, where: str) -> tuple[str, list]:
    """A message's content -> (its text, its image parts). A text is itself; a list of TRL/OpenAI content parts
    (``{"type": "text", "text": ...}``, ``{"type": "image", "image": ...}``, ``{"type": "image_url", "image_url":
    {"url": ...}}``) is joined into one text with an ``<image>`` placeholder at each image, and each image part
    gives (its reference, or None for a bare ``{"type": "image"}`` whose image is in the row's ``images`` column,
    and where it stands)."""
    if isinstance(content, str):
        return check_text(content, where), []
    expect(content, list, column, where)
    texts, images = [], []
    for number, part in enumerate(content):
        place = f"{column} part {number}"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS:
            texts.append(check_text(expect(part.get("text"), str, f"{place}.text", where), where))
        elif kind in IMAGE_PARTS:
            ref = next((part[key] for key in IMAGE_PARTS[kind] if not missing(part.get(key))), None)
            if kind != "image" and isinstance(ref, dict):  # {"image_url": {"url": ...}}
                ref = ref.get("url")
            texts.append(IMAGE_PLACEHOLDER)
            images.append((ref, f"{where}, {place}"))
        elif kind in MEDIA_PARTS:
            raise DataError(f"{where}: {place} is a {kind} part; videos and audio are not read (images are). Drop "
                            "the part, or the row.")
        else:
            raise DataError(f"{where}: column {column!r} should be str or a list of content parts ({{\"type\": "
                            f"\"text\" | \"image\" | \"image_url\", ...}}); part {number} is {describe(part)}.")
    return "".join(texts), images


def read_messages(value, column: str, where: str, default_role: str) -> list[Message]:
    """A string, one message dict, or a list of message dicts -> a list of {"role", "content"} messages (plus the
    ``MESSAGE_KEYS`` they give; an assistant turn that calls tools may have no content). Content given as parts
    (see ``message_content``) becomes a text, its image parts left under the message's ``PART_IMAGES`` key for
    ``media.attach_images``, which moves them to the record."""
    expect(value, (str, list, dict), column, where)
    if isinstance(value, str):
        return [{"role": default_role, "content": check_text(value, where)}]
    items = [value] if isinstance(value, dict) else value
    messages = []
    for item in items:
        expect(item, dict, column, where)
        calls = item.get("tool_calls")
        if "role" not in item or ("content" not in item and calls is None):
            raise DataError(
                f"{where}: messages in column {column!r} need 'role' and 'content' keys, found {sorted(item)}."
            )
        if item["role"] not in ROLES:
            raise DataError(
                f"{where}: a message in column {column!r} has role {item['role']!r}; roles must be one of "
                f"{', '.join(ROLES)}. Rename the role in the data."
            )
        content = "" if item.get("content") is None and calls is not None else item["content"]
        text, images = message_content(content, f"{column}[{len(messages)}].content", where)
        message = {"role": item["role"], "content": text}
        for key in MESSAGE_KEYS:
            if missing(item.get(key)):
                continue
            if key == "tool_calls":
                message[key] = tool_calls_text(item[key], where)
            else:
                message[key] = check_text(expect(item[key], str, f"{column}[].{key}", where), where)
        if images:
            message[PART_IMAGES] = images
        messages.append(message)
    return messages


def _json(value, what: str, where: str, fix: str):
    """A JSON text -> its value (a value that is not a text is returned as it is)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as err:
        raise DataError(f"{where}: {what} is not valid JSON ({err}): {value[:80]!r}. {fix}") from None


def tool_calls_text(calls, where: str) -> str:
    """An assistant turn's ``tool_calls`` (a list, or its JSON text), checked -> the JSON text of
    [{"type": "function", "function": {"name": str, "arguments": {...}}}, ...]. OpenAI's form (``arguments`` as a
    JSON text) and the bare {"name", "arguments"} form are accepted; arguments must be a JSON object."""
    fix = 'Give each call as {"type": "function", "function": {"name": ..., "arguments": {...}}}.'
    calls = _json(calls, "tool_calls", where, fix)
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list):
        raise DataError(f"{where}: tool_calls should be a list of calls, found {describe(calls)}. {fix}")
    checked = []
    for i, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise DataError(f"{where}: tool call {i} has no function name (found {describe(call)}). {fix}")
        arguments = _json(function.get("arguments", {}), f"the arguments of tool call {i} ({name})", where,
                          "Give the arguments as a JSON object.")
        if not isinstance(arguments, dict):
            raise DataError(f"{where}: the arguments of tool call {i} ({name}) should be a JSON object, found "
                            f"{describe(arguments)}. Give the arguments as a JSON object.")
        entry = {"type": "function", "function": {"name": name, "arguments": arguments}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        checked.append(entry)
    return json.dumps(checked, ensure_ascii=False)


def check_tool_turns(messages: list[Message], where: str) -> None:
    """Every tool turn answers a call: it follows an assistant turn with ``tool_calls`` (or another tool turn)."""
    for i, message in enumerate(messages):
        if message["role"] != "tool":
            continue
        before = messages[i - 1] if i else None
        if before is None or not (before["role"] == "tool" or before.get("tool_calls")):
            found = f"a {before['role']} turn" if before else "nothing"
            raise DataError(f"{where}: message {i} is a tool turn (a tool's result) but follows {found}, not an "
                            "assistant turn with tool_calls; give the call that the result answers, or drop it.")


def chat_options(row, where: str, spec: FormatSpec | None = None) -> dict:
    """A row's (or a scoring input's) options for the chat template, checked: ``tools`` (a list of JSON schemas,
    or its JSON text: LlamaFactory stores a text) and ``chat_template_kwargs`` (an object); {} when none."""
    if not isinstance(row, dict):
        return {}
    options = {}
    tools_key, kwargs_key = CHAT_KEYS
    tools_column = spec.column(tools_key) if spec else tools_key
    tools = row.get(tools_column)
    if not missing(tools) and tools != "" and tools != []:
        fix = "Give a list of JSON schemas, each {\"type\": \"function\", \"function\": {\"name\": ...}}."
        tools = _json(tools, f"column {tools_column!r}", where, fix)
        if not isinstance(tools, list):
            raise DataError(f"{where}: column {tools_column!r} should be a list of tool schemas, found "
                            f"{describe(tools)}. {fix}")
        for i, tool in enumerate(tools):
            function = tool.get("function", tool) if isinstance(tool, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise DataError(f"{where}: tool {i} of column {tools_column!r} has no name (found "
                                f"{describe(tool)}). {fix}")
        options["tools"] = tools
    kwargs_column = spec.column(kwargs_key) if spec else kwargs_key
    kwargs = row.get(kwargs_column)
    if not missing(kwargs):
        kwargs = _json(kwargs, f"column {kwargs_column!r}", where, "Give an object of template variables.")
        if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
            raise DataError(f"{where}: column {kwargs_column!r} should be an object of template variables (e.g. "
                            f"{{\"enable_thinking\": false}}), found {describe(kwargs)}.")
        if kwargs:
            options["chat_template_kwargs"] = kwargs
    return options


def function_call_message(value, column: str, where: str) -> Message:
    """LlamaFactory's ``function_call`` turn (a JSON text: {"name", "arguments"} or a list of them) -> an assistant
    turn with ``tool_calls``."""
    expect(value, str, column, where)
    return {"role": "assistant", "content": "", "tool_calls": tool_calls_text(value, where)}


def with_system(prompt: list[Message], system, where: str = "") -> list[Message]:
    """The prompt with a system message first, from a ``system`` column (unless the prompt starts with one)."""
    system = None if missing(system) else expect(system, str, "system", where)
    if system and not (prompt and prompt[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *prompt]
    return prompt


def to_conversation(item, where: str = "input") -> str | tuple[list[Message], list[Message]]:
    """A scoring input -> an already rendered text, or (prompt messages, response messages).

    Accepted: a text; a list of chat messages (the last one is the response); ``{"messages": [...]}``;
    ``{"prompt": text | messages, "response": text | messages}``. The prompt's image parts stay under its messages'
    ``PART_IMAGES`` key for ``conversation_images``; an image in the response is refused (images belong to the
    prompt)."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and "messages" in item:
        item = item["messages"]
    if isinstance(item, list):
        if not item:
            raise DataError(f"{where}: the message list is empty; give at least the response message.")
        messages = read_messages(item, "messages", where, "assistant")
        return messages[:-1], _without_images(messages[-1:], where)
    if isinstance(item, dict) and "prompt" in item and "response" in item:
        response = _without_images(read_messages(item["response"], "response", where, "assistant"), where)
        if not response:
            raise DataError(f"{where}: the response is an empty message list; give the response text or message.")
        return read_messages(item["prompt"], "prompt", where, "user"), response
    raise DataError(
        f"{where}: cannot score {str(item)[:80]!r}; give a text, a list of chat messages, {{'messages': [...]}} "
        "or {'prompt': ..., 'response': ...}."
    )


def _without_images(response: list[Message], where: str) -> list[Message]:
    """A scoring input's response, refused where a content part holds an image (images belong to the prompt)."""
    for message in response:
        if message.get(PART_IMAGES):
            raise DataError(f"{message[PART_IMAGES][0][1]}: the response holds an image; images belong to the "
                            "prompt. Move the image into a prompt message (or the input's \"images\").")
    return response


def conversation_images(item, prompt: list[Message], where: str = "input") -> list[tuple]:
    """A scoring input's images, taken out of its prompt: (reference, where it stands) per image, in order. They
    come from the prompt's image parts, or from the input's ``"images"`` list (TRL's column: it also fills bare
    ``{"type": "image"}`` parts), one ``<image>`` placeholder per image (none: they open the first user message)."""
    parts = [image for message in prompt for image in message.pop(PART_IMAGES, [])]
    given = item.get("images") if isinstance(item, dict) else None
    if missing(given) or given in ([], ()):
        given = None
    elif not isinstance(given, (list, tuple)):
        given = [given]
    if given is None:
        empty = next((place for ref, place in parts if missing(ref)), None)
        if empty is not None:
            raise DataError(f"{empty}: an image part without its image; give the image in the part, or the "
                            "input's \"images\" list.")
        return parts
    if any(not missing(ref) for ref, _ in parts):
        return parts  # TRL passes both: the prompt's filled parts and the images column, the same images
    refs = [(ref, f"{where}, images[{i}]") for i, ref in enumerate(given)]
    placeholders = sum(message["content"].count(IMAGE_PLACEHOLDER) for message in prompt)
    if placeholders == 0:
        user = next((message for message in prompt if message["role"] == "user"), None)
        if user is None:
            raise DataError(f"{where}: the input gives {len(refs)} image(s) but its prompt has no user message to "
                            "hold them; images belong to the prompt.")
        user["content"] = IMAGE_PLACEHOLDER * len(refs) + user["content"]
    elif placeholders != len(refs):
        raise DataError(f"{where}: the prompt has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but the input "
                        f"gives {len(refs)} image(s); give one image per placeholder, in order.")
    return refs
