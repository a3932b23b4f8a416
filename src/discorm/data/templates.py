"""Chat templates: the tokenizer's own by default, or a named built-in for models without one.

Rendering is what the model sees at inference: ``render(prompt, add_generation_prompt=True)`` is the prompt, and
the response is what ``render(prompt + response)`` adds after it, ending with the end-of-turn token (trailing
whitespace after it is dropped, so the score is read at the end-of-turn token itself; an imported model that was
trained on the whole rendering keeps it, see ``data/tokenize.py`` SCORE_POSITIONS).
"""

from __future__ import annotations

from jinja2 import TemplateError

from discorm.data.rows import Message
from discorm.errors import ConfigError, DataError

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


class Renderer:
    """Turns (prompt messages, response messages) into the prompt text and the response text."""

    def __init__(self, tokenizer, template: str | None = None):
        self.tokenizer = tokenizer
        self.name = template or "tokenizer"
        if template in RAW_NAMES:
            self.raw, self.chat_template = True, None
            return
        self.raw = False
        if template is None:
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

    def render(self, messages: list[Message], add_generation_prompt: bool = False, where: str = "") -> str:
        if self.raw:
            return "".join(m["content"] for m in messages)
        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except TemplateError as err:  # templates raise on conversations they do not accept (role order, ...)
            roles = [m["role"] for m in messages]
            raise DataError(
                f"{where or 'conversation'}: the chat template ({self.name}) rejects this conversation with roles "
                f"{roles}: {err}. Fix the conversation, or set `template: chatml` (accepts any order of roles)."
            ) from None

    def render_prompt(self, prompt: list[Message], where: str = "") -> str:
        if self.raw:
            return self.render(prompt)
        return self.render(prompt, add_generation_prompt=True, where=where) if prompt else ""

    def render_response(self, prompt: list[Message], prompt_text: str, response: list[Message], where="",
                        whole: bool = False) -> str:
        """The text the response adds after ``prompt_text``, through its end-of-turn token; ``whole``: also the
        whitespace the template writes after it (ChatML's ``\n`` after ``<|im_end|>``)."""
        if self.raw:
            return self.render(response)
        full = self.render(prompt + response, where=where)
        full = full if whole else full.rstrip()
        if not full.startswith(prompt_text):
            raise DataError(
                f"{where}: the chat template does not render the prompt as a prefix of the conversation, so the "
                "response cannot be located; use `template: chatml` (or another built-in) for this model."
            )
        return full[len(prompt_text) :]
