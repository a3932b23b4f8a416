"""Rendering + tokenization + truncation designed for reward models: the one encoder of the package.

Each pair becomes ``prompt_ids``, ``chosen_ids`` and ``rejected_ids``: the model sees ``prompt + chosen`` and
``prompt + rejected`` and its score is read at the last token of each (the end-of-turn token).

Truncation to ``cutoff_len`` keeps that last token: first the oldest prompt turns are dropped (the system message
and the last user turn stay), then the prompt is cut from the left down to a quarter of the budget, and only then
are responses cut, in the middle, keeping their start and their final token. A pair whose chosen and rejected
become identical is dropped.

That is how DiscoRM trains and reads its own models. A model imported from another trainer is read by that
trainer's rule instead (``SCORE_POSITIONS``, named by ``RewardModelConfig.score_at``): each whole conversation as
its chat template renders it, trailing whitespace included, tokenized at once, and read at its last token
(LlamaFactory) or at its last token that is not the pad token (transformers' ``*ForSequenceClassification``, so
TRL and RewardBench).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from discorm.data.images import DEFAULT_POLICY, IMAGE_PLACEHOLDER, image_source, load_image
from discorm.data.listwise import Ranked
from discorm.data.pairs import Pair
from discorm.data.ratings import Rated
from discorm.data.rows import Message, chat_options, check_text, conversation_images, to_conversation
from discorm.data.templates import Renderer
from discorm.errors import DataError

DEFAULT_CUTOFF_LEN = 1024  # DataArguments.cutoff_len's default, for models saved without one
SKIP_REASONS = ("empty response", "identical chosen/rejected", "truncated to identical", "malformed")
RATED_SKIP_REASONS = ("no scores", "all tied", "images do not fit")  # listed in the summary only when they happen
SCORE_POSITIONS = {  # where the score of a rendered conversation is read, by whom
    "end_of_turn": "DiscoRM: the response ends at its end-of-turn token (whitespace after it dropped), read there",
    "last_token": "LlamaFactory: the whole rendering, trailing whitespace included, read at its last token",
    "last_non_pad": "transformers' *ForSequenceClassification (TRL, RewardBench): the whole rendering, read at its "
                    "last token that is not the pad token",
}


@dataclass
class DataStats:
    """What happened to the pairs of a data set, for the one-line summary."""

    read: int = 0
    rated: int = 0  # of `read`, rated responses
    lists: int = 0  # of `read`, ranked lists (the others are pairs)
    dropped: Counter = field(default_factory=Counter)
    truncated: int = 0
    lengths: list[int] = field(default_factory=list)  # tokens of every sequence (prompt + response)
    pair_tokens: int = 0  # tokens of [prompt | chosen | rejected]
    padded_tokens: int = 0  # tokens of prompt + chosen and prompt + rejected, run separately

    @property
    def kept(self) -> int:
        return self.read - sum(self.dropped.values())

    def summary(self, name: str = "data") -> str:
        reasons = [*SKIP_REASONS, *(r for r in RATED_SKIP_REASONS if self.dropped.get(r))]
        drops = ", ".join(f"{reason} {self.dropped.get(reason, 0)}" for reason in reasons)
        kinds = [f"{self.read - self.rated - self.lists} pairs"] + [f"{n} {name}" for n, name in (
            (self.lists, "ranked lists"), (self.rated, "rated responses")) if n]
        read = f"{self.read} pairs" if len(kinds) == 1 else f"{self.read} rows ({', '.join(kinds)})"
        text = f"{name}: {read} read, {self.kept} kept; dropped: {drops}; truncated {self.truncated}"
        if self.lengths:
            p50, p90, p99 = np.percentile(self.lengths, [50, 90, 99]).round().astype(int)
            text += f"; tokens per sequence p50 {p50}, p90 {p90}, p99 {p99}, max {max(self.lengths)}"
        if self.padded_tokens:
            text += f"; shared prompt saves {1 - self.pair_tokens / self.padded_tokens:.0%} of tokens"
        return text


def _drop_oldest_turn(prompt: list[Message]) -> list[Message] | None:
    """Remove the oldest non-system turn (a user message and the replies up to the next user message)."""
    start = 1 if prompt and prompt[0]["role"] == "system" else 0
    users = [i for i, m in enumerate(prompt) if m["role"] == "user" and i >= start]
    if len(users) < 2:
        return None
    return prompt[:start] + prompt[users[1] :]


def _cut_response(ids: list[int], budget: int, end: int = 1) -> list[int]:
    """Keep the start and the final ``end`` tokens (the end-of-turn token and what a whole rendering adds)."""
    if len(ids) <= budget:
        return ids
    return ids[: max(budget - end, 0)] + ids[-end:]


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    size = min(len(a), len(b))
    return next((i for i in range(size) if a[i] != b[i]), size)


@dataclass
class Encoded:
    prompt_ids: list[int]
    response_ids: list[list[int]]  # one list per response, each ending with its end-of-turn token
    truncated: bool


class ImagesDoNotFit(DataError):
    """A prompt whose image tokens leave no room for its responses within ``cutoff_len``."""


class ImageTokens(list):
    """The token ids of a scoring input whose prompt holds images, with ``images``: the prompt's image sources
    (``data/images.py``), one per run of image tokens, in order. Scoring (``model/inference.py``) gives them to
    the model with the ids; a slice is a plain list."""

    def __init__(self, ids: list[int], images: list):
        super().__init__(ids)
        self.images = images


class Encoder:
    """The one rule that turns conversations into tokens, for training, evaluation, scoring and serving.

    ``encode(prompt, responses)`` renders the prompt and each response with the chat template and truncates to
    ``cutoff_len`` by the RM-aware rule (oldest prompt turns, then the prompt from the left, then response
    middles; every response keeps its end-of-turn token). A pair is encoded with both responses, so the prompt is
    cut the same way for both; a single response scored alone is encoded with itself only. ``score_at`` (one of
    ``SCORE_POSITIONS``) says which token the score is read at: the last token of every sequence encoded.

    A prompt with images (``vision``: a vision-language model's ``data/vision.py`` inputs) has each ``<image>``
    expanded into the model's image tokens and is never cut: only its responses are, and a prompt whose images
    leave them no room is refused (:class:`ImagesDoNotFit`).
    """

    def __init__(self, tokenizer, renderer: Renderer, cutoff_len: int, score_at: str = "end_of_turn",
                 pad_token_id: int | None = None, vision=None):
        self.tokenizer = tokenizer
        self.renderer = renderer
        self.cutoff_len = cutoff_len
        self.score_at = score_at
        self.pad_token_id = pad_token_id  # last_non_pad: never read at the end (None: the last token is read)
        self.vision = vision
        self.image_policy = DEFAULT_POLICY  # where a scoring input's images may come from (the server's is stricter)

    @classmethod
    def for_model(cls, model, cutoff_len: int | None = None) -> Encoder:
        """The encoder a trained model was trained with: its tokenizer, template, cutoff length and score position."""
        if model.tokenizer is None:
            raise DataError("this model directory has no tokenizer; save one next to the weights.")
        config = model.rm_config
        renderer = Renderer(model.tokenizer, config.template, config.reasoning, config.chat_template_kwargs)
        return cls(model.tokenizer, renderer, cutoff_len or config.cutoff_len or DEFAULT_CUTOFF_LEN, config.score_at,
                   config.pad_token_id, getattr(model, "vision", None))

    @property
    def whole(self) -> bool:
        """Whether conversations are read whole (an imported model's rule), not up to the end-of-turn token."""
        return self.score_at != "end_of_turn"

    def tokens(self, text: str, where: str = "") -> list[int]:
        if not text:
            return []
        check_text(text, where)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, prompt: list[Message], responses: list[list[Message]], where: str = "",
               options: dict | None = None, images: list | None = None) -> Encoded:
        """``options``: the row's ``tools`` and ``chat_template_kwargs`` for the template (``rows.chat_options``).
        ``images``: the prompt's image sources (``data/images.py``), one per ``<image>`` placeholder."""
        prompt_text = self.renderer.render_prompt(prompt, where, options)
        texts = [self.renderer.render_response(prompt, prompt_text, r, where, self.whole, options)
                 for r in responses]
        if images:
            encoded = self._encode_with_images(prompt_text, texts, images, where)
            self._no_image_tokens(encoded.response_ids, where, "a response")
            return encoded
        prompt_ids, response_ids = self._split(prompt_text, texts, where)
        self._no_image_tokens([prompt_ids, *response_ids], where, "a row that gives no image")
        longest = max(map(len, response_ids))
        truncated = False
        while len(prompt_ids) + longest > self.cutoff_len:
            shorter = _drop_oldest_turn(prompt)
            if shorter is None:
                break
            prompt, truncated = shorter, True
            prompt_ids, response_ids = self._split(self.renderer.render_prompt(prompt, where, options), texts, where)
            longest = max(map(len, response_ids))
        if len(prompt_ids) + longest > self.cutoff_len:
            truncated = True
            keep = max(self.cutoff_len - longest, min(len(prompt_ids), self.cutoff_len // 4))
            prompt_ids = prompt_ids[len(prompt_ids) - keep :]
            budget = self.cutoff_len - len(prompt_ids)
            response_ids = [_cut_response(ids, budget, 1 + len(self.tokens(text[len(text.rstrip()) :], where)))
                            for ids, text in zip(response_ids, texts)]
        return Encoded(prompt_ids, response_ids, truncated)

    def _encode_with_images(self, prompt_text: str, texts: list[str], images: list, where: str) -> Encoded:
        """The prompt with its image tokens, whole (an image is never cut through, and a dropped turn would drop
        its image); the responses are cut in the middle to the room left."""
        if self.vision is None:
            raise self._text_only(len(images), where)
        if self.whole:
            raise DataError(f"{where}: this model reads its score by an imported trainer's rule "
                            f"(score_at={self.score_at}), which DiscoRM applies to text conversations only; score "
                            "rows with images with a model trained by DiscoRM (score_at: end_of_turn).")
        opened = [load_image(image, f"{where} image {i + 1}", self.image_policy) for i, image in enumerate(images)]
        try:
            prompt_ids = self.vision.expand(prompt_text, opened, where)
        except ValueError as err:  # the processor refuses a size (Qwen2-VL: too small, or an aspect ratio over 200)
            sizes = ", ".join(f"{image.width}x{image.height}" for image in opened)
            raise DataError(f"{where}: the model's image processor refuses the image(s) ({sizes}): {err}. Send "
                            "larger images, closer to square.") from None
        response_ids = [self.tokens(text, where) for text in texts]
        budget = self.cutoff_len - len(prompt_ids)
        ends = [1 + len(self.tokens(text[len(text.rstrip()) :], where)) for text in texts]
        if budget < max(ends) + 1:
            raise ImagesDoNotFit(f"{where}: the prompt takes {len(prompt_ids)} tokens with its {len(images)} "
                                 f"image(s), leaving {max(budget, 0)} of cutoff_len={self.cutoff_len} for the "
                                 "responses; images are never cut. Raise cutoff_len, or send smaller images.")
        truncated = len(prompt_ids) + max(map(len, response_ids)) > self.cutoff_len
        response_ids = [_cut_response(ids, budget, end) for ids, end in zip(response_ids, ends)]
        return Encoded(prompt_ids, response_ids, truncated)

    def _no_image_tokens(self, sequences: list[list[int]], where: str, what: str) -> None:
        """A vision-language model's image token typed as text would be read as an image with no pixels behind it:
        refused where it cannot belong (a response, or a row that gives no image)."""
        image_id = None if self.vision is None else self.vision.image_token_id
        if image_id is not None and any(image_id in ids for ids in sequences):
            raise DataError(f"{where}: {what} holds the image token {self.vision.image_token!r} (or an "
                            f"{IMAGE_PLACEHOLDER} placeholder) as text; images belong to the prompt, one "
                            f"{IMAGE_PLACEHOLDER} per image the row gives. Remove it, or give the row its image.")

    @staticmethod
    def _text_only(count: int, where: str) -> DataError:
        return DataError(f"{where}: the row has {count} image(s) but this model reads text only. Train or score it "
                         "with a vision-language model (an image-text-to-text checkpoint such as "
                         "Qwen/Qwen2.5-VL-3B-Instruct), or remove the row's images.")

    def _split(self, prompt_text: str, texts: list[str], where: str) -> tuple[list[int], list[list[int]]]:
        """The prompt's and the responses' tokens, each response ending at the token its score is read at.
        DiscoRM's own rule tokenizes each text alone, as training does; a whole conversation is tokenized at once,
        as the trainer of an imported model tokenized it, and the prompt is the tokens every conversation shares
        with the prompt's own."""
        prompt_ids = self.tokens(prompt_text, where)
        if not self.whole:
            return prompt_ids, [self.tokens(text, where) for text in texts]
        conversations = [self.tokens(prompt_text + text, where) for text in texts]
        shared = min(common_prefix(prompt_ids, ids) for ids in conversations)
        return self._read_at_last_non_pad(prompt_ids[:shared], [ids[shared:] for ids in conversations])

    def _read_at_last_non_pad(self, prompt_ids: list[int], response_ids: list[list[int]]):
        """last_non_pad: transformers' classifiers read the last token that is not the pad token, and a causal
        model's state there does not depend on the tokens after it, so trailing pad tokens are dropped (the first
        token of an all-pad sequence stays: it is where transformers reads). Where that empties a response, the
        prompt's last tokens move to the front of every response; each sequence stays the same."""
        pad = self.pad_token_id
        if self.score_at != "last_non_pad" or pad is None:
            return prompt_ids, response_ids
        ends = []
        for ids in response_ids:
            sequence, end = prompt_ids + ids, len(prompt_ids) + len(ids)
            while end > 1 and sequence[end - 1] == pad:
                end -= 1
            ends.append(end)
        shared = min(len(prompt_ids), min(ends) - 1)
        return prompt_ids[:shared], [(prompt_ids + ids)[shared:end] for ids, end in zip(response_ids, ends)]

    def encode_text(self, text: str, where: str = "input") -> list[int]:
        """An already rendered conversation: its tokens, cut from the left to keep the end-of-turn token (the
        turn structure is unknown, so the rule above cannot apply). Empty text has nothing to score."""
        if not text.strip():
            raise DataError(f"{where}: the text is empty; there is nothing to score. Send the conversation "
                            "rendered with the chat template.")
        _, (ids,) = self._read_at_last_non_pad([], [self.tokens(text, where)])
        return self._nonempty(ids[-self.cutoff_len :], where)

    def encode_ids(self, ids, where: str = "input") -> list[int]:
        """Token ids of an already rendered conversation (SGLang's and OpenAI's token input), checked to be ids of
        this tokenizer, cut from the left as ``encode_text`` cuts."""
        size = len(self.tokenizer)
        bad = next((i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < size), None) \
            if isinstance(ids, list) else ids
        if bad is not None or not isinstance(ids, list):
            raise DataError(f"{where}: token id {str(bad)[:40]} is not an id of this model's tokenizer (integers "
                            f"0 to {size - 1}); send the conversation's token ids, or its text.")
        if not ids:
            raise DataError(f"{where}: the token id list is empty; there is nothing to score.")
        _, (kept,) = self._read_at_last_non_pad([], [ids])
        return self._nonempty(kept[-self.cutoff_len :], where)

    def encode_item(self, item, where: str = "input") -> list[int]:
        """A scoring input (a text, chat messages, {"messages"}, {"prompt", "response"}; a dict may add ``tools``,
        ``chat_template_kwargs`` and ``images``) -> one token sequence, an :class:`ImageTokens` where the prompt
        holds images (image parts, or the dict's ``images``), read under ``image_policy``."""
        conversation = to_conversation(item, where)
        if isinstance(conversation, str):
            return self.encode_text(conversation, where)
        prompt, response = conversation
        refs = conversation_images(item, prompt, where)
        if refs and self.vision is None:  # said before any image is read
            raise self._text_only(len(refs), where)
        images = [self.image_reference(ref, place) for ref, place in refs]
        encoded = self.encode(prompt, [response], where, chat_options(item, where), images)
        ids = self._nonempty(encoded.prompt_ids + encoded.response_ids[0], where, len(images))
        return ImageTokens(ids, images) if images else ids

    def image_reference(self, ref, where: str):
        """A scoring input's image -> its source under ``image_policy``; a URL (where the policy fetches them) is
        fetched here, once, and kept as the image it holds."""
        source = image_source(ref, where, self.image_policy)
        if isinstance(source, str) and source.startswith(("http://", "https://")):
            return load_image(source, where, self.image_policy)
        return source

    def _nonempty(self, ids: list[int], where: str, images: int = 0) -> list[int]:
        """The ids of a scoring input, refused when empty, or when a vision-language model would read image tokens
        there is no image for (an ``<image>`` typed as text, or a rendered text holding image tokens)."""
        if not ids:
            raise DataError(f"{where}: the input renders to no tokens, so it has no score; give it some text.")
        if self.vision is not None and not images and self.vision.image_token_id in ids:
            raise DataError(f"{where}: the text holds the image token {self.vision.image_token!r} (or an "
                            f"{IMAGE_PLACEHOLDER} placeholder) but the input gives no image; send each image with its "
                            "placeholder (an image part, or the input's \"images\"), or drop the placeholder.")
        return ids


class PairTokenizer(Encoder):
    """Pair -> a tokenized training example (prompt_ids, chosen_ids, rejected_ids, extras); Rated -> (prompt_ids,
    response_ids, scores); collects DataStats."""

    def __init__(self, tokenizer, renderer: Renderer, cutoff_len: int, strict: bool = False, vision=None):
        super().__init__(tokenizer, renderer, cutoff_len, vision=vision)
        self.strict = strict

    def __call__(self, pair: Pair | Rated | Ranked, stats: DataStats) -> dict | None:
        """The example of a record, with its prompt's ``images`` (sources, or None); None when it is dropped."""
        where = pair.meta.get("source", "")
        try:
            example = self._example(pair, stats, where)
        except ImagesDoNotFit as err:
            raise_or_count(stats, "images do not fit", str(err).rstrip("."), self.strict)
            return None
        if example is not None:
            example["images"] = pair.meta.get("images") or None
        return example

    def _encode(self, item, responses: list, where: str) -> Encoded:
        return self.encode(item.prompt, responses, where, item.meta.get("chat"), item.meta.get("images"))

    def _example(self, pair: Pair | Rated | Ranked, stats: DataStats, where: str) -> dict | None:
        if isinstance(pair, Rated):
            return self._rated(pair, stats, where)
        if isinstance(pair, Ranked):
            return self._ranked(pair, stats, where)
        encoded = self._encode(pair, [pair.chosen, pair.rejected], where)
        prompt_ids, (chosen, rejected) = encoded.prompt_ids, encoded.response_ids
        if encoded.truncated:
            stats.truncated += 1
        if chosen == rejected:
            reason = "truncated to identical" if encoded.truncated else "identical chosen/rejected"
            raise_or_count(stats, reason, f"{where}: chosen and rejected are identical as tokens", self.strict)
            return None
        stats.lengths += [len(prompt_ids) + len(chosen), len(prompt_ids) + len(rejected)]
        stats.pair_tokens += len(prompt_ids) + len(chosen) + len(rejected)
        stats.padded_tokens += 2 * len(prompt_ids) + len(chosen) + len(rejected)
        example = {"prompt_ids": prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected,
                   "length": len(prompt_ids) + max(len(chosen), len(rejected)), "source": where}
        for key in ("margin", "soft_label", "noise", "strength", "tie"):
            if getattr(pair, key) is not None:
                example[key] = getattr(pair, key)
        if pair.votes is not None:
            example.update(zip(VOTE_COLUMNS, pair.votes))
        return example

    def _ranked(self, ranked: Ranked, stats: DataStats, where: str) -> dict | None:
        """A list's K responses are encoded together, so the prompt is cut the same way for all of them."""
        encoded = self._encode(ranked, ranked.responses, where)
        prompt_ids, responses = encoded.prompt_ids, encoded.response_ids
        if encoded.truncated:
            stats.truncated += 1
        if len({tuple(r) for r in responses}) < len(responses):
            reason = "truncated to identical" if encoded.truncated else "identical chosen/rejected"
            raise_or_count(stats, reason, f"{where}: two responses of the list are identical as tokens", self.strict)
            return None
        stats.lengths += [len(prompt_ids) + len(r) for r in responses]
        stats.pair_tokens += len(prompt_ids) + sum(map(len, responses))
        stats.padded_tokens += len(responses) * len(prompt_ids) + sum(map(len, responses))
        return {"prompt_ids": prompt_ids, "responses_ids": responses, "levels": ranked.levels, "votes": ranked.votes,
                "length": len(prompt_ids) + max(map(len, responses)), "source": where}

    def encode_record(self, record: dict) -> dict:
        """One row of the raw data set (pair or rated response, see ``data/loader.py``) -> its tokens and what
        happened to it: ``dropped`` (the reason, or None), ``truncated``, the ``lengths`` of its sequences and
        token counts for the summary. The function ``datasets.map`` runs, in any number of processes; the record's
        ``images`` column stays as it is and goes with the example to the collator."""
        meta = {"source": record["source"], "chat": json.loads(record["chat"]) if record.get("chat") else None,
                "images": record.get("images")}
        if record["response"] is not None:
            item = Rated(record["prompt"], record["response"], record["scores"], meta=meta)
        elif record.get("responses") is not None:
            item = Ranked(record["prompt"], record["responses"], record["levels"], record["votes"], meta=meta)
        else:
            item = Pair(record["prompt"], record["chosen"], record["rejected"], meta=meta)
        stats = DataStats()
        example = self(item, stats) or {}
        return {"prompt_ids": example.get("prompt_ids", []), "chosen_ids": example.get("chosen_ids"),
                "rejected_ids": example.get("rejected_ids"), "response_ids": example.get("response_ids"),
                "responses_ids": example.get("responses_ids"),
                "length": example.get("length", 0), "truncated": bool(stats.truncated),
                "dropped": next(iter(stats.dropped), None), "lengths": stats.lengths,
                "pair_tokens": stats.pair_tokens, "padded_tokens": stats.padded_tokens}

    def _rated(self, rated: Rated, stats: DataStats, where: str) -> dict:
        """A rated response is encoded alone, exactly as scoring encodes {"prompt", "response"}."""
        encoded = self._encode(rated, [rated.response], where)
        if encoded.truncated:
            stats.truncated += 1
        length = len(encoded.prompt_ids) + len(encoded.response_ids[0])
        stats.lengths.append(length)
        stats.pair_tokens += length
        stats.padded_tokens += length
        return {"prompt_ids": encoded.prompt_ids, "response_ids": encoded.response_ids[0], "scores": rated.scores,
                "length": length, "source": where}


VOTE_COLUMNS = ("votes_chosen", "votes_tie", "votes_rejected")


def raise_or_count(stats: DataStats, reason: str, detail: str, strict: bool) -> None:
    """Count a skipped pair; with strict_data, stop instead."""
    if strict:
        raise DataError(f"{detail} (strict_data is on; fix the row or set strict_data: false to skip it).")
    stats.dropped[reason] += 1
