"""Tiny random models and a locally trained tokenizer: every unit test runs offline in seconds."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # an optional-kernel notice at import
REPO = Path(__file__).resolve().parents[1]
HH_FILE = REPO.parent / "shared" / "data" / "hh-harmless-dev.jsonl"

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Human: what is the capital of France? Assistant: Paris is the capital of France.",
    "What is 12 + 7? The answer is 19. Compute 3 * 4 = 12.",
    "Tell me about volcanoes, bees, the moon, glaciers and rainbows.",
    "I am not sure anyone can answer that. You should look it up yourself.",
    "system user assistant hello world yes no maybe please thank you",
] * 20
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Tokenized-data caches go to a per-test folder; the converted default model stays shared."""
    real = Path(os.environ.get("DISCORM_HOME", Path.home() / ".cache" / "discorm"))
    monkeypatch.setenv("DISCORM_HOME", str(tmp_path / "discorm_home"))
    (tmp_path / "discorm_home").mkdir()
    (real / "models").mkdir(parents=True, exist_ok=True)  # a model fetched by one test serves the others
    (tmp_path / "discorm_home" / "models").symlink_to(real / "models")
    torch.manual_seed(0)


def make_tokenizer(path: Path, chat_template: str | None = CHATML):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(path)
    return tokenizer


def make_model_dir(path: Path, arch: str = "llama", **overrides) -> Path:
    """A tiny random checkpoint of the given architecture (config ``overrides`` applied), with the local
    tokenizer, saved at ``path``."""
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tokenizer = make_tokenizer(path)
    vocab = len(tokenizer)
    torch.manual_seed(0)
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
        model = LlamaForCausalLM(config)
    elif arch == "qwen2":
        config = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             **overrides)
        model = Qwen2ForCausalLM(config)
    elif arch == "mistral":
        config = MistralConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                               **overrides)
        model = MistralForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=1024)
        model = GPT2LMHeadModel(config)
    elif arch == "bert":
        config = BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=512)
        model = BertModel(config)
    else:
        raise ValueError(arch)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny_llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny_qwen2"), "qwen2")


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny_mistral"), "mistral")


@pytest.fixture(scope="session")
def tiny_mistral_window(tmp_path_factory) -> Path:
    """Every layer attends to the 5 most recent positions only, far fewer than the test sequences."""
    return make_model_dir(tmp_path_factory.mktemp("tiny_mistral_window"), "mistral", sliding_window=5)


@pytest.fixture(scope="session")
def tiny_qwen2_window(tmp_path_factory) -> Path:
    """Layer 0 attends fully, layer 1 to the 5 most recent positions."""
    return make_model_dir(tmp_path_factory.mktemp("tiny_qwen2_window"), "qwen2", use_sliding_window=True,
                          sliding_window=5, max_window_layers=1)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny_gpt2"), "gpt2")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny_bert"), "bert")


def build_model(path, finetuning_type="full", head="scalar", pooling="last", **extra):
    from discorm.config import FinetuningArguments, ModelArguments
    from discorm.train.workflow import setup_model

    model_args = ModelArguments(model_name_or_path=str(path))
    ft = FinetuningArguments(finetuning_type=finetuning_type, head=head, pooling=pooling, **extra)
    return setup_model(model_args, ft)


def default_model_dir() -> Path:
    from discorm.model.builtin import pull_builtin_model

    return pull_builtin_model()


def user_error(stderr: str) -> str:
    """The one-line, one-paragraph error `discorm` printed (progress bars aside); never a traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("discorm: "), stderr[-3000:]
    assert sum(line.startswith("discorm: ") for line in lines) == 1, stderr[-3000:]
    return lines[-1]


def build_datasets(data_args, tokenizer, seed: int = 42, attributes: tuple = ()):
    """(train, eval, summary lines) of a run's data, as the recipe sets it up."""
    from discorm.train.workflow import setup_data

    data = setup_data(data_args, tokenizer, seed, attributes)
    return data.train, data.evaluation, data.summaries
