"""TRL: DiscoRM rewards as a GRPO / RLOO reward function.

    from discorm.integrations.trl import reward_function
    GRPOTrainer(model=..., reward_funcs=reward_function("saves/rm", reward_mode="lower_quantile"), ...)

The function has TRL's signature ``(prompts, completions, **kwargs) -> list[float]``: conversational prompts and
completions (message lists, as TRL passes chat data) are joined into one conversation; text prompts and completions
are a user turn and its reply, or, with ``policy_tokenizer``, one text rendered by the policy's chat template,
re-templated into the reward model's (``data/retemplate.py``). It scores with a model loaded here (a run
directory) or with a running ``discorm serve`` (an ``http://`` or ``https://`` URL; the server re-templates with
its own ``--policy-tokenizer``). A data set's ``tools`` and ``chat_template_kwargs`` columns, which TRL passes on
per completion, go to the chat template. Images (a vision-language reward model): GRPOTrainer passes a VLM's
prompts with their images in ``{"type": "image", "image": <PIL image>}`` parts and the data set's ``images`` (or
``image``) column per completion; the parts are read, and the column fills prompts without them (to a server,
images go as data URIs). Where TRL passes ``log_metric``, the mean sigma of a distributional head is logged as
``discorm/sigma``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import torch
from PIL import Image

from discorm.data.images import data_uri
from discorm.data.retemplate import Retemplater
from discorm.data.rows import CHAT_KEYS
from discorm.data.rows import describe as describe_value
from discorm.data.tokenize import Encoder
from discorm.errors import ConfigError, DataError, DiscoRMError
from discorm.model.inference import describe, score_sequences
from discorm.model.loading import load_policy_tokenizer
from discorm.model.reward_model import RewardModel
from discorm.model.rm_config import check_reward_options

NAME = "discorm"  # TRL logs the rewards as rewards/discorm/mean


class RewardFunction:
    """TRL's reward-function protocol over a local reward model or a reward server (see the module docstring)."""

    __name__ = NAME

    def __init__(self, model, options: dict, policy_tokenizer=None, batch_size: int = 8, api_key: str | None = None,
                 timeout_s: float = 180.0):
        self.options = {key: value for key, value in options.items() if value is not None}
        self.batch_size, self.api_key, self.timeout_s = batch_size, api_key, timeout_s
        self.url = model.rstrip("/") if isinstance(model, str) and model.startswith(("http://", "https://")) else None
        if self.url is not None:
            if policy_tokenizer is not None:
                raise ConfigError("a reward server re-templates with its own --policy-tokenizer; start `discorm "
                                  "serve` with it instead of passing policy_tokenizer here.")
            self.max_items = self._request("/health").get("max_items", 256)  # also: is it up?
            return
        if not isinstance(model, RewardModel):
            model = RewardModel.from_pretrained(model, device="cuda" if torch.cuda.is_available() else None)
        self.model = model.eval()
        check_reward_options(options.get("reward_mode"), options.get("reward_alpha"), options.get("reward_k"),
                             model.head)
        self.reader = Retemplater(Encoder.for_model(model), load_policy_tokenizer(policy_tokenizer))

    def __call__(self, prompts: list, completions: list, log_metric=None, **kwargs) -> list[float]:
        if len(prompts) != len(completions):
            raise DataError(f"{len(prompts)} prompts for {len(completions)} completions; give one prompt per "
                            "completion.")
        options = {key: kwargs[key] for key in CHAT_KEYS if kwargs.get(key) is not None}  # data set columns
        if kwargs.get("images") is not None:
            options["images"] = kwargs["images"]
        elif isinstance(kwargs.get("image"), list):  # one image per row (TRL's "image" column)
            options["images"] = [None if image is None else [image] for image in kwargs["image"]]
        for key, values in options.items():
            if not isinstance(values, list) or len(values) != len(completions):
                raise DataError(f"{key}: expected a list of one value per completion ({len(completions)}), found "
                                f"{describe_value(values)}; pass the data set's `{key}` column as TRL does.")
        rewards, sigmas = (self._remote if self.url else self._local)(prompts, completions, options)
        if log_metric is not None and sigmas:
            log_metric(f"{NAME}/sigma", sum(sigmas) / len(sigmas))
        return rewards

    def _local(self, prompts: list, completions: list, options: dict) -> tuple[list[float], list[float] | None]:
        sequences = [self.reader.encode_joined(p, c, f"completion {i}", {key: values[i] for key, values in
                                                                          options.items() if values[i] is not None})
                     for i, (p, c) in enumerate(zip(prompts, completions))]
        records = describe(self.model, score_sequences(self.model, sequences, self.batch_size), **self.options)
        return [r["reward"] for r in records], [r["sigma"] for r in records] if "sigma" in records[0] else None

    def _remote(self, prompts: list, completions: list, options: dict) -> tuple[list[float], list[float] | None]:
        """POST /score with TRL's prompts + completions (and their tools), ``max_items`` at a time."""
        rewards, sigmas = [], []
        for start in range(0, len(prompts), self.max_items):
            chunk = slice(start, start + self.max_items)
            answer = self._request("/score", _as_json({
                "prompts": prompts[chunk], "completions": completions[chunk],
                **{key: values[chunk] for key, values in options.items()}, **self.options}))
            rewards += answer["rewards"]
            sigmas += answer.get("sigmas", [])
        return rewards, sigmas or None

    def _request(self, route: str, body: dict | None = None) -> dict:
        """GET ``route`` (no body) or POST ``body`` to it -> the JSON answer; a DiscoRMError for any refusal."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{route}", data, headers, method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.load(response)
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            raise DiscoRMError(f"the reward server {self.url} answered {err.code}: {detail}") from None
        except urllib.error.URLError as err:
            raise DiscoRMError(f"cannot reach the reward server {self.url}: {err.reason}; start it with `discorm "
                               "serve RUN_DIR`.") from None


def _as_json(value):
    """A request body with its PIL images as PNG data URIs (what a server reads)."""
    if isinstance(value, dict):
        return {key: _as_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_json(item) for item in value]
    return data_uri(value) if isinstance(value, Image.Image) else value


def reward_function(model, reward_mode: str | None = None, reward_alpha: float | None = None,
                    reward_k: float | None = None, policy_tokenizer=None, batch_size: int = 8,
                    api_key: str | None = None) -> RewardFunction:
    """A TRL reward function: ``model`` is a run directory (or a loaded :class:`RewardModel`) or the URL of a
    ``discorm serve``; ``reward_mode`` / ``reward_alpha`` / ``reward_k`` choose the reward (default: the model's);
    ``policy_tokenizer`` (a tokenizer or its path / name) reads text prompts in the policy's chat template."""
    options = {"reward_mode": reward_mode, "reward_alpha": reward_alpha, "reward_k": reward_k}
    return RewardFunction(model, options, policy_tokenizer, batch_size, api_key)
