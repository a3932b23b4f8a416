"""report.html: one self-contained page (no script, no network: a Content-Security-Policy forbids any request;
figures are inline PNG data) showing an evaluation, and a second model beside it with ``--compare``.

The markup is ``templates/report.html.j2``, rendered with autoescape: every text from the data and every path is
escaped by Jinja. This module prepares what the template cannot read from eval_results.json: the figures, the
notes, the texts of the most confidently wrong items and the scoring speed (timing.json). Every number on the page
comes from eval_results.json and its cell carries the path of that number (``data-key='["sets", "hh",
"accuracy"]'``), so a test can check the page against the file.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined

from discorm.eval import figures
from discorm.eval.formats import format_named
from discorm.files import write_text

TEXT_LIMIT = 1200  # characters of a prompt or response shown for a wrongly ranked item
SECTIONS = ("summary", "rewardbench", "subsets", "listwise", "calibration", "scores", "length", "wrong", "rated",
            "compare")
TEMPLATE = "report.html.j2"


def fmt(value) -> str:
    """How a number from eval_results.json is written on the page."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return " – ".join(fmt(v) for v in value)
    if isinstance(value, float) and not np.isfinite(value):
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def at(results: dict, path) -> object:
    """The value at ``path`` in eval_results.json (None where the path leads nowhere)."""
    value = results
    for key in path:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
            value = value[key]
        else:
            return None
    return value


def data_key(path) -> str:
    """A path as the page writes it in ``data-key``: a JSON list."""
    return json.dumps(list(path))


ENVIRONMENT = Environment(loader=PackageLoader("discorm.eval", "templates"), autoescape=True,
                          undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
ENVIRONMENT.filters.update(number=fmt, at=at, data_key=data_key)


def _image(data_uri: str, alt: str) -> dict:
    return {"src": data_uri, "alt": alt}


def _messages_text(messages: list[dict]) -> str:
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _clip(text: str) -> str:
    if len(text) <= TEXT_LIMIT:
        return text
    return text[:TEXT_LIMIT] + f" … [{len(text) - TEXT_LIMIT} more characters]"


def _responses_by_role(records: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rewards, lengths, is_chosen) over every response, and the chosen mask per response."""
    rewards = np.array([x for r in records for x in r["scores"]], dtype=float)
    lengths = np.array([x for r in records for x in r["lengths"]], dtype=float)
    chosen = np.array([i < r["num_correct"] for r in records for i in range(len(r["scores"]))], dtype=bool)
    return rewards, lengths, chosen, ~chosen


# ----------------------------------------------------------------------------- the view model
def _summary_note(results: dict) -> str:
    settings, temperature = results["settings"], results["model"]["temperature"]
    return (f"Accuracy: share of items ranked right (RewardBench v1 sets: a tie is wrong; other sets: a tie at the "
            f"top shares the credit). Interval: {settings['confidence']:.0%} percentile bootstrap, "
            f"{settings['bootstrap_resamples']} resamples, seed {settings['seed']}. "
            f"NLL, Brier and ECE (15 bins, symmetrised) are of P(chosen ≻ rejected)"
            f"{' with temperature ' + fmt(temperature) if temperature != 1.0 else ''}.")


def _summaries(results: dict) -> list[dict]:
    """The tables of the format summaries (RewardBench scores), one per set whose format has one."""
    tables = []
    for name, s in results["sets"].items():
        summary = format_named(s["format"]).summary
        if summary is None:
            continue
        table = summary.table(s)
        tables.append({"title": f"{name} ({summary.label})", "header": table.columns, "note": table.note,
                       "rows": [(label, [["sets", name, *path] for path in paths]) for label, paths in table.rows]})
    return tables


def _subset_figures(results: dict) -> list[dict]:
    overview = [{"label": name, "value": s["accuracy"], "interval": s["accuracy_ci"],
                 "baseline": s["length"]["baseline_accuracy"]} for name, s in results["sets"].items()]
    images = [_image(figures.score_bars(overview, "Accuracy per set"), "accuracy per set")]
    for name, s in results["sets"].items():
        if s["subsets"]:
            rows = [{"label": sub, "value": e["score"], "interval": e["score_ci"], "baseline": e["length_baseline"]}
                    for sub, e in s["subsets"].items()]
            images.append(_image(figures.score_bars(rows, f"{name}: per subset"), f"{name} per subset"))
    return images


def _wrong(results: dict, sets: dict) -> list[dict]:
    """Per set with wrongly ranked items: each item's header fields and its texts (clipped)."""
    groups = []
    for name, s in results["sets"].items():
        items, blocks = sets[name].items, []
        for rank, entry in enumerate(s["confidently_wrong"]):
            item = items[entry["index"]]
            texts = [("prompt", _messages_text(item.prompt))]
            texts += [(("chosen" if i < item.num_correct else "rejected"), _messages_text(r))
                      for i, r in enumerate(item.responses)]
            blocks.append({"index": entry["index"], "subset": item.subset, "id": item.item_id,
                           "path": ["sets", name, "confidently_wrong", rank], "has_p": entry["p_chosen"] is not None,
                           "texts": [(label, _clip(text)) for label, text in texts]})
        if blocks:
            groups.append({"name": name, "blocks": blocks})
    return groups


def _ranking(evaluation) -> dict:
    """What the sections of the ranking sets show beside the numbers of eval_results.json."""
    results, records = evaluation.results, evaluation.records
    speed = evaluation.timing.get("sets", {})
    calibration, scores, length = [], [], []
    for name, s in results["sets"].items():
        rewards, lengths, chosen, rejected = _responses_by_role(records[name])
        calibration.append(_image(figures.reliability(s["reliability"], f"{name}: reliability"),
                                  f"{name} reliability"))
        scores.append(_image(figures.score_histogram(rewards[chosen], rewards[rejected], f"{name}: rewards"),
                             f"{name} reward histogram"))
        length.append(_image(figures.length_scatter(lengths, rewards, chosen, f"{name}: reward vs length"),
                             f"{name} reward vs length"))
    return {"summary_note": _summary_note(results), "summaries": _summaries(results),
            "speed": {name: fmt(speed.get(name, {}).get("items_per_second")) for name in results["sets"]},
            "subset_figures": _subset_figures(results), "calibration_figures": calibration, "score_figures": scores,
            "length_figures": length, "wrong": _wrong(results, evaluation.sets)}


def _levels(evaluation) -> list[dict]:
    """Per set rated on levels: its name, the metrics to show and its reliability and disagreement figures."""
    sets = []
    for name, s in evaluation.results.get("rated_sets", {}).items():
        if "levels" not in s:
            continue
        records = evaluation.records[name]
        predicted = np.array([r["predicted_disagreement"] for r in records])
        observed = np.array([r["observed_disagreement"] for r in records])
        sets.append({"name": name, "levels": list(s["rated"]), "figures": [
            _image(figures.level_reliability(s["levels"]["reliability"], f"{name}: share of raters per level"),
                   f"{name} reliability of the level shares"),
            _image(figures.disagreement_scatter(predicted, observed, f"{name}: disagreement"),
                   f"{name} predicted vs observed disagreement")]})
    return sets


def _compare(results: dict) -> dict:
    comparison, settings = results["compare"], results["settings"]
    rows = []
    for name, c in comparison["sets"].items():
        p = c.get("p_value")
        rows.append((name, "" if p is None or p >= 0.05 else ("better" if c["difference"] > 0 else "worse")))
    bars = []
    for name, s in results["sets"].items():
        bars.append({"label": name, "value": s["accuracy"], "interval": s["accuracy_ci"], "group": "this model"})
        theirs = comparison["sets"].get(name, {})
        if "other_set_accuracy" in theirs:
            bars.append({"label": name, "value": theirs["other_set_accuracy"],
                         "interval": theirs["other_set_accuracy_ci"], "group": "other model"})
    other = comparison["other_model"]
    note = ("Items are paired by content; the difference is resampled pair by pair "
            f"({settings['bootstrap_resamples']} resamples). Other model: {other['path']} "
            f"({other['head']} head, reward mode {other['reward_mode']}).")
    return {"rows": rows, "note": note,
            "figure": _image(figures.score_bars(bars, "Accuracy: this model vs the other"), "comparison")}


def render_report(evaluation) -> str:
    """The page of ``evaluation`` (``.results``, ``.records``, ``.sets``, ``.timing``)."""
    results = evaluation.results
    model = results["model"]
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = (f"model {model['path']} · {model['head']} head · reward mode {model['reward_mode']} · template "
            f"{model['template']} · cutoff {model['cutoff_len']} tokens · {results['settings']['device']} · "
            f"{generated}")
    return ENVIRONMENT.get_template(TEMPLATE).render(
        results=results, title=f"Reward model evaluation: {model['path']}", meta=meta,
        ranking=_ranking(evaluation) if results["sets"] else None,
        compare=_compare(results) if "compare" in results else None, levels=_levels(evaluation))


def write_report(evaluation, path: str | Path) -> Path:
    write_text(path, render_report(evaluation))
    return Path(path)
