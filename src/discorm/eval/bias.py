"""Length-bias diagnostics: does the reward just measure how long a response is?

- Spearman's rank correlation between reward and response length (tokens the model saw), over every response;
- accuracy on the items whose chosen response is the longer one vs the others (a length-biased model is right
  on the first and wrong on the second);
- the "pick the longer response" baseline: the same scoring rule with the length as the reward.
"""

from __future__ import annotations

import numpy as np

from discorm.metrics import correlation


def chosen_is_longer(lengths: list[np.ndarray], num_correct: list[int]) -> np.ndarray:
    """Per item: the first chosen response is longer than every rejected one (False for an item with no rejected
    response, a tie, which has no credit)."""
    return np.array([n < len(length) and length[0] > length[n:].max() for length, n in zip(lengths, num_correct)],
                    dtype=bool)


def length_diagnostics(rewards: list[np.ndarray], lengths: list[np.ndarray], num_correct: list[int],
                       credit: np.ndarray) -> dict:
    """``credit``: per-item credit (NaN where an item has none, e.g. RewardBench 2 Ties rows)."""
    longer = chosen_is_longer(lengths, num_correct)
    scored = ~np.isnan(credit)

    def group(mask: np.ndarray) -> dict:
        members = mask & scored
        return {"items": int(members.sum()),
                "accuracy": float(credit[members].mean()) if members.any() else None}

    return {
        "spearman_reward_length": correlation(np.concatenate(rewards), np.concatenate(lengths), rank=True),
        "chosen_longer": group(longer),
        "chosen_not_longer": group(~longer),
        "chosen_longer_share": float(longer[scored].mean()) if scored.any() else None,
    }
