"""Freeze tuning with and without the frozen-trunk cache (``cache_frozen_trunk: true``), on the quick start.

Both runs are ``examples/quickstart.yaml`` (the default model, the built-in demo pairs, ``finetuning_type: freeze``
with its ``freeze_trainable_layers``), trained for ``--epochs`` epochs on the first ``--pairs`` pairs through the
recipe's own ``setup_model`` / ``setup_data`` / ``setup_trainer``; the cached run builds its cache in
``setup_trainer``, before the first step. Every run is its own process (so peak memory is its own), and the two
alternate for ``--rounds`` rounds. Reported: steps/s over epochs 2 and later (where the cache pays; in wall time, and
per CPU second of the process, which a machine shared with other jobs does not distort), the first
epoch's time (the cached run's includes building the cache), the cache size, peak RSS (peak GPU memory on CUDA),
and the final training loss of both runs (equal: the cache is exact).

    python benchmarks/bench_trunk_cache.py                    # 96 pairs, 3 epochs, 1 round: a few minutes on a CPU
    python benchmarks/bench_trunk_cache.py --pairs 400 --epochs 4 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_throughput import matmul_peak  # noqa: E402

QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def worker(opts) -> dict:
    import torch
    from transformers import TrainerCallback, set_seed

    from discorm.config import load_args
    from discorm.train.arguments import trainer_arguments
    from discorm.train.workflow import setup_data, setup_model, setup_trainer

    torch.set_num_threads(opts.threads)
    cuda = opts.device == "cuda"
    overrides = {"output_dir": tempfile.mkdtemp(), "num_train_epochs": opts.epochs, "max_samples": opts.pairs,
                 "use_cpu": not cuda, "disable_tqdm": True, "report_to": "none", "logging_steps": 1,
                 "cache_frozen_trunk": opts.mode == "cached", "eval_strategy": "no"}
    model_args, data_args, training_args, finetuning_args = load_args(str(QUICKSTART), overrides)
    arguments = trainer_arguments(training_args, data_args)
    marks: list[tuple[str, float, float, int]] = []  # (begin/end, wall time, this process's CPU time, step)

    class EpochTimer(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            marks.append(("begin", time.perf_counter(), time.process_time(), state.global_step))

        def on_epoch_end(self, args, state, control, **kwargs):
            marks.append(("end", time.perf_counter(), time.process_time(), state.global_step))

    set_seed(arguments.used.seed)  # as run_rm: the same head initialisation in both runs
    model = setup_model(model_args, finetuning_args, data_args=data_args)
    data = setup_data(data_args, model.tokenizer, arguments.used.seed)
    start = time.perf_counter()
    trainer = setup_trainer(model, data, data_args, arguments, finetuning_args, callbacks=[EpochTimer()])
    setup = time.perf_counter() - start
    trainer.train()
    ends = [(wall, cpu, step) for kind, wall, cpu, step in marks if kind == "end"]
    (first_end, first_cpu, first_steps), (last_end, last_cpu, last_steps) = ends[0], ends[-1]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "mode": opts.mode, "later_steps_per_s": (last_steps - first_steps) / (last_end - first_end),
        "later_steps_per_cpu_s": (last_steps - first_steps) / (last_cpu - first_cpu),
        "first_epoch_s": first_end - marks[0][1] + setup, "setup_s": setup, "steps": last_steps,
        "cache_mb": trainer.trunk_cache.nbytes / 2**20 if trainer.trunk_cache else 0.0,
        "final_loss": losses[-1], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=96, help="training pairs (max_samples); the quick start has 400")
    parser.add_argument("--epochs", type=int, default=3, help="at least 2: steps/s are measured from epoch 2 on")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds; the table shows the medians")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.epochs < 2:
        parser.error("--epochs must be at least 2: the cache pays from the second epoch on")
    if opts.worker:
        print("RESULT " + json.dumps(worker(opts)), flush=True)
        return
    print(f"{QUICKSTART.relative_to(ROOT)}: {opts.pairs} pairs, {opts.epochs} epochs, {opts.device}, "
          f"{opts.threads} threads, {opts.rounds} alternating rounds", flush=True)
    if opts.device == "cpu":
        print(f"fp32 matmul peak (2048x2048, {opts.threads} threads): {matmul_peak(opts.threads):.0f} GFLOP/s",
              flush=True)
    results: dict[str, list[dict]] = {}
    for round_index in range(opts.rounds):
        for mode in ("plain", "cached"):
            cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--pairs", str(opts.pairs), "--epochs",
                   str(opts.epochs), "--threads", str(opts.threads), "--device", opts.device]
            env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "TOKENIZERS_PARALLELISM": "false"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{mode} failed:\n{done.stderr[-3000:]}", flush=True)
                continue
            result = json.loads(line[7:])
            results.setdefault(mode, []).append(result)
            print(f"round {round_index + 1}: {mode:6s} {result['later_steps_per_s']:.3f} steps/s in epochs >= 2",
                  flush=True)
    print_table(results)


def print_table(results: dict[str, list[dict]]) -> None:
    import statistics

    memory = "peak GPU memory (MB)" if results and results[next(iter(results))][0]["peak_gpu_mb"] else "peak RSS (MB)"
    print(f"\n| run | steps/s, epochs >= 2 | × plain | steps per CPU second | × plain | epoch 1 incl. setup (s) | "
          f"cache (MB) | {memory} | final loss |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    keys = ("later_steps_per_s", "later_steps_per_cpu_s", "first_epoch_s", "cache_mb", "final_loss")
    medians = {mode: {k: statistics.median(r[k] for r in runs) for k in keys} for mode, runs in results.items()}
    base = medians.get("plain")
    for mode, median in medians.items():
        peak = statistics.median(r["peak_gpu_mb"] or r["peak_rss_mb"] for r in results[mode])
        wall, cpu = (f"{median[k] / base[k]:.2f}" if base else "-" for k in keys[:2])
        print(f"| {mode} | {median['later_steps_per_s']:.3f} | {wall} | {median['later_steps_per_cpu_s']:.3f} | "
              f"{cpu} | {median['first_epoch_s']:.1f} | {median['cache_mb']:.1f} | {peak:.0f} | "
              f"{median['final_loss']:.6f} |")


if __name__ == "__main__":
    main()
