"""``--compare OTHER``: a second model side by side, with a paired bootstrap test of the accuracy difference.

OTHER is an earlier ``discorm eval`` output (its eval_results.json, or the folder holding it with its
predictions/), or a model, which is then evaluated on the same sets with the same options. Items are paired by
their content (``EvalItem.key``), so the two models may use different tokenizers; only items both have scored
count in the test.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from discorm.errors import DataError
from discorm.eval.results import RESULTS_FILE
from discorm.eval.stats import paired_bootstrap
from discorm.files import read_json


def load_results(path: str | Path) -> tuple[dict, dict[str, list[dict]]] | None:
    """An earlier ``discorm eval`` output (file or folder, or a run directory holding one in eval/) -> (results,
    records per set); None if it is not one (e.g. the flat metrics file older training runs wrote: evaluate the
    run itself instead)."""
    path = Path(path)
    candidates = [path / RESULTS_FILE, path / "eval" / RESULTS_FILE] if path.is_dir() else [path]
    file = next((c for c in candidates if c.is_file() and c.suffix == ".json"), None)
    if file is None:
        return None
    results = read_json(file, DataError, fix="rerun `discorm eval`")
    if not isinstance(results, dict) or "discorm_eval" not in results:
        return None
    records = {}
    for name, summary in results["sets"].items():
        predictions = file.parent / summary["predictions_file"]
        if not predictions.is_file():
            raise DataError(f"{predictions} is missing; --compare needs the predictions/ folder written next to "
                            f"{file.name}. Rerun `discorm eval` or compare with the model itself.")
        records[name] = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    return results, records


def paired_credit(records: list[dict], other: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Credits of the items both scored, matched by content key (repeated keys are matched in order)."""
    theirs = defaultdict(list)
    for record in other:
        if record["credit"] is not None:
            theirs[record["key"]].append(record["credit"])
    mine, matched = [], []
    for record in records:
        if record["credit"] is not None and theirs.get(record["key"]):
            mine.append(record["credit"])
            matched.append(theirs[record["key"]].pop(0))
    return np.array(mine), np.array(matched)


def comparison(results: dict, records: dict, other_results: dict, other_records: dict, resamples: int,
               seed: int, other_path: str) -> dict:
    sets = {}
    for name in results["sets"]:
        if name not in other_records:
            sets[name] = {"paired_items": 0, "note": "not in the other evaluation"}
            continue
        a, b = paired_credit(records[name], other_records[name])
        if len(a) == 0:
            sets[name] = {"paired_items": 0, "note": "no item in common (different data?)"}
            continue
        test = paired_bootstrap(a, b, resamples, seed)
        theirs = other_results["sets"][name]
        sets[name] = {"paired_items": test.pop("items"), "accuracy": float(a.mean()),
                      "other_accuracy": float(b.mean()), **test, "other_set_accuracy": theirs["accuracy"],
                      "other_set_accuracy_ci": theirs["accuracy_ci"]}
    return {"other": other_path, "other_model": other_results["model"], "sets": sets}
