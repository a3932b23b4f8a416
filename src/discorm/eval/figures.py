"""The report's figures, drawn with matplotlib and returned as inline PNG data (``data:image/png;base64,...``)."""

from __future__ import annotations

import base64
import io

import numpy as np

from discorm.plots import draw_reliability, plt

CHOSEN_COLOUR, REJECTED_COLOUR, OTHER_COLOUR = "#2a7ab9", "#d1603d", "#7a7a7a"


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def score_bars(rows: list[dict], title: str, xlabel: str = "accuracy / score") -> str:
    """Horizontal bars with their 95% interval. Each row: label, value, interval (lo, hi) or None, and optional
    baseline (a marker) and group (bars of one label side by side: this model and the compared one)."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    groups = list(dict.fromkeys(r.get("group", "") for r in rows))
    height = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.42 * len(labels) * len(groups)))
    colours = [CHOSEN_COLOUR, OTHER_COLOUR]
    baseline_drawn = False
    for g, group in enumerate(groups):
        members = [r for r in rows if r.get("group", "") == group]
        ys = np.array([labels.index(r["label"]) for r in members]) + (g - (len(groups) - 1) / 2) * height
        values = np.array([np.nan if r["value"] is None else r["value"] for r in members], dtype=float)
        low = np.array([v - r["interval"][0] if r.get("interval") else 0 for v, r in zip(values, members)])
        high = np.array([r["interval"][1] - v if r.get("interval") else 0 for v, r in zip(values, members)])
        ax.barh(ys, values, height=height * 0.9, color=colours[g % 2], alpha=0.85, label=group or None,
                xerr=np.clip(np.vstack([low, high]), 0, None), capsize=3)
        for y, r in zip(ys, members):
            if r.get("baseline") is not None:
                ax.plot([r["baseline"]], [y], marker="|", markersize=14, color="black",
                        label=None if baseline_drawn else "pick the longer response")
                baseline_drawn = True
    ax.axvline(0.5, color="#999", linewidth=0.8, linestyle=":")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.02), xlabel=xlabel, title=title)
    if baseline_drawn or len(groups) > 1:
        ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def reliability(bins: dict, title: str) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 4.6))
    draw_reliability(ax, [bins["confidence"], bins["frequency"], bins["count"]], title)
    return _png(fig)


def score_histogram(chosen: np.ndarray, rejected: np.ndarray, title: str) -> str:
    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    both = np.concatenate([chosen, rejected])
    edges = np.linspace(both.min(), both.max() + 1e-9, 31) if len(both) else 10
    ax.hist(chosen, bins=edges, alpha=0.6, color=CHOSEN_COLOUR, label=f"chosen ({len(chosen)})")
    ax.hist(rejected, bins=edges, alpha=0.6, color=REJECTED_COLOUR, label=f"rejected ({len(rejected)})")
    ax.set(xlabel="reward", ylabel="responses", title=title)
    ax.legend(fontsize=8)
    return _png(fig)


def length_scatter(lengths: np.ndarray, rewards: np.ndarray, chosen: np.ndarray, title: str) -> str:
    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    ax.scatter(lengths[chosen], rewards[chosen], s=9, alpha=0.5, color=CHOSEN_COLOUR, label="chosen")
    ax.scatter(lengths[~chosen], rewards[~chosen], s=9, alpha=0.5, color=REJECTED_COLOUR, label="rejected")
    ax.set(xlabel="response length (tokens)", ylabel="reward", title=title)
    ax.legend(fontsize=8)
    return _png(fig)


def level_reliability(reliability: dict[str, dict], title: str) -> str:
    """One reliability curve per level: the mean observed share of raters against the predicted share, per bin."""
    fig, ax = plt.subplots(figsize=(4.6, 4.6))
    for level, bins in reliability.items():
        draw_reliability(ax, [bins["predicted"], bins["observed"], bins["count"]], title,
                         label=f"{level} (size = responses)")
    ax.set(xlabel="predicted share of raters", ylabel="observed share of raters")
    return _png(fig)


def disagreement_scatter(predicted: np.ndarray, observed: np.ndarray, title: str) -> str:
    """Predicted against observed disagreement (1 - the largest share of raters), one point per response."""
    fig, ax = plt.subplots(figsize=(4.6, 4.6))
    top = max(float(np.max(predicted, initial=0)), float(np.max(observed, initial=0)), 0.05) * 1.05
    ax.plot([0, top], [0, top], "k--", linewidth=1)
    ax.scatter(predicted, observed, s=9, alpha=0.5, color=CHOSEN_COLOUR)
    ax.set(xlabel="predicted disagreement", ylabel="observed disagreement (1 - majority share)", title=title,
           xlim=(0, top), ylim=(0, top))
    return _png(fig)
