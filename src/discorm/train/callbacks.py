"""Logging to ``trainer_log.jsonl`` (one line per log event, written as it happens so nothing is lost on a
crash) and the plots drawn at the end of training."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

LOG_FILE = "trainer_log.jsonl"


class JsonlLogCallback(TrainerCallback):
    """Appends {step, loss, lr, accuracy, eval metrics, elapsed, remaining} to trainer_log.jsonl."""

    def __init__(self):
        self.start = None
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        self.first_step = state.global_step
        if state.is_world_process_zero:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            if not args.resume_from_checkpoint:
                Path(args.output_dir, LOG_FILE).unlink(missing_ok=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        elapsed = time.time() - (self.start or time.time())
        done = max(state.global_step - self.first_step, 1)
        remaining = elapsed / done * max(state.max_steps - state.global_step, 0)
        record = {"step": state.global_step, "epoch": state.epoch, **logs,
                  "elapsed": round(elapsed, 2), "remaining": round(remaining, 2)}
        if "learning_rate" in record:
            record["lr"] = record.pop("learning_rate")
        with open(Path(args.output_dir, LOG_FILE), "a") as handle:
            handle.write(json.dumps(record) + "\n")


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard draws it); lighter for short runs."""
    weight = weight if weight is not None else (0.9 if len(values) >= 100 else 0.6)
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(log_history: list[dict], output_dir: str) -> list[str]:
    """training_loss.png (raw and smoothed) and, when evaluated, eval_accuracy.png; returns the files written."""
    plt = pyplot()
    written = []
    train = [(r["step"], r["loss"]) for r in log_history if "loss" in r and "step" in r]
    if train:
        steps, losses = zip(*train)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(steps, losses, alpha=0.35, label="loss")
        ax.plot(steps, smooth(list(losses)), label="smoothed")
        ax.set(xlabel="step", ylabel="training loss", title="Pairwise training loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(Path(output_dir, "training_loss.png"), dpi=100)
        plt.close(fig)
        written.append("training_loss.png")
    evals = [(r["step"], r["eval_accuracy"]) for r in log_history if "eval_accuracy" in r and "step" in r]
    if evals:
        steps, acc = zip(*evals)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(steps, acc, marker="o")
        ax.set(xlabel="step", ylabel="held-out accuracy", title="Evaluation accuracy", ylim=(0, 1.02))
        fig.tight_layout()
        fig.savefig(Path(output_dir, "eval_accuracy.png"), dpi=100)
        plt.close(fig)
        written.append("eval_accuracy.png")
    return written


def plot_calibration(bins: list[np.ndarray], output_dir: str, title: str = "Reliability diagram") -> str:
    """calibration.png: observed frequency of the preferred outcome vs predicted P, per confidence bin."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    draw_reliability(ax, bins, title)
    fig.tight_layout()
    fig.savefig(Path(output_dir, "calibration.png"), dpi=100)
    plt.close(fig)
    return "calibration.png"


def draw_reliability(ax, bins: list[np.ndarray], title: str) -> None:
    """The reliability diagram on ``ax``: bins (mean confidence, observed frequency, count) and the diagonal."""
    conf, freq, count = (np.asarray(b, dtype=float) for b in bins)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    if len(conf):
        sizes = 20 + 180 * count / count.max()
        ax.scatter(conf, freq, s=sizes, alpha=0.7, label="bins (size = pairs)")
        ax.plot(conf, freq)
    ax.set(xlabel="predicted P(preferred)", ylabel="observed frequency", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
