"""Evaluation suite: named sets (pairs, RewardBench v1 and 2), bootstrap intervals, bias diagnostics, a
self-contained HTML report and paired comparisons. Entry point: :func:`discorm.eval.runner.run_evaluation`."""
