"""Dry-runs the prepared GPU run on the CPU, so that it cannot rot between the rare times a GPU is lent:
`DISCORM_GPU_DRYRUN=1 bash benchmarks/gpu/run.sh OUTDIR` with tiny settings (a tiny random Llama, 8 synthetic pairs,
one round, the current environment, no install), with a tiny stand-in for the carried default-model folder, then
checks that every step ran and wrote its table.

    python benchmarks/gpu/check_local.py            # under a minute on 2 CPU cores; OUTDIR: a temporary folder
    python benchmarks/gpu/check_local.py --out DIR  # keep the files
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STEPS = ["env", "pytest", "llama-1b", "llama-1b-gc", "smollm2", "overopt"]
FILES = ["summary.md", "env.txt", "install.log", "pytest.log", "throughput-llama-1b.log",
         "throughput-llama-1b-gc.log", "throughput-smollm2.log"]
MAX_FILES = 8  # what the GPU tool brings back from OUTDIR


def stand_in_models(folder: Path) -> Path:
    """A models folder like the one fetch_wheels.sh carries, holding a tiny Llama under the default model's name."""
    spec = importlib.util.spec_from_file_location("bench_throughput", HERE.parent / "bench_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    os.environ["DISCORM_HOME"] = str(folder / "home")
    tiny = Path(bench.random_llama("random-llama-tiny"))
    target = folder / "models" / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    for path in tiny.iterdir():
        if not path.name.endswith(".safetensors"):  # like the carried folder: configuration and tokenizer only
            (target / path.name).write_bytes(path.read_bytes())
    return target.parent


def table_rows(summary: str, section: str) -> list[str]:
    """The table rows (header and separator left out) of a `## section` of summary.md."""
    part = summary.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in part.splitlines() if line.startswith("| ") and not line.startswith(("| ---",
                                                                                                  "| fine-tuning"))]


def check(out: Path) -> list[str]:
    """What is missing or wrong in a dry run's OUTDIR; empty when all is well."""
    problems = [f"{name} was not written" for name in FILES if not (out / name).is_file()]
    if len(list(out.iterdir())) > MAX_FILES:
        problems.append(f"{len(list(out.iterdir()))} files in OUTDIR: only {MAX_FILES} come back from the GPU")
    if problems:
        return problems
    summary = (out / "summary.md").read_text()
    status = dict(re.findall(r"^\| ([\w-]+) \| (\d+) \| \d+ \|$", summary, re.M))
    problems += [f"step {step} did not run" for step in STEPS if step not in status]
    problems += [f"step {step} exited with {status[step]}" for step in STEPS
                 if step in status and step != "llama-1b-gc" and status[step] != "0"]
    pytest_log = (out / "pytest.log").read_text()
    if not re.search(r"\b(1[2-9]|[2-9]\d) skipped\b", pytest_log):
        problems.append("pytest -m gpu did not collect the 12 or more gpu tests (all skipped on the CPU)")
    rows = table_rows(summary, "throughput-llama-1b")
    for trainer in ("DiscoRM optimised", "TRL RewardTrainer"):
        if not any(trainer in row for row in rows):
            problems.append(f"the llama-1b table has no {trainer} row")
    if not any("DiscoRM optimised" in row for row in table_rows(summary, "throughput-smollm2")):
        problems.append("the smollm2 table has no DiscoRM optimised row")
    if "| fine-tuning | trainer |" not in summary.split("## throughput-llama-1b-gc\n", 1)[-1]:
        problems.append("the llama-1b-gc step printed no table")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="OUTDIR for run.sh (default: a temporary folder)")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = opts.out or Path(tmp, "out")
        env = {**os.environ, "DISCORM_GPU_DRYRUN": "1", "DISCORM_GPU_MODELS": str(stand_in_models(Path(tmp))),
               "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
        done = subprocess.run(["bash", str(HERE / "run.sh"), str(out)], env=env, cwd=REPO, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise SystemExit(f"run.sh exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        problems = check(out)
        if problems:
            raise SystemExit("the GPU run's dry run is broken:\n- " + "\n- ".join(problems)
                             + f"\n\nrun.sh printed:\n{done.stdout[-4000:]}")
        print((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
