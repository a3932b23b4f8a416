"""Run the model over evaluation items: packed, prefix-shared, no gradient, length-sorted batches.

An item's K responses are one block ``[prompt | r_1 | ... | r_K]`` whose branches share the prompt, through
``model.inference.score_groups``: a pair is a block of two, a best-of-4 row a block of four.
"""

from __future__ import annotations

import time

from discorm.eval.sets import EvalSet
from discorm.model.inference import score_groups


def score_items(model, eval_set: EvalSet, batch_size: int = 8, show_progress: bool = True) -> tuple[list, float]:
    """-> (head params per item, each (K, P), in item order; seconds spent in the model)."""
    groups = [{"prompt_ids": item.prompt_ids, "responses_ids": item.response_ids, "images": item.images}
              for item in eval_set.items]
    begin = time.perf_counter()
    params = score_groups(model, groups, batch_size=batch_size, show_progress=show_progress,
                          description=f"Scoring {eval_set.name}")
    return params, time.perf_counter() - begin
