"""Figures of training and evaluation, drawn with matplotlib (Agg: no display needed) and written to PNG files
atomically: the training loss, the evaluation accuracy over steps, and reliability diagrams."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
import numpy as np  # noqa: E402

from discorm.files import replacing  # noqa: E402


def save(fig, path: str | Path, dpi: int = 100) -> str:
    """Write ``fig`` to ``path`` (PNG) in one rename and close it; returns the file name."""
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path).name


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard draws it); lighter for short runs."""
    weight = weight if weight is not None else (0.9 if len(values) >= 100 else 0.6)
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def plot_training(log_history: list[dict], output_dir: str | Path) -> list[str]:
    """training_loss.png (raw and smoothed) and, when evaluated, eval_accuracy.png; returns the files written."""
    written = []
    train = [(r["step"], r["loss"]) for r in log_history if "loss" in r and "step" in r]
    if train:
        steps, losses = zip(*train)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(steps, losses, alpha=0.35, label="loss")
        ax.plot(steps, smooth(list(losses)), label="smoothed")
        ax.set(xlabel="step", ylabel="training loss", title="Pairwise training loss")
        ax.legend()
        written.append(save(fig, Path(output_dir, "training_loss.png")))
    evals = [(r["step"], r["eval_accuracy"]) for r in log_history if "eval_accuracy" in r and "step" in r]
    if evals:
        steps, acc = zip(*evals)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(steps, acc, marker="o")
        ax.set(xlabel="step", ylabel="held-out accuracy", title="Evaluation accuracy", ylim=(0, 1.02))
        written.append(save(fig, Path(output_dir, "eval_accuracy.png")))
    return written


def draw_reliability(ax, bins: list[np.ndarray], title: str, label: str = "bins (size = pairs)") -> None:
    """The reliability diagram on ``ax``: bins (mean confidence, observed frequency, count) and the diagonal."""
    conf, freq, count = (np.asarray(b, dtype=float) for b in bins)
    if not ax.lines:
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    if len(conf):
        line, = ax.plot(conf, freq)
        ax.scatter(conf, freq, s=20 + 180 * count / count.max(), alpha=0.7, label=label, color=line.get_color())
    ax.set(xlabel="predicted P(preferred)", ylabel="observed frequency", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")


def plot_reliability(curves: dict[str, list[np.ndarray]], path: str | Path, title: str = "Reliability") -> str:
    """One reliability diagram with a curve per named set of bins; returns the file name."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, bins in curves.items():
        draw_reliability(ax, bins, title, label=f"{name} (size = pairs)")
    return save(fig, path)
