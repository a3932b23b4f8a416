"""The multi-objective head: one prediction per rated attribute (helpfulness, correctness, ...), combined into one
reward by weights; each prediction a number or a Gaussian (mean and variance)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from discorm.errors import ConfigError
from discorm.model.heads.base import (
    Attribute,
    ExportSpec,
    HeadOption,
    RewardHead,
    register_head,
    soft_label_loss,
)

VARIANCE_EPS = 1e-4
# Names a rated row uses for other things; an attribute cannot take them.
RESERVED_NAMES = ("prompt", "response", "messages", "system", "scores", "chosen", "rejected", "reward")


def _parse_names(key: str, value) -> list[str]:
    """`[a, b]` or "a,b" -> ["a", "b"]: distinct, non-empty, not a reserved column name."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}={value!r} should be a list of attribute names, e.g. [helpfulness, correctness].")
    clashes = sorted(set(value) & set(RESERVED_NAMES))
    if clashes or len(set(value)) != len(value):
        problem = f"{clashes} name other columns of a rated row" if clashes else "names repeat"
        raise ConfigError(f"{key}={list(value)!r}: {problem}; give each attribute its own name.")
    return list(value)


def _parse_bounds(key: str, value) -> list[float]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} should be [low, high], e.g. [0, 4].") from None
    if not low < high:
        raise ConfigError(f"{key}={value!r}: low must be below high.")
    return [low, high]


def _parse_range(key: str, value) -> list | dict:
    """[] (unbounded), [low, high] for every attribute, or {attribute: [low, high]}."""
    if isinstance(value, dict):
        return {str(name): _parse_bounds(f"{key}.{name}", bounds) for name, bounds in value.items()}
    if value in ([], (), None, ""):
        return []
    return _parse_bounds(key, value)


def _parse_weights(key: str, value) -> list | dict:
    """[] (equal weights 1/A), [w_1, ..., w_A], or {attribute: weight} (others 0)."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    try:
        if isinstance(value, dict):
            return {str(name): float(w) for name, w in value.items()}
        return [float(w) for w in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} should be a list of numbers or a map attribute -> weight.") from None


OUTPUT = HeadOption("output", "scalar", "regression, multi_objective: per attribute a number (scalar: squared "
                    "error) or a Gaussian (gaussian: mean + variance, negative log-likelihood)",
                    choices=("scalar", "gaussian"))
SCORE_RANGE = HeadOption("score_range", [], "regression, multi_objective: allowed ratings, [low, high] or "
                         "{attribute: [low, high]}; a rating outside stops the data load", parse=_parse_range)


@register_head
class MultiObjectiveHead(RewardHead):
    """Per attribute a: mu_a = W_a . h + b_a (and var_a = softplus(V_a . h + c_a) + eps for Gaussian outputs).
    The reward is R = sum_a w_a X_a: mean w . mu and, for Gaussians (attributes independent),
    variance sum_a w_a^2 var_a. P(c > r) is sigmoid(w . (mu_c - mu_r) - m) for numbers and
    Phi((w . (mu_c - mu_r) - m) / sqrt(sum_a w_a^2 (var_c,a + var_r,a))) for Gaussians, so pairs train the
    same outputs as ratings.

    params (N, A) for numbers, (N, 2A) for Gaussians: the means, then the variances.
    """

    kind = "multi_objective"
    options = (
        HeadOption("attributes", [], "multi_objective: the rated attributes, e.g. [helpfulness, correctness]; "
                   "each is a column of the data (or a key of its `scores` object)", parse=_parse_names),
        OUTPUT,
        SCORE_RANGE,
        HeadOption("attribute_weights", [], "multi_objective: weights combining the attributes into the reward, "
                   "a list or {attribute: weight}; default equal weights 1/A (combination: learned fits them)",
                   parse=_parse_weights),
    )
    learns_ratings = True
    learns_combination = True

    def __init__(self, hidden_size: int, attributes=(), output: str = "scalar", score_range=(),
                 attribute_weights=()):
        super().__init__()
        options = {"attributes": list(attributes), "score_range": score_range, "attribute_weights": attribute_weights}
        self.attributes = type(self).attributes_from(options)
        self.output, self.score_range = output, score_range
        self.distributional = output == "gaussian"
        count = len(self.attributes)
        self.export_labels = (1, 1 + count) if count > 1 else (1,)
        self.value = nn.Linear(hidden_size, count)
        nn.init.normal_(self.value.weight, std=1 / math.sqrt(hidden_size + 1))
        centres = [(a.low + a.high) / 2 if a.low is not None else 0.0 for a in self.attributes]
        self.value.bias.data.copy_(torch.tensor(centres))
        if self.distributional:
            self.variance = nn.Linear(hidden_size, count)
            nn.init.normal_(self.variance.weight, std=0.5 / math.sqrt(hidden_size))
            # start at a spread of a quarter of the range: the size of rating noise on a bounded scale
            spreads = [((a.high - a.low) / 4) ** 2 if a.low is not None else 1.0 for a in self.attributes]
            self.variance.bias.data.copy_(torch.tensor([math.log(math.expm1(v - VARIANCE_EPS)) for v in spreads]))
        self.register_buffer("weights", torch.tensor(self._weights(attribute_weights)), persistent=False)

    # ------------------------------------------------------------------ options
    @classmethod
    def attributes_from(cls, options: dict) -> tuple[Attribute, ...]:
        names = options.get("attributes") or []
        if not names:
            raise ConfigError(f"head: {cls.kind} needs `attributes: [name, ...]`, the rated qualities it predicts "
                              "(each a column of the rated data, or a key of its `scores` object).")
        ranges = options.get("score_range") or []
        if isinstance(ranges, dict):
            unknown = sorted(set(ranges) - set(names))
            if unknown:
                raise ConfigError(f"score_range names {unknown}, which are not attributes ({names}); fix the "
                                  "names or add them to `attributes`.")
            return tuple(Attribute(n, *ranges.get(n, (None, None))) for n in names)
        return tuple(Attribute(n, *(ranges or (None, None))) for n in names)

    def _weights(self, value) -> list[float]:
        names = [a.name for a in self.attributes]
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(names))
            if unknown:
                raise ConfigError(f"attribute_weights names {unknown}, which are not attributes ({names}).")
            return [float(value.get(n, 0.0)) for n in names]
        if not value:
            return [1.0 / len(names)] * len(names)
        if len(value) != len(names):
            raise ConfigError(f"attribute_weights has {len(value)} weights for {len(names)} attributes ({names}); "
                              "give one per attribute, or a map attribute -> weight.")
        return [float(w) for w in value]

    def saved_options(self) -> dict:
        values = {"attributes": [a.name for a in self.attributes], "output": self.output,
                  "score_range": self.score_range, "attribute_weights": self.weights.tolist()}
        return {o.name: values[o.name] for o in self.options if o.saved}

    # ------------------------------------------------------------------ the distribution
    def forward(self, hidden):
        if not self.distributional:
            return self.value(hidden)  # (N, A)
        var = F.softplus(self.variance(hidden)) + VARIANCE_EPS
        return torch.cat([self.value(hidden), var], dim=-1)  # (N, 2A): means, variances

    def attribute_means(self, params):
        return params[:, : len(self.attributes)]

    def attribute_stds(self, params):
        return params[:, len(self.attributes) :].sqrt() if self.distributional else None

    def _variance(self, params, weights):  # (N,) variance of the combined reward
        return (params[:, len(self.attributes) :] * weights.square()).sum(-1)

    def mean(self, params):
        return self.attribute_means(params) @ self.weights.to(params.dtype)

    def std(self, params):
        if not self.distributional:
            return super().std(params)
        return self._variance(params, self.weights.to(params.dtype)).sqrt()

    def quantile(self, params, alpha):
        if not self.distributional:
            return self.mean(params)
        z_alpha = math.sqrt(2) * torch.erfinv(torch.tensor(2 * alpha - 1, dtype=params.dtype))
        return self.mean(params) + z_alpha.to(params.device) * self.std(params)

    def summary(self, params):
        names = [a.name for a in self.attributes]
        out = super().summary(params)
        out["attributes"] = dict(zip(names, self.attribute_means(params).unbind(-1)))
        if self.distributional:
            out["attribute_sigmas"] = dict(zip(names, self.attribute_stds(params).unbind(-1)))
        return out

    # ------------------------------------------------------------------ pairs and ratings
    def _log_prob_pair(self, pc, pr, margin, weights):
        diff = (self.attribute_means(pc) - self.attribute_means(pr)) @ weights
        if margin is not None:
            diff = diff - margin
        if not self.distributional:
            return F.logsigmoid(diff), F.logsigmoid(-diff)
        z = diff / (self._variance(pc, weights) + self._variance(pr, weights)).sqrt()
        return torch.special.log_ndtr(z), torch.special.log_ndtr(-z)

    def log_prob_pair(self, pc, pr, margin=None):
        return self._log_prob_pair(pc, pr, margin, self.weights.to(pc.dtype))

    def rated_loss(self, params, scores, mask):
        """Numbers: (mu - y)^2. Gaussians: 0.5 log(2 pi var) + (mu - y)^2 / (2 var). Mean over rated attributes."""
        error = torch.where(mask, self.attribute_means(params) - scores, 0.0)
        if self.distributional:
            var = params[:, len(self.attributes) :]
            per_attribute = 0.5 * (torch.log(2 * math.pi * var) + error.square() / var)
        else:
            per_attribute = error.square()
        return torch.where(mask, per_attribute, 0.0).sum(-1) / mask.sum(-1).clamp_min(1)

    def fit_combination(self, pc, pr, margin=None, soft_label=None):
        """Maximum likelihood of the pairs over w (L-BFGS, float64, weight decay 1e-3 for number outputs). For
        Gaussian outputs P(c > r) does not depend on the scale of w, which is then set to sum |w_a| = 1."""
        pc, pr = pc.double(), pr.double()
        margin = None if margin is None else margin.double()
        soft_label = None if soft_label is None else soft_label.double()
        weights = self.weights.double().clone().requires_grad_(True)
        decay = 0.0 if self.distributional else 1e-3
        optimizer = torch.optim.LBFGS([weights], max_iter=500, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = soft_label_loss(*self._log_prob_pair(pc, pr, margin, weights), soft_label).mean()
            loss = loss + decay * weights.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        fitted = weights.detach()
        if self.distributional:
            fitted = fitted / fitted.abs().sum().clamp_min(1e-12)
        self.weights.copy_(fitted.to(self.weights.dtype))
        return self.weights.tolist()

    # ------------------------------------------------------------------ export
    def export_spec(self, num_labels):
        """Label 0: the combined mean w . W h (w . b, which no bias-free score layer carries, is the offset);
        with num_labels = 1 + A, labels 1..A are the attribute means W_a h (biases in
        config.discorm_attribute_bias). Gaussian outputs: the variance layer goes to discorm_head.safetensors
        (var_a = softplus(V_a h + c_a) + 1e-4)."""
        weight = self.value.weight.detach().float()
        bias = self.value.bias.detach().float()
        names = [a.name for a in self.attributes]
        rows = [self.weights.float() @ weight]
        config = {"discorm_attributes": names, "discorm_attribute_weights": self.weights.tolist()}
        if num_labels > 1:
            rows += list(weight)
            config["discorm_attribute_bias"] = bias.tolist()
        files = {}
        if self.distributional:
            files["discorm_head.safetensors"] = {
                f"variance.{k}": v.detach().contiguous().float() for k, v in self.variance.state_dict().items()}
        return ExportSpec(torch.stack(rows), config, files, offset=float(self.weights.float() @ bias),
                          labels=("reward", *names)[:num_labels])
