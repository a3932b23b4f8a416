"""Decisions every process of a multi-process run must take together (or the others wait at a collective for
ever): stopping on a signal, on a non-finite loss, on a failed checkpoint write."""

from __future__ import annotations

import torch
from accelerate.utils import reduce


def any_process(flag: bool, device: torch.device | str) -> bool:
    """True on every process if ``flag`` is true on any (a sum all-reduce; the flag itself in one process)."""
    return bool(reduce(torch.tensor([float(flag)], device=device), reduction="sum").item() > 0)
