"""report.html: one self-contained page (no script, no network: a Content-Security-Policy forbids any request;
figures are inline PNG data) showing an evaluation, and a second model beside it with ``--compare``.

Every number on the page comes from eval_results.json and its cell carries the path of that number
(``data-key='["sets", "hh", "accuracy"]'``), so a test can check the page against the file. All text from the
data and the paths is escaped with ``html.escape``.
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from discorm.eval import figures
from discorm.eval.rewardbench import SUBSET_MAPPING

TEXT_LIMIT = 1200  # characters of a prompt or response shown for a wrongly ranked item
SECTIONS = ("summary", "rewardbench", "subsets", "calibration", "scores", "length", "wrong", "rated", "compare")
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1150px;color:#222;
line-height:1.4;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:2px solid #2a7ab9;padding-bottom:.2rem;margin-top:2.2rem}
h3{margin-bottom:.4rem}.meta{color:#555;font-size:.9rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}th{background:#eef4fa}
td.name,th.name{text-align:left}.figs{display:flex;flex-wrap:wrap;gap:1rem}.figs img{max-width:100%}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:.5rem;margin:.2rem 0 .8rem;
font-size:.82rem;max-height:18rem;overflow:auto}
.wrong{border:1px solid #ddd;border-radius:6px;padding:.4rem .8rem;margin:.6rem 0}.note{color:#555;font-size:.85rem}
.label{font-weight:600;font-size:.85rem}.better{color:#1a7f37}.worse{color:#b42318}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


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


def cell(results: dict, *path, css: str = "") -> str:
    """A table cell holding the number at ``path`` in eval_results.json, tagged with that path."""
    value = results
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    css_attr = f' class="{css}"' if css else ""
    return f"<td{css_attr} data-key='{esc(json.dumps(list(path)))}'>{esc(fmt(value))}</td>"


def table(header: list[str], rows: list[str]) -> str:
    head = "".join(f'<th class="name">{esc(h)}</th>' if i == 0 else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(header))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def image(data_uri: str, alt: str) -> str:
    return f'<img src="{data_uri}" alt="{esc(alt)}">'


def _messages_text(messages: list[dict]) -> str:
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _clip(text: str) -> str:
    if len(text) <= TEXT_LIMIT:
        return text
    return text[:TEXT_LIMIT] + f" … [{len(text) - TEXT_LIMIT} more characters]"


# ----------------------------------------------------------------------------- sections
def _summary(results: dict) -> str:
    header = ["set", "format", "items", "accuracy", "95% interval", "pick-longer baseline", "margin", "NLL",
              "Brier", "ECE", "Spearman(reward, length)", "mean σ", "items/s"]
    rows = []
    for name in results["sets"]:
        s = ("sets", name)
        rows.append(f'<tr><td class="name">{esc(name)}</td>' + cell(results, *s, "format") + cell(results, *s, "items")
                    + cell(results, *s, "accuracy") + cell(results, *s, "accuracy_ci")
                    + cell(results, *s, "length", "baseline_accuracy") + cell(results, *s, "margin")
                    + cell(results, *s, "nll") + cell(results, *s, "brier") + cell(results, *s, "ece")
                    + cell(results, *s, "length", "spearman_reward_length") + cell(results, *s, "mean_sigma")
                    + cell(results, *s, "speed", "items_per_second") + "</tr>")
    model = results["model"]
    notes = (f"Accuracy: share of items ranked right (RewardBench v1 sets: a tie is wrong; other sets: a tie at the "
             f"top shares the credit). Interval: {results['settings']['confidence']:.0%} percentile bootstrap, "
             f"{results['settings']['bootstrap_resamples']} resamples, seed {results['settings']['seed']}. "
             f"NLL, Brier and ECE (15 bins, symmetrised) are of P(chosen ≻ rejected)"
             f"{' with temperature ' + fmt(model['temperature']) if model['temperature'] != 1.0 else ''}.")
    return (f'<section id="summary"><h2>Headline</h2>{table(header, rows)}<p class="note">{esc(notes)}</p>'
            "</section>")


def _rewardbench(results: dict) -> str:
    parts = []
    for name, s in results["sets"].items():
        if "rewardbench" in s:
            header = ["score", *SUBSET_MAPPING, "Prior Sets", "Overall"]
            rows = []
            for label, base in (("this model", ("sets", name, "rewardbench")),
                                ("pick the longer response", ("sets", name, "rewardbench", "length_baseline"))):
                rows.append(f'<tr><td class="name">{esc(label)}</td>'
                            + "".join(cell(results, *base, "sections", sec) for sec in SUBSET_MAPPING)
                            + cell(results, *base, "prior_sets") + cell(results, *base, "overall") + "</tr>")
            missing = s["rewardbench"]["missing_sections"]
            note = ("Sections weight their subsets by RewardBench's EXAMPLE_COUNTS; Overall weights each section 2 "
                    "and Prior Sets 1, leaving out absent ones."
                    + (f" Missing: {', '.join(missing)} — not comparable with the leaderboard." if missing else ""))
            parts.append(f"<h3>{esc(name)} (RewardBench)</h3>{table(header, rows)}<p class='note'>{esc(note)}</p>")
        if "rewardbench2" in s:
            subsets = list(s["subsets"])
            header = ["score", *subsets, "Overall"]
            rows = []
            for label, key in (("this model", "score"), ("pick the longer response", "length_baseline")):
                overall = ("rewardbench2", "overall") if key == "score" else ("rewardbench2", "length_baseline",
                                                                              "overall")
                rows.append(f'<tr><td class="name">{esc(label)}</td>'
                            + "".join(cell(results, "sets", name, "subsets", sub, key) for sub in subsets)
                            + cell(results, "sets", name, *overall) + "</tr>")
            note = ("Best-of-N: credit 1/(completions tied at the top) when the chosen one is among them; Ties is "
                    "RewardBench 2's composite score; Overall is the mean of the subset scores.")
            parts.append(f"<h3>{esc(name)} (RewardBench 2)</h3>{table(header, rows)}<p class='note'>{esc(note)}</p>")
    if not parts:
        return ""
    return f'<section id="rewardbench"><h2>RewardBench scores</h2>{"".join(parts)}</section>'


def _subsets(results: dict) -> str:
    overview = [{"label": name, "value": s["accuracy"], "interval": s["accuracy_ci"],
                 "baseline": s["length"]["baseline_accuracy"]} for name, s in results["sets"].items()]
    parts = [image(figures.score_bars(overview, "Accuracy per set"), "accuracy per set")]
    tables = []
    for name, s in results["sets"].items():
        if not s["subsets"]:
            continue
        rows = [{"label": sub, "value": e["score"], "interval": e["score_ci"], "baseline": e["length_baseline"]}
                for sub, e in s["subsets"].items()]
        parts.append(image(figures.score_bars(rows, f"{name}: per subset"), f"{name} per subset"))
        body = [f'<tr><td class="name">{esc(sub)}</td>' + cell(results, "sets", name, "subsets", sub, "items")
                + cell(results, "sets", name, "subsets", sub, "score")
                + cell(results, "sets", name, "subsets", sub, "score_ci")
                + cell(results, "sets", name, "subsets", sub, "length_baseline") + "</tr>" for sub in s["subsets"]]
        tables.append(f"<h3>{esc(name)}</h3>"
                      + table(["subset", "items", "score", "95% interval", "pick-longer baseline"], body))
    return (f'<section id="subsets"><h2>Accuracy per set and subset</h2><div class="figs">{"".join(parts)}</div>'
            f'{"".join(tables)}</section>')


def _calibration(results: dict) -> str:
    images = [image(figures.reliability(s["reliability"], f"{name}: reliability"), f"{name} reliability")
              for name, s in results["sets"].items()]
    return (f'<section id="calibration"><h2>Calibration of P(chosen ≻ rejected)</h2><div class="figs">'
            f'{"".join(images)}</div></section>')


def _responses_by_role(records: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rewards, lengths, is_chosen) over every response, and the chosen mask per response."""
    rewards = np.array([x for r in records for x in r["scores"]], dtype=float)
    lengths = np.array([x for r in records for x in r["lengths"]], dtype=float)
    chosen = np.array([i < r["num_correct"] for r in records for i in range(len(r["scores"]))], dtype=bool)
    return rewards, lengths, chosen, ~chosen


def _scores(results: dict, records: dict) -> str:
    images = []
    for name in results["sets"]:
        rewards, _, chosen, rejected = _responses_by_role(records[name])
        images.append(image(figures.score_histogram(rewards[chosen], rewards[rejected], f"{name}: rewards"),
                            f"{name} reward histogram"))
    return (f'<section id="scores"><h2>Rewards of chosen and rejected responses</h2><div class="figs">'
            f'{"".join(images)}</div></section>')


def _length(results: dict, records: dict) -> str:
    images, rows = [], []
    for name in results["sets"]:
        rewards, lengths, chosen, _ = _responses_by_role(records[name])
        images.append(image(figures.length_scatter(lengths, rewards, chosen, f"{name}: reward vs length"),
                            f"{name} reward vs length"))
        s = ("sets", name, "length")
        rows.append(f'<tr><td class="name">{esc(name)}</td>' + cell(results, *s, "spearman_reward_length")
                    + cell(results, *s, "chosen_longer_share")
                    + cell(results, *s, "chosen_longer", "accuracy") + cell(results, *s, "chosen_longer", "items")
                    + cell(results, *s, "chosen_not_longer", "accuracy")
                    + cell(results, *s, "chosen_not_longer", "items")
                    + cell(results, "sets", name, "accuracy") + cell(results, *s, "baseline_accuracy") + "</tr>")
    header = ["set", "Spearman(reward, length)", "chosen is longer (share)", "accuracy: chosen longer", "items",
              "accuracy: chosen not longer", "items", "accuracy", "pick-longer baseline"]
    note = ("Length is the number of response tokens the model saw. A model that rewards length is right when the "
            "chosen response is the longer one and wrong otherwise; the baseline always picks the longer response.")
    return (f'<section id="length"><h2>Length bias</h2>{table(header, rows)}<p class="note">{esc(note)}</p>'
            f'<div class="figs">{"".join(images)}</div></section>')


def _tagged(label: str, entry: dict, path: list, key: str) -> str:
    """' · label = value', the value tagged with its path in eval_results.json."""
    return f" · {esc(label)} = <span data-key='{esc(json.dumps([*path, key]))}'>{esc(fmt(entry[key]))}</span>"


def _wrong(results: dict, sets: dict) -> str:
    parts = []
    for name, s in results["sets"].items():
        items = sets[name].items
        blocks = []
        for rank, entry in enumerate(s["confidently_wrong"]):
            item = items[entry["index"]]
            path = ["sets", name, "confidently_wrong", rank]
            head = (f"<p class='label'>#{entry['index']}" + (f" · subset {esc(item.subset)}" if item.subset else "")
                    + (f" · id {esc(item.item_id)}" if item.item_id else "")
                    + (_tagged("P(chosen ≻ rejected)", entry, path, "p_chosen") if entry["p_chosen"] is not None
                       else "")
                    + _tagged("reward gap (chosen − best rejected)", entry, path, "reward_gap") + "</p>")
            texts = [("prompt", _messages_text(item.prompt))]
            texts += [(("chosen" if i < item.num_correct else "rejected"), _messages_text(r))
                      for i, r in enumerate(item.responses)]
            body = "".join(f"<div class='label'>{esc(label)}</div><pre>{esc(_clip(text))}</pre>"
                           for label, text in texts)
            blocks.append(f"<div class='wrong'>{head}{body}</div>")
        if blocks:
            parts.append(f"<h3>{esc(name)}</h3>{''.join(blocks)}")
    content = "".join(parts) or "<p>No item was ranked wrong.</p>"
    return (f'<section id="wrong"><h2>Most confidently wrong</h2><p class="note">Items ranked wrong, the most '
            f"confident first (lowest P(chosen ≻ rejected), else the largest reward gap).</p>{content}</section>")


def _rated(results: dict) -> str:
    rows = []
    for name, s in results["rated_sets"].items():
        for attribute in s["attributes"]:
            base = ("rated_sets", name, "attributes", attribute)
            rows.append(f'<tr><td class="name">{esc(name)}</td><td class="name">{esc(attribute)}</td>'
                        + cell(results, "rated_sets", name, "rated", attribute)
                        + "".join(cell(results, *base, m) for m in ("rmse", "pearson", "spearman", "nll", "sigma"))
                        + "</tr>")
    header = ["set", "attribute", "rated responses", "RMSE", "Pearson", "Spearman", "NLL", "mean σ"]
    note = ("Per attribute, over the responses that rate it: the predicted value against the rating (NLL and σ: "
            "Gaussian outputs only).")
    return (f'<section id="rated"><h2>Rated attributes</h2>{table(header, rows)}<p class="note">{esc(note)}</p>'
            "</section>")


def _compare(results: dict, other) -> str:
    comparison = results["compare"]
    rows = []
    for name, c in comparison["sets"].items():
        p = c.get("p_value")
        css = "" if p is None or p >= 0.05 else ("better" if c["difference"] > 0 else "worse")
        base = ("compare", "sets", name)
        rows.append(f'<tr><td class="name">{esc(name)}</td>' + cell(results, *base, "paired_items")
                    + cell(results, *base, "accuracy") + cell(results, *base, "other_accuracy")
                    + cell(results, *base, "difference", css=css) + cell(results, *base, "difference_ci")
                    + cell(results, *base, "p_value", css=css) + "</tr>")
    header = ["set", "paired items", "this model", "other model", "difference", "95% interval", "p (paired bootstrap)"]
    bars = []
    for name, s in results["sets"].items():
        bars.append({"label": name, "value": s["accuracy"], "interval": s["accuracy_ci"], "group": "this model"})
        theirs = other.results["sets"].get(name)
        if theirs is not None:
            bars.append({"label": name, "value": theirs["accuracy"], "interval": theirs["accuracy_ci"],
                         "group": "other model"})
    other_model = comparison["other_model"]
    note = ("Items are paired by content; the difference is resampled pair by pair "
            f"({results['settings']['bootstrap_resamples']} resamples). Other model: {other_model['path']} "
            f"({other_model['head']} head, reward mode {other_model['reward_mode']}).")
    return (f'<section id="compare"><h2>Comparison with {esc(comparison["other"])}</h2>{table(header, rows)}'
            f'<p class="note">{esc(note)}</p><div class="figs">'
            f'{image(figures.score_bars(bars, "Accuracy: this model vs the other"), "comparison")}</div></section>')


def render_report(evaluation, other=None) -> str:
    results = evaluation.results
    model = results["model"]
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = (f"model {model['path']} · {model['head']} head · reward mode {model['reward_mode']} · template "
            f"{model['template']} · cutoff {model['cutoff_len']} tokens · {results['settings']['device']} · "
            f"{generated}")
    body = []
    if results["sets"]:  # ranking sets
        body += [_summary(results), _rewardbench(results), _subsets(results), _calibration(results),
                 _scores(results, evaluation.records), _length(results, evaluation.records),
                 _wrong(results, evaluation.sets)]
    if results.get("rated_sets"):
        body.append(_rated(results))
    if other is not None:
        body.append(_compare(results, other))
    title = f"Reward model evaluation: {model['path']}"
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1><p class='meta'>{esc(meta)}</p>"
            f"{''.join(body)}</body></html>")


def write_report(evaluation, path: str | Path, other=None) -> Path:
    path = Path(path)
    path.write_text(render_report(evaluation, other), encoding="utf-8")
    return path
