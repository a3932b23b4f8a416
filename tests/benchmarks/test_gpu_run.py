"""The prepared GPU run (benchmarks/gpu/run.sh) cannot rot: its dry run on the CPU runs every step with tiny
settings and writes every table (benchmarks/gpu/check_local.py says what it checks)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # six tiny training processes and a pytest run: one to three minutes on 2 CPU cores
def test_gpu_run_dry_run_writes_every_table(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    done = subprocess.run([sys.executable, "benchmarks/gpu/check_local.py", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert "| full | DiscoRM optimised (split SDPA) |" in summary and "| full | TRL RewardTrainer |" in summary
    assert len(list(out.iterdir())) <= 8


def test_gpu_tests_are_marked_and_the_marker_is_registered():
    """Every test that skips without CUDA is marked `gpu`, so that `pytest -m gpu` on the GPU runs them all."""
    assert '"gpu: needs a CUDA GPU' in (REPO / "pyproject.toml").read_text()
    for path in (REPO / "tests").rglob("test_*.py"):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("@pytest.mark.skipif(not torch.cuda.is_available()"):
                assert "@pytest.mark.gpu" in lines[max(0, i - 3):i], f"{path.relative_to(REPO)}:{i + 1}"
