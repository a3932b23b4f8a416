"""Re-templating: texts rendered with a policy's chat template, read back into chat messages, so that the reward
model scores each conversation in its own format (its template, its truncation rule: the one :class:`Encoder`).

An RL loop hands the reward model what the policy produced: the prompt rendered with the *policy's* chat template
(its special tokens, a BOS, the generation prompt) and the completion, often with the policy's EOS at its end.
:class:`ChatFormat` learns how a template marks turns by rendering probe conversations whose contents are
placeholders: the text before the first turn (per first role), the texts between two turns (per pair of roles,
the generation prompt among them) and what may follow the last one (the end-of-turn text, EOS, pad). ``parse``
reads a text back into messages with those markers, after dropping leading BOS tokens (a tokenizer and a template
may each have added one), and checks the result by rendering it again: a text the template cannot have produced is
refused with a :class:`DataError` naming the item, never guessed.

:class:`Retemplater` applies this to scoring inputs: with a policy tokenizer every rendered text (and every text
prompt + completion pair) is parsed and re-rendered by the reward model's encoder; without one, texts are scored as
given, and the first text that does not look like the reward model's own template is logged once per process with
the fix. A reward model trained with ``reasoning: strip`` reads a text in its own format back into messages too, so
that the traces in it are removed before scoring, as they were in training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from discorm.data.rows import CHAT_KEYS, Message, check_text, conversation_images, to_conversation
from discorm.data.templates import Renderer
from discorm.data.tokenize import Encoder
from discorm.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

_PROBE_ROLES = (("system", "user", "assistant", "user", "assistant"), ("user", "assistant", "user", "assistant"))
_MARK = "DISCORMPROBE{}X"  # a placeholder content that no template changes (trim, escaping)
_warned = {"foreign": False}  # one warning per process for texts in a foreign format


def _split(text: str, count: int) -> list[str] | None:
    """``text`` cut at the placeholders 0..count-1 -> the count + 1 pieces around them (None: one is missing)."""
    pieces, pos = [], 0
    for i in range(count):
        at = text.find(_MARK.format(i), pos)
        if at < 0:
            return None
        pieces.append(text[pos:at])
        pos = at + len(_MARK.format(i))
    return pieces + [text[pos:]]


def _squash(text: str) -> str:
    return "".join(text.split())


@dataclass
class ChatFormat:
    """How one chat template marks turns, learnt from its own renderings (see the module docstring)."""

    name: str
    renderer: Renderer
    starts: dict[str, str] = field(default_factory=dict)  # first role -> the text before its content
    separators: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (role, next role) -> texts between
    ends: list[str] = field(default_factory=list)  # what may follow the last content, longest first
    specials: list[str] = field(default_factory=list)  # the tokenizer's special tokens: never inside a content
    bos: str = ""

    @classmethod
    def learn(cls, renderer: Renderer, name: str) -> ChatFormat:
        """Render the probe conversations (those the template refuses are skipped) and keep their markers."""
        tokenizer = renderer.tokenizer
        chat = cls(name, renderer, bos=getattr(tokenizer, "bos_token", None) or "")
        chat.specials = [tok for tok in getattr(tokenizer, "all_special_tokens", []) if tok]
        ends = set(chat.specials)
        probes = [(roles, False) for roles in _PROBE_ROLES] + [(("system", "user"), True), (("user",), True)]
        for roles, generation in probes:
            messages = [{"role": role, "content": _MARK.format(i)} for i, role in enumerate(roles)]
            try:
                text = renderer.render(messages, add_generation_prompt=generation)
            except Exception:  # noqa: BLE001 - a template may raise anything on a conversation it refuses
                continue
            pieces = _split(chat.strip_bos(text), len(roles))
            if pieces is None:  # the template dropped or rewrote a message
                continue
            chat.starts.setdefault(roles[0], pieces[0])
            for (role, after), piece in zip(zip(roles, roles[1:]), pieces[1:-1]):
                chat.separators.setdefault((role, after), set()).add(piece)
            if generation:  # the generation prompt: what lies between the last prompt turn and the completion
                chat.separators.setdefault((roles[-1], "assistant"), set()).add(pieces[-1])
            else:
                ends |= {pieces[-1], pieces[-1].rstrip()}
        chat.ends = sorted(ends - {""}, key=len, reverse=True)
        replies = chat.separators.get(("user", "assistant"), set())
        if "user" not in chat.starts or not replies or "" in replies:
            raise ConfigError(f"the chat template of {name} does not mark where a user turn and an assistant turn "
                              "begin, so a text it rendered cannot be read back into messages; give a tokenizer "
                              "whose chat template marks the turns.")
        return chat

    def strip_bos(self, text: str) -> str:
        while self.bos and text.startswith(self.bos):
            text = text[len(self.bos) :]
        return text

    def strip_end(self, text: str) -> str:
        """Drop the end-of-turn text, EOS and pad tokens that follow the last content."""
        stripped = True
        while stripped:
            stripped = False
            for end in self.ends:
                if text.endswith(end):
                    text, stripped = text[: -len(end)], True
                    break
        return text

    def _next_turn(self, text: str, pos: int, role: str) -> tuple[int, int, str] | None:
        """(index, length, next role) of the first turn marker after ``pos`` (the longest where two start there)."""
        found = [(at, -len(sep), after) for (before, after), seps in self.separators.items() if before == role
                 for sep in seps if (at := text.find(sep, pos)) >= 0]
        if not found:
            return None
        at, negative_length, after = min(found)
        return at, -negative_length, after

    def parse(self, text: str, where: str = "input") -> list[Message]:
        """A conversation rendered with this template (the last turn the assistant's, maybe cut after its
        content) -> its messages. DataError when it is not one."""
        body = self.strip_bos(check_text(text, where))
        first = max((role for role, start in self.starts.items() if body.startswith(start)),
                    key=lambda role: len(self.starts[role]), default=None)
        if first is None:
            expected = " or ".join(repr(s[:60]) for s in self.starts.values())
            raise DataError(f"{where}: the text does not begin like a conversation rendered with the chat template "
                            f"of {self.name} (expected {expected}), so it cannot be re-templated: {text[:80]!r}. "
                            "Send texts rendered with that template, or messages.")
        role, pos, messages = first, len(self.starts[first]), []
        while (turn := self._next_turn(body, pos, role)) is not None:
            at, length, after = turn
            messages.append({"role": role, "content": body[pos:at]})
            role, pos = after, at + length
        messages.append({"role": role, "content": self.strip_end(body[pos:])})
        if role != "assistant":
            raise DataError(f"{where}: the text rendered with the chat template of {self.name} ends with a {role} "
                            "turn, not with the assistant's completion; there is no response to score.")
        inside = next((tok for m in messages for tok in self.specials if tok in m["content"]), None)
        again = self.strip_end(self.strip_bos(self.renderer.render(messages, where=where)))
        if inside is not None or _squash(again) != _squash(self.strip_end(body)):
            why = f"one holds the special token {inside!r}" if inside else "they render differently"
            raise DataError(f"{where}: the text cannot be read back into messages with the chat template of "
                            f"{self.name} (read as roles {[m['role'] for m in messages]}; {why}); send it as "
                            "messages instead.")
        return messages

    def looks_rendered(self, text: str) -> bool:
        try:
            self.parse(text)
        except DataError:
            return False
        return True


class Retemplater:
    """Scoring inputs -> token sequences by the reward model's :class:`Encoder`, reading texts in the policy's
    format when there is a policy tokenizer (see the module docstring)."""

    def __init__(self, encoder: Encoder, policy_tokenizer=None):
        self.encoder = encoder
        self.policy = None
        if policy_tokenizer is not None:
            name = getattr(policy_tokenizer, "name_or_path", "") or "the policy"
            try:
                renderer = Renderer(policy_tokenizer)
            except ConfigError:
                raise ConfigError(f"the policy tokenizer {name} has no chat template, so texts cannot be read back "
                                  "into messages; give the tokenizer the policy generates with.") from None
            self.policy = ChatFormat.learn(renderer, f"the policy tokenizer {name}")
        self.own = None
        if not encoder.renderer.raw:
            try:
                self.own = ChatFormat.learn(encoder.renderer.as_given(), "the reward model")
            except ConfigError:  # a template without turn markers: nothing to compare texts with
                pass

    def messages(self, text: str, where: str) -> str | list[Message]:
        """A rendered text -> its messages in the policy's format; without a policy tokenizer, the text itself
        (logged once per process when it does not look like the reward model's own template)."""
        if self.policy is not None:
            return self.policy.parse(text, where)
        if self.own is not None and self.encoder.renderer.reasoning == "strip" and self.own.looks_rendered(text):
            return self.own.parse(text, where)
        if self.own is not None and not _warned["foreign"] and not self.own.looks_rendered(text):
            _warned["foreign"] = True
            logger.warning("%s does not look like a conversation rendered with this reward model's chat template "
                           "(%s): %r. It is scored as given, in a format the model was not trained on. If it was "
                           "rendered by the policy's template, pass --policy-tokenizer POLICY (policy_tokenizer= in "
                           "Python) to re-template it, or send messages. (Logged once.)", where,
                           self.encoder.renderer.name, text[:120])
        return text

    def encode_item(self, item, where: str = "input") -> list[int]:
        """A scoring input (a rendered text, chat messages, {"messages"}, {"prompt", "response"})."""
        if isinstance(item, str):
            item = self.messages(item, where)
        return self.encoder.encode_item(item, where)

    def encode_joined(self, prompt, completion, where: str = "input", options: dict | None = None) -> list[int]:
        """A prompt and its completion given separately (TRL's ``prompts`` / ``completions``): messages + messages
        are joined; a text prompt + text completion is parsed as one policy rendering with a policy tokenizer,
        and is a user turn + its reply without one. ``options``: the sample's ``tools``, ``chat_template_kwargs``
        and ``images`` (TRL passes a data set's other columns to a reward function); the prompt's images are its
        image parts (TRL fills them with the images) or ``images``."""
        images = (options or {}).get("images")
        options = {key: (options or {})[key] for key in CHAT_KEYS if key in (options or {})}
        if prompt is None:
            raise DataError(f"{where}: the completion has no prompt; give one prompt per completion.")
        if completion is None or (isinstance(completion, list) and not completion):
            raise DataError(f"{where}: the completion is empty (no message); give the completion's text or "
                            "messages.")
        given = {"images": images} if images is not None else {}
        if isinstance(prompt, str) and isinstance(completion, str):
            if self.policy is not None:
                return self.encoder.encode_item({"messages": self.policy.parse(prompt + completion, where), **options,
                                                 **given}, where)
            return self.encoder.encode_item({"prompt": prompt, "response": completion, **options, **given}, where)
        if isinstance(completion, str) and self.policy is not None:
            completion = self.policy.strip_end(completion)
        item = {"prompt": prompt, "response": completion, **given}
        prompt_messages, response = to_conversation(item, where)
        refs = conversation_images(item, prompt_messages, where)  # placeholders now in the prompt's texts
        joined = {"messages": prompt_messages + response, **options}
        if refs:
            joined["images"] = [ref for ref, _ in refs]
        return self.encoder.encode_item(joined, where)
