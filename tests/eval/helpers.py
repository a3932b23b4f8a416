"""Shared pieces of the evaluation tests: files written row by row, and a scorer whose scores are written in the
responses themselves (the last word of a response is its reward), so expected values can be computed by hand."""

from __future__ import annotations

import json

import torch


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def text_scores(model, eval_set, batch_size=8, show_progress=False):
    """Stand-in for eval.scoring.score_items: each response's reward is the number it ends with."""
    params = [torch.tensor([[float(r[-1]["content"].split()[-1])] for r in item.responses])
              for item in eval_set.items]
    return params, 1.0


def run_dir(tiny_llama, tmp_path, head="scalar", name="run"):
    from tests.conftest import build_model

    model = build_model(tiny_llama, "full", head=head).eval()
    model.save_pretrained(tmp_path / name)
    return tmp_path / name
