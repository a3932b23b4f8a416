"""Training-step time of the default model on this CPU in float32, under bf16 autocast (`bf16: true`), and with
bf16 weights (`dtype: bfloat16`): the measurement behind DiscoRM's warning about bf16 on CPUs.

    python benchmarks/bench_precision.py [--pairs 8] [--cutoff 256] [--rounds 3]

To measure a CPU without bf16 instructions on one that has them, restrict PyTorch's kernels, oneDNN and MKL to
AVX2 (the table's header then says "kernels AVX2"):

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/bench_precision.py

Each step is a forward + backward pass of a packed, prefix-shared batch of 4 HH pairs with full fine-tuning
(the optimizer step is the same in every mode and left out). Modes alternate; the table shows medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import matmul_peak  # noqa: E402

HH_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-harmless-dev.jsonl"
MODES = {"float32": (torch.float32, False), "bf16 autocast": (torch.float32, True),
         "bf16 weights": (torch.bfloat16, False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--cutoff", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()

    import tempfile

    from discorm.config import DataArguments, FinetuningArguments, ModelArguments
    from discorm.data.collator import PackedPairCollator, model_inputs
    from discorm.model.loading import load_tokenizer
    from discorm.train.workflow import setup_data, setup_model

    folder = Path(tempfile.mkdtemp())
    (folder / "pairs.jsonl").write_text("\n".join(HH_FILE.read_text().splitlines()[: opts.pairs]) + "\n")
    model_args = ModelArguments()
    tokenizer = load_tokenizer(model_args.tokenizer_path)
    train = setup_data(DataArguments(dataset=str(folder / "pairs.jsonl"), cutoff_len=opts.cutoff), tokenizer).train
    batches = [PackedPairCollator()(list(train)[i : i + opts.batch]) for i in range(0, len(train), opts.batch)]
    model = setup_model(model_args, FinetuningArguments(finetuning_type="full"), tokenizer)
    fp32_backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}

    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(opts.rounds):
        for mode, (dtype, autocast) in MODES.items():
            model.backbone.load_state_dict(fp32_backbone)
            model.backbone.to(dtype)
            for index, batch in enumerate([batches[0], *batches]):  # the first is warm-up
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    params = model(**model_inputs(batch)).head_params
                params.float().sum().backward()
                model.zero_grad(set_to_none=True)
                if index:
                    times[mode].append(time.perf_counter() - start)
            print(f"{mode}: {statistics.median(times[mode]):.3f} s / step so far", flush=True)
    threads = torch.get_num_threads()
    print(f"fp32 matmul peak (2048x2048, {threads} threads): {matmul_peak(threads):.0f} GFLOP/s; "
          f"kernels {torch.backends.cpu.get_cpu_capability()}, oneDNN ISA limit "
          f"{os.environ.get('ONEDNN_MAX_CPU_ISA', 'none')}; CPU has AVX512-BF16 "
          f"{torch.cpu._is_avx512_bf16_supported()}, AMX {torch.cpu._is_amx_tile_supported()}\n")
    base = statistics.median(times["float32"])
    print("| precision | s / step (median) | × float32 time |")
    print("| --- | --- | --- |")
    for mode, values in times.items():
        median = statistics.median(values)
        print(f"| {mode} | {median:.3f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
