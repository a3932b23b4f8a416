#!/usr/bin/env bash
# Run HERE, where PyPI is reachable, before a GPU run: downloads into benchmarks/gpu/wheels/ the wheels that
# requirements.txt names (no dependencies: the GPU machine has the rest), builds a wheel of this package, and copies
# the default model's configuration and tokenizer (not its weights: 517 MB in fp32, far over what travels) into
# benchmarks/gpu/models/. Both folders are git-ignored and travel to the GPU machine as carried paths.
#
#     bash benchmarks/gpu/fetch_wheels.sh            # PYTHON=... picks the interpreter (default: python3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
home=${DISCORM_HOME:-$HOME/.cache/discorm}
model=smollm2-135m-instruct

rm -rf "$here/wheels" "$here/models"
mkdir -p "$here/wheels" "$here/models/$model"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$here/wheels" -r "$here/requirements.txt"
PYTHONWARNINGS=ignore "$python" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w "$here/wheels" "$repo"

if [ ! -f "$home/models/$model/config.json" ]; then
    PYTHONPATH="$repo/src" "$python" -c "from discorm.model.builtin import pull_builtin_model; pull_builtin_model()"
fi
find "$home/models/$model" -maxdepth 1 -type f ! -name '*.safetensors' ! -name '*.bin' \
    -exec cp {} "$here/models/$model/" \;

ls -l "$here/wheels" "$here/models/$model"
du -sh "$here/wheels" "$here/models"
