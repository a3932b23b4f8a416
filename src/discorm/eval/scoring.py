"""Run the model over evaluation items: packed, prefix-shared, no gradient, length-sorted batches.

An item's K responses are scored in blocks of two that share the prompt, ``[prompt | r1 | r2]``, through
``model.inference.score_pairs``; with K odd the last block has an empty second response, whose score is not used
(packed, that costs nothing). A pair is one block; a best-of-4 row is two.
"""

from __future__ import annotations

import time

import torch

from discorm.eval.sets import EvalSet
from discorm.model.inference import score_pairs


def score_items(model, eval_set: EvalSet, batch_size: int = 8, show_progress: bool = True) -> tuple[list, float]:
    """-> (head params per item, each (K, P), in item order; seconds spent in the model)."""
    blocks, owners = [], []
    for index, item in enumerate(eval_set.items):
        responses = item.response_ids
        for start in range(0, len(responses), 2):
            second = responses[start + 1] if start + 1 < len(responses) else []
            blocks.append({"prompt_ids": item.prompt_ids, "chosen_ids": responses[start], "rejected_ids": second})
            owners.append(index)
    begin = time.perf_counter()
    params = score_pairs(model, blocks, batch_size=batch_size, show_progress=show_progress,
                         description=f"Scoring {eval_set.name}")
    seconds = time.perf_counter() - begin
    per_item: list[list[torch.Tensor]] = [[] for _ in eval_set.items]
    for owner, block in zip(owners, params):  # block: (2, P)
        per_item[owner].extend([block[0], block[1]])
    return [torch.stack(rows[: len(item.response_ids)]) for rows, item in zip(per_item, eval_set.items)], seconds
