"""Chat templates: the tokenizer's own by default, or a named built-in for models without one.

Rendering is what the model sees at inference: ``render(prompt, add_generation_prompt=True)`` is the prompt, and
the response is what ``render(prompt + response)`` adds after it, ending with the end-of-turn token (trailing
whitespace after it is dropped, so the score is read at the end-of-turn token itself; an imported model that was
trained on the whole rendering keeps it, see ``data/tokenize.py`` SCORE_POSITIONS).

Everything a conversation holds beyond its texts is handed to the template, which renders it (never DiscoRM): the
row's ``tools``, the assistant's ``tool_calls``, tool turns, ``reasoning_content`` and template variables
(``chat_template_kwargs``: the run's, overridden by the row's). ``reasoning`` (REASONING) says what becomes of an
assistant's reasoning trace before the template sees it.
"""

from __future__ import annotations

import copy
import inspect
import json
import re

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from discorm.data.rows import Message, check_tool_turns
from discorm.errors import ConfigError, DataError

REASONING = {  # what becomes of an assistant turn's reasoning trace before the chat template renders it
    "strip": "removed: a <think>...</think> (or <thinking>...</thinking>) block, the text before a closing tag "
             "that has no opening one (the policy's generation prompt opened it), everything after an opening tag "
             "that is never closed (a cut-off trace: no answer is left), and the message's reasoning_content",
    "keep": "kept: reasoning_content goes to the template, and a template that does not render reasoning_content "
            "gets it as a <think>...</think> block before the content",
}
REASONING_DEFAULT = ("unset: the messages go to the chat template as given; a <think> block in the content and "
                     "reasoning_content are rendered where the template renders them (Qwen3-style templates drop "
                     "both from assistant turns before the last user turn; most others keep a <think> block in the "
                     "content and ignore reasoning_content)")
# the arguments of the template call itself, which no template variable (chat_template_kwargs) may name
CALL_ARGUMENTS = frozenset({"messages", *inspect.signature(PreTrainedTokenizerBase.apply_chat_template).parameters}
                           - {"self", "kwargs"})
_TAGS = ("think", "thinking")
_BLOCKS = [re.compile(rf"<{tag}>.*?</{tag}>", re.S) for tag in _TAGS]

_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BUILTIN_TEMPLATES = {
    "chatml": _CHATML,
    "qwen": (
        "{% if not messages or messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
        "assistant.<|im_end|>\n{% endif %}" + _CHATML
    ),
    "llama3": (
        "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    "raw": None,
}
RAW_NAMES = ("raw", "empty")


def strip_reasoning(text: str) -> str:
    """``text`` without its reasoning trace (REASONING["strip"]); a text without one is returned unchanged."""
    if not any(f"{tag}>" in text for tag in _TAGS):
        return text
    for block in _BLOCKS:
        text = block.sub("", text)
    for tag in _TAGS:
        text = text.rpartition(f"</{tag}>")[2]
        text = text.partition(f"<{tag}>")[0]
    return text.strip()


class Renderer:
    """Turns (prompt messages, response messages) into the prompt text and the response text, with the run's
    ``reasoning`` rule (a REASONING key; None: the template's own) and template variables."""

    def __init__(self, tokenizer, template: str | None = None, reasoning: str | None = None,
                 template_kwargs: dict | None = None):
        if reasoning is not None and reasoning not in REASONING:
            raise ConfigError(f"reasoning={reasoning!r} is not valid; use one of {', '.join(REASONING)}, or leave it "
                              f"unset ({REASONING_DEFAULT}).")
        self.tokenizer = tokenizer
        self.reasoning = reasoning
        self.template_kwargs = dict(template_kwargs or {})
        self.name = template or "tokenizer"
        self.raw = template in RAW_NAMES
        if self.raw:
            self.chat_template = None
        elif template is None:
            if not getattr(tokenizer, "chat_template", None):
                raise ConfigError(
                    "the tokenizer has no chat template; set `template` to one of "
                    f"{', '.join(BUILTIN_TEMPLATES)} (raw concatenates the text unchanged)."
                )
            self.chat_template = None
        elif template in BUILTIN_TEMPLATES:
            self.chat_template = BUILTIN_TEMPLATES[template]
        else:
            raise ConfigError(
                f"template={template!r} is not known; use the tokenizer's own (leave it unset) or one of "
                f"{', '.join(BUILTIN_TEMPLATES)}, empty."
            )
        source = "" if self.raw else self.chat_template or tokenizer.chat_template
        self.renders_reasoning = "reasoning_content" in str(source)  # the template reads a message's trace

    def as_given(self) -> Renderer:
        """This renderer without the reasoning rule: how a text is read back (its trace is part of what was
        rendered)."""
        plain = copy.copy(self)
        plain.reasoning = None
        return plain

    def prepare(self, messages: list[Message], where: str = "") -> list[Message]:
        """The messages as the template gets them: the empty optional keys (an Arrow table's nulls) dropped,
        ``tool_calls`` read from its JSON text, every tool turn answering a call, and the reasoning rule applied."""
        prepared = []
        for message in messages:
            message = {k: v for k, v in message.items() if k in ("role", "content") or v is not None}
            if isinstance(message.get("tool_calls"), str):
                message["tool_calls"] = json.loads(message["tool_calls"])
            if message["role"] == "assistant" and self.reasoning == "strip":
                message.pop("reasoning_content", None)
                message["content"] = strip_reasoning(message["content"])
            elif message.get("reasoning_content") and self.reasoning == "keep" and not self.renders_reasoning:
                trace = message.pop("reasoning_content")
                message["content"] = f"<think>\n{trace}\n</think>\n\n{message['content']}"
            prepared.append(message)
        check_tool_turns(prepared, where or "conversation")
        return prepared

    def variables(self, options: dict | None, where: str) -> dict:
        """The template variables: the run's ``chat_template_kwargs`` overridden by the row's, and the row's
        ``tools``; a variable that is an argument of ``apply_chat_template`` itself is refused."""
        variables = {**self.template_kwargs, **(options or {}).get("chat_template_kwargs", {})}
        clash = sorted(CALL_ARGUMENTS & set(variables))
        if clash:
            raise DataError(f"{where or 'conversation'}: chat_template_kwargs {clash} name arguments of the "
                            "template call itself, not template variables; rename or drop them.")
        tools = (options or {}).get("tools")
        return {**variables, "tools": tools} if tools else variables

    def render(self, messages: list[Message], add_generation_prompt: bool = False, where: str = "",
               options: dict | None = None) -> str:
        """``options``: the row's ``tools`` and ``chat_template_kwargs`` (see ``rows.chat_options``)."""
        messages = self.prepare(messages, where)
        variables = self.variables(options, where)
        if self.raw:
            if "tools" in variables or any("tool_calls" in m for m in messages):
                raise DataError(f"{where or 'conversation'}: the raw template concatenates texts and cannot show "
                                "tools or tool calls; use the tokenizer's chat template or a built-in one.")
            return "".join(m["content"] for m in messages)
        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt, **variables)
        except (TemplateError, TypeError, ValueError) as err:  # templates raise on what they do not accept
            roles = [m["role"] for m in messages]
            raise DataError(
                f"{where or 'conversation'}: the chat template ({self.name}) rejects this conversation with roles "
                f"{roles}: {err}. Fix the conversation, or set `template: chatml` (accepts any order of roles)."
            ) from None

    def render_prompt(self, prompt: list[Message], where: str = "", options: dict | None = None) -> str:
        if self.raw:
            return self.render(prompt, where=where, options=options)
        return self.render(prompt, add_generation_prompt=True, where=where, options=options) if prompt else ""

    def render_response(self, prompt: list[Message], prompt_text: str, response: list[Message], where="",
                        whole: bool = False, options: dict | None = None) -> str:
        """The text the response adds after ``prompt_text``, through its end-of-turn token; ``whole``: also the
        whitespace the template writes after it (ChatML's ``\n`` after ``<|im_end|>``)."""
        if self.raw:
            return self.render(response, where=where, options=options)
        full = self.render(prompt + response, where=where, options=options)
        full = full if whole else full.rstrip()
        if not full.startswith(prompt_text):
            raise DataError(
                f"{where}: the chat template does not render the prompt as a prefix of the conversation, so the "
                "response cannot be located; use `template: chatml` (or another built-in) for this model."
            )
        return full[len(prompt_text) :]
