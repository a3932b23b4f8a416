"""A model directory with the configuration and tokenizer of SOURCE and freshly initialised weights, for throughput
runs where the real weights cannot travel (training speed does not depend on the weights' values).

    python benchmarks/gpu/random_weights.py benchmarks/gpu/models/smollm2-135m-instruct /tmp/smollm2-135m-random
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a model directory (config.json and tokenizer files suffice)")
    parser.add_argument("target", type=Path, help="where the model with random weights is written")
    opts = parser.parse_args()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(opts.source))
    model.save_pretrained(opts.target)
    for path in opts.source.iterdir():
        if path.is_file() and not (opts.target / path.name).exists():
            shutil.copy(path, opts.target / path.name)


if __name__ == "__main__":
    main()
