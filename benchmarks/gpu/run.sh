#!/usr/bin/env bash
# The prepared GPU run: everything DiscoRM measures on a CUDA GPU, in one command of at most 9 minutes.
#
#     bash benchmarks/gpu/fetch_wheels.sh              # first, where PyPI is reachable (wheels + model config)
#     bash benchmarks/gpu/run.sh OUTDIR                # then on the GPU machine, from the repository root
#     DISCORM_GPU_DRYRUN=1 bash benchmarks/gpu/run.sh OUTDIR   # the same steps on the CPU, tiny, side by side
#                                                              # (check_local.py)
#
# Steps (each under its own `timeout`, so one that hangs cannot eat the rest; DISCORM_GPU_STEPS picks some):
#   env         nvidia-smi and the versions of Python, torch, transformers, accelerate, peft, datasets, trl
#   install     the carried wheels (benchmarks/gpu/wheels): datasets, trl and their missing pure dependencies from
#               --no-index --find-links, the package's own wheel with --no-deps; skipped in a dry run
#   pytest      pytest -m gpu: the FlexAttention gradient tests and the bf16 packed-vs-padded test
#   llama-1b    bench_throughput.py on a random ~1.1B Llama, bf16, DiscoRM optimised (split SDPA, FlexAttention) vs
#               TRL's RewardTrainer, alternating, gradient checkpointing off
#   smollm2     the default model's architecture and tokenizer (carried in benchmarks/gpu/models) with random
#               weights: throughput does not depend on the weights, and the 517 MB of weights cannot travel
#   llama-1b-gc the llama-1b comparison with gradient checkpointing on for both (one round)
#   overopt     placeholder: the HH data bench_overoptimization.py reads does not travel
#
# OUTDIR receives at most 8 files (what the GPU tool brings back): summary.md (every table and each step's exit
# status and seconds), env.txt, install.log, pytest.log, and one log per throughput step.
set -uo pipefail

out=${1:?usage: bash benchmarks/gpu/run.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dryrun=${DISCORM_GPU_DRYRUN:-0}
steps=${DISCORM_GPU_STEPS:-env install pytest llama-1b smollm2 llama-1b-gc overopt}
python=${PYTHON:-python3}
models=${DISCORM_GPU_MODELS:-$here/models}
mkdir -p "$out"
out=$(cd "$out" && pwd)
summary=$out/summary.md
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH=$repo/src:$repo${PYTHONPATH:+:$PYTHONPATH}
export DISCORM_HOME=$work/discorm-home  # random models are built here, never in OUTDIR (only 8 files come back)
export MPLBACKEND=Agg
cd "$repo"

if [ "$dryrun" = 1 ]; then
    bench=(--device cpu --synthetic --pairs 8 --batch 2 --rounds 1 --threads 1 --finetuning full --peak-size 256)
    llama=random-llama-tiny
    modes=(optimised trl)
    gc_modes=(optimised)
    smollm2_modes=(optimised)
    limits=(env=60 install=10 pytest=120 llama-1b=150 llama-1b-gc=120 smollm2=120 overopt=10)
else
    bench=(--device cuda --synthetic --pairs 128 --batch 8 --warmup 3 --threads 4 --finetuning full)
    llama=random-llama-1b
    modes=(optimised trl flex)
    gc_modes=(optimised trl)
    smollm2_modes=(optimised trl flex)
    limits=(env=15 install=45 pytest=120 llama-1b=200 smollm2=90 llama-1b-gc=60 overopt=5)  # 535 s in all
fi

limit() {
    local pair
    for pair in "${limits[@]}"; do [ "${pair%%=*}" = "$1" ] && echo "${pair#*=}"; done
}

# run_step NAME LOG COMMAND...: runs COMMAND (a program or an exported function) under the step's timeout, with its
# output in LOG and on stdout, and adds a line with its exit status and seconds to the summary's step table.
run_step() {
    local name=$1 log=$2 start rc
    shift 2
    echo "=== $name (timeout $(limit "$name") s)"
    start=$(date +%s)
    timeout --kill-after=10 "$(limit "$name")" bash -c '"$@"' "$name" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 124 ] && echo "$name: stopped at its timeout of $(limit "$name") s" | tee -a "$log"
    echo "| $name | $rc | $(( $(date +%s) - start )) |" >> "$work/steps.md"
}

wanted() { [[ " $steps " == *" $1 "* ]]; }

env_report() {
    date -u
    uname -a
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "no nvidia-smi: no GPU here"; fi
    "$python" - <<'EOF'
import importlib.metadata as md
import sys

import torch

print("python", sys.version.split()[0])
for name in ("torch", "transformers", "accelerate", "peft", "datasets", "trl", "discorm", "pyarrow", "numpy"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
print("cuda", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available()
      else "-")
EOF
}

install_wheels() {
    local wheels=$here/wheels
    [ -d "$wheels" ] || { echo "no $wheels: run bash benchmarks/gpu/fetch_wheels.sh where PyPI is reachable"
                          return 1; }
    local pip=("$python" -m pip install --quiet --disable-pip-version-check --no-index --no-cache-dir)
    # resolved against what the machine has; where one of its versions misses a pin, the wheels go in as they are
    "${pip[@]}" --find-links "$wheels" -r "$here/requirements.txt" \
        || "${pip[@]}" --no-deps "$wheels"/*.whl
    "${pip[@]}" --no-deps --force-reinstall "$wheels"/discorm-*.whl
    "$python" -c "import datasets, trl, discorm; print('datasets', datasets.__version__, 'trl', trl.__version__)"
}

gpu_tests() {  # only the files that mark a test `gpu` are collected: collecting all of tests/ takes long
    local files
    mapfile -t files < <(grep -rlE "mark\.gpu\b" tests --include='*.py' | sort)
    [ "${#files[@]}" -gt 0 ] || { echo "no test is marked gpu"; return 1; }
    "$python" -m pytest -m gpu -v -rs -p no:cacheprovider "${files[@]}"
}

# smollm2_throughput SOURCE BENCH-ARGS...: random weights for SOURCE's configuration, then bench_throughput.py
smollm2_throughput() {
    local source=$1 target=$work/smollm2-135m-random
    shift
    [ -f "$source/config.json" ] || { echo "no $source: run bash benchmarks/gpu/fetch_wheels.sh"; return 1; }
    "$python" "$here/random_weights.py" "$source" "$target" \
        && "$python" benchmarks/bench_throughput.py --model "$target" "$@"
}

overopt() {
    echo "over-optimisation at large N: skipped. bench_overoptimization.py reads the HH data from ../shared, which"
    echo "does not travel, and N = 4,096 needs more than the minutes left after the throughput steps."
}

export python here work
export -f env_report install_wheels gpu_tests smollm2_throughput overopt

{
    echo "# GPU run ($( [ "$dryrun" = 1 ] && echo "DRY RUN on the CPU, tiny settings" || echo "CUDA, bf16"))"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')"
} > "$summary"
echo "| step | exit status | seconds |" > "$work/steps.md"
echo "| --- | --- | --- |" >> "$work/steps.md"

wanted env && run_step env "$out/env.txt" env_report
if wanted install; then
    if [ "$dryrun" = 1 ]; then
        echo "dry run: no install, the current environment" | tee "$out/install.log"
    else
        run_step install "$out/install.log" install_wheels
    fi
fi
# on the GPU the steps run one after another (each has the GPU to itself); a dry run is mostly process start-up
# (importing torch, transformers, peft), one core each, so it runs them side by side: their logs are their own
side_by_side() { if [ "$dryrun" = 1 ]; then "$@" & else "$@"; fi; }
wanted pytest && side_by_side run_step pytest "$out/pytest.log" gpu_tests
throughput=("$python" benchmarks/bench_throughput.py "${bench[@]}" --model "$llama")
wanted llama-1b && side_by_side run_step llama-1b "$out/throughput-llama-1b.log" "${throughput[@]}" \
    --modes "${modes[@]}"
wanted smollm2 && side_by_side run_step smollm2 "$out/throughput-smollm2.log" \
    smollm2_throughput "$models/smollm2-135m-instruct" "${bench[@]}" --modes "${smollm2_modes[@]}"
wanted llama-1b-gc && side_by_side run_step llama-1b-gc "$out/throughput-llama-1b-gc.log" \
    "${throughput[@]}" --modes "${gc_modes[@]}" --rounds 1 --gradient-checkpointing
wait
wanted overopt && run_step overopt "$work/overopt.log" overopt

{
    echo
    echo "## Steps"
    echo
    cat "$work/steps.md"
    echo
    echo "## Environment"
    echo
    grep -E "^(python|torch|transformers|accelerate|peft|datasets|trl|discorm|cuda) " "$out/env.txt" 2>/dev/null \
        | sed 's/^/    /'
    if [ -f "$out/pytest.log" ]; then
        echo
        echo "## pytest -m gpu"
        echo
        grep -E "(PASSED|FAILED|SKIPPED|ERROR)" "$out/pytest.log" | grep -v "^=" | sed 's/^/    /'
        grep -E "^=+ .*(passed|failed|skipped|error|deselected).* =+$" "$out/pytest.log" | tail -1 | sed 's/^/    /'
    fi
    for log in "$out"/throughput-{llama-1b,smollm2,llama-1b-gc}.log; do
        [ -f "$log" ] || continue
        echo
        echo "## $(basename "$log" .log)"
        echo
        grep -E "^(model |round |GPU: |fp32 matmul)" "$log" | sed 's/^/    /'
        grep -E " failed:$" "$log" | sed 's/^/    /'
        echo
        grep -E "^\|" "$log" || echo "(no table: see $(basename "$log"))"
    done
    if [ -f "$work/overopt.log" ]; then
        echo
        echo "## over-optimisation"
        echo
        cat "$work/overopt.log"
    fi
} >> "$summary"
echo "=== summary ($summary)"
cat "$summary"
