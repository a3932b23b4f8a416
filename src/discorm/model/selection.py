"""Choosing what to label next: a pool of unlabelled comparisons -> the ``budget`` items worth most, in order.

One scoring pass over the pool (``score_groups``: each item's K responses as one block with their prompt, the head
params and the pooled features), then the acquisition math of ``model/acquisition.py`` on every pair of every item.
A comparison is offered once (the first time the pool holds it), and never when it is among the ``excluded``
comparisons (``data/pool.py``'s ``comparison_key``).
"""

from __future__ import annotations

import torch

from discorm.data.pool import PoolItem, comparison_key
from discorm.data.tokenize import Encoder
from discorm.errors import DataError
from discorm.model.acquisition import check_strategy, diverse_greedy, list_pairs, pair_scores, tie_break_order
from discorm.model.inference import score_groups


def candidates(items: list[PoolItem], excluded: set[str] = frozenset()) -> tuple[list[int], int, int]:
    """(indices of the items that may be offered, how many repeat an earlier item, how many are excluded)."""
    seen, keep, repeated, dropped = set(), [], 0, 0
    for index, item in enumerate(items):
        key = comparison_key(item.prompt, item.responses)
        if key in excluded:
            dropped += 1
        elif key in seen:
            repeated += 1
        else:
            seen.add(key)
            keep.append(index)
    return keep, repeated, dropped


def select_items(model, items: list[PoolItem], budget: int, strategy: str = "bald", seed: int = 0,
                 excluded: set[str] = frozenset(), batch_size: int = 8, show_progress: bool = False) -> list[dict]:
    """The ``budget`` items to label next, best first: each item's row with ``acquisition`` (its score: the mean
    over its pairs for a list) and ``preferences`` (per pair (a, b) of response indices, the predictive P(a > b)
    as ``p`` and its posterior spread as ``p_std``). Deterministic for ``seed`` (the random strategy's draws and
    the order of equal scores)."""
    check_strategy(strategy, model.head)
    if not items:
        raise DataError("the pool is empty; give at least one unlabelled item (a prompt and K >= 2 responses).")
    keep, repeated, dropped = candidates(items, excluded)
    if not isinstance(budget, int) or isinstance(budget, bool) or not 1 <= budget <= len(keep):
        held = f" ({repeated} repeat earlier items and {dropped} are excluded)" if repeated or dropped else ""
        raise DataError(f"budget {budget!r} is not between 1 and the {len(keep)} distinct items the pool can offer "
                        f"(of {len(items)} items{held}); ask for at most {len(keep)}, or add items to the pool.")
    encoder = Encoder.for_model(model)
    groups = []
    for index in keep:
        item = items[index]
        encoded = encoder.encode(item.prompt, item.responses, item.where)
        groups.append({"prompt_ids": encoded.prompt_ids, "responses_ids": encoded.response_ids})
    params, pooled = score_groups(model, groups, batch_size, show_progress, "Scoring the pool", features=True)
    # every pair (i, j) of every item, flattened over the pool's responses: (M,) owners and indices of the two sides
    owner, first, second, offset, rows_of = [], [], [], 0, []
    for number, group in enumerate(params):
        rows_of.append(range(len(owner), len(owner) + len(list_pairs(len(group)))))  # the item's rows m
        for i, j in list_pairs(len(group)):
            owner.append(number)
            first.append(offset + i)
            second.append(offset + j)
        offset += len(group)
    owner, first, second = torch.tensor(owner), torch.tensor(first), torch.tensor(second)
    flat_params, flat_pooled = torch.cat(params), torch.cat(pooled)  # (R, P), (R, H) over the R responses
    with torch.no_grad():
        found = pair_scores(strategy, model.head, flat_params[first], flat_params[second], flat_pooled[first],
                            flat_pooled[second], model.rm_config.temperature)
    sizes = torch.bincount(owner, minlength=len(keep)).double()
    scores = torch.zeros(len(keep), dtype=torch.float64).index_add_(0, owner, found["score"]) / sizes
    if strategy == "random":
        scores = torch.rand(len(keep), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if strategy == "diverse_bald":
        features = torch.stack([p.double().mean(0) for p in pooled])  # (N, H): an item's responses, averaged
        order = diverse_greedy(scores, features, budget, seed)
    else:
        order = tie_break_order(scores, seed)[:budget].tolist()

    def preferences(number: int) -> list[dict]:
        return [{"a": i, "b": j, "p": float(found["p"][m]), "p_std": float(found["p_std"][m])}
                for (i, j), m in zip(list_pairs(len(params[number])), rows_of[number])]

    return [{**items[keep[n]].row, "acquisition": float(scores[n]), "preferences": preferences(n)} for n in order]
