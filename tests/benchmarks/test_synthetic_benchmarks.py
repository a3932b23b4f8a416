"""The synthetic benchmarks end to end on a few dozen pairs: they train through ``run_rm`` and score with the
package's inference code, so a change of those APIs shows up here rather than in a benchmark run hours long."""

import math

import pytest
import torch

from benchmarks import bench_calibration, bench_multi_objective


@pytest.fixture(autouse=True)
def one_thread():
    """As the benchmarks run by default (their --threads): two threads on a busy 2-core machine are 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("setting", ["A", "B"])
def test_bench_calibration_runs(tmp_path, setting):
    results = bench_calibration.run_setting(setting, 0, tmp_path, epochs=1, lr=1e-3, sizes=(96, 32, 48))
    assert list(results) == ["scalar", "scalar + TS", "gaussian", "categorical"]
    for head, metrics in results.items():
        expected = bench_calibration.COLUMNS[setting]
        if head.startswith("scalar"):  # no predicted spread
            expected = [c for c in expected if "sigma" not in c]
        assert set(expected) <= set(metrics), head
        assert all(math.isfinite(v) for k, v in metrics.items() if k in expected), head
    assert results["scalar + TS"]["temperature"] > 0
    assert not (tmp_path / f"{setting}-0" / "scalar" / "eval").exists()  # run_rm's evaluation is not asked for


def test_bench_multi_objective_runs(tmp_path):
    results = bench_multi_objective.run_seed(0, tmp_path, prompts=48, test_prompts=24, epochs=1, lr=1e-3)
    assert set(bench_multi_objective.HEADS) <= set(results)
    for label in bench_multi_objective.HEADS:
        assert {"spearman_U", "pair_accuracy"} <= set(results[label])
    assert results["_pairs"] > 0
