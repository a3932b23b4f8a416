"""``discorm select``: a pool file of unlabelled comparisons -> the ``budget`` items to label next, written as JSONL
(the pool's rows plus ``acquisition`` and ``preferences``), Label Studio tasks or Argilla records
(``data/annotations.py``). ``model/selection.py`` chooses; this file reads and writes."""

from __future__ import annotations

from pathlib import Path

from discorm.data.annotations import WRITERS
from discorm.data.loader import read_path
from discorm.data.pool import excluded_keys, read_pool_item
from discorm.errors import DataError
from discorm.files import check_destination
from discorm.model.reward_model import RewardModel
from discorm.model.selection import select_items


def select_file(model_dir: str, pool_path: str, output_path: str, budget: int, strategy: str = "bald",
                seed: int = 0, exclude_path: str | None = None, output_format: str = "jsonl", batch_size: int = 8,
                force: bool = False) -> int:
    """Choose ``budget`` items of the pool file to label next and write them to ``output_path`` (replaced only
    with ``force``); ``exclude_path``: a file (any pair or list format, e.g. the held-out set) whose comparisons are
    never chosen. Returns the number written."""
    reads = [p for p in (pool_path, exclude_path) if p is not None]
    for path in reads:
        if not Path(path).exists():
            raise DataError(f"{path} does not exist; pass a .jsonl/.json/.parquet/.csv file of pool items.")
    check_destination(output_path, force, reads=reads, option=f"--out {output_path}")
    if output_format not in WRITERS:
        raise DataError(f"--format {output_format!r} is not a selection format; use one of {', '.join(WRITERS)}.")
    items = [read_pool_item(row, where) for where, row in read_path(Path(pool_path))]
    listed = next((item for item in items if len(item.responses) != 2), None)
    if output_format != "jsonl" and listed is not None:
        raise DataError(f"{listed.where}: the pool item compares {len(listed.responses)} responses, and --format "
                        f"{output_format} is written for pairs; give the pool pairs, or write --format jsonl.")
    excluded = excluded_keys(read_path(Path(exclude_path)), exclude_path) if exclude_path else set()
    model = RewardModel.from_pretrained(model_dir).eval()
    selected = select_items(model, items, budget, strategy, seed, excluded, batch_size, show_progress=True)
    WRITERS[output_format](output_path, selected)
    return len(selected)
