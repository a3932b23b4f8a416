import json
from pathlib import Path

import pytest
import torch
import torch._inductor.exc

from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding, model_inputs
from discorm.errors import ModelError
from discorm.model.reward_model import RewardModel, pool
from tests.conftest import build_model


def _batch(pad_side: str, pad_id: int = 0):
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17, 18, 19, 20, 21]]
    return PairwiseDataCollatorWithPadding(pad_id, padding_side=pad_side)(
        [{"prompt_ids": [], "chosen_ids": s, "rejected_ids": s[:2]} for s in seqs]
    )


def test_pool_picks_last_real_token_for_both_padding_sides():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [1, 7]
    assert pool(hidden, left, "last").flatten().tolist() == [3, 7]
    assert pool(hidden, left, "first").flatten().tolist() == [2, 4]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]


@pytest.mark.parametrize(
    "arch, pooling",
    [("tiny_llama", "last"), ("tiny_qwen2", "last"), ("tiny_mistral", "last"), ("tiny_gpt2", "last"),
     ("tiny_bert", "first")],
)
def test_shapes_and_padding_side_invariance(arch, pooling, request):
    model = build_model(request.getfixturevalue(arch), pooling=pooling).eval()
    right, left = _batch("right"), _batch("left")
    with torch.no_grad():
        out_right = model(**model_inputs(right), return_token_values=True)
        out_left = model(**model_inputs(left))
    assert out_right.scores.shape == (6,)
    assert out_right.head_params.shape == (6, 1)
    assert out_right.token_values.shape == right["input_ids"].shape
    if pooling == "last":
        torch.testing.assert_close(out_right.scores, out_left.scores, atol=1e-6, rtol=0)
        # the token value at the last real token is the sequence score
        last = right["attention_mask"].sum(-1) - 1
        torch.testing.assert_close(out_right.token_values[torch.arange(6), last], out_right.scores, atol=1e-6, rtol=0)


def test_no_vocabulary_logits(tiny_llama):
    """The checkpoint is a LlamaForCausalLM with an LM head; the reward model must not contain it."""
    model = build_model(tiny_llama)
    vocab = model.backbone.config.vocab_size
    names = [name for name, _ in model.named_modules()]
    assert not any("lm_head" in name for name in names)
    linear_out = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert vocab not in linear_out
    assert type(model.backbone).__name__ == "LlamaModel"


def test_finetuning_types_set_requires_grad(tiny_llama):
    full = build_model(tiny_llama, "full")
    assert all(p.requires_grad for p in full.parameters())

    freeze = build_model(tiny_llama, "freeze", freeze_trainable_layers=1)
    trainable = {n for n, p in freeze.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("backbone.layers.1.", "head.")) for n in trainable)
    assert any(n.startswith("head.") for n in trainable)

    lora = build_model(tiny_llama, "lora", lora_rank=4)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("head.") for n in trainable)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(proj in n for n in trainable), proj
    assert "head.value.weight" in trainable

    with pytest.raises(ModelError, match="freeze_trainable_layers=5"):
        build_model(tiny_llama, "freeze", freeze_trainable_layers=5)


@pytest.mark.parametrize("finetuning_type", ["full", "lora", "freeze"])
@pytest.mark.parametrize("head", ["scalar", "gaussian", "categorical"])
def test_save_load_round_trip(tiny_llama, tmp_path, finetuning_type, head):
    model = build_model(tiny_llama, finetuning_type, head=head, lora_rank=4)
    with torch.no_grad():  # make the trained parts differ from a fresh init
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    batch = _batch("right")
    model.eval()
    before = model(**model_inputs(batch)).head_params
    model.save_pretrained(tmp_path / "run")
    assert (tmp_path / "run" / "value_head.safetensors").is_file()
    assert not list((tmp_path / "run").glob("*.bin")) and not list((tmp_path / "run").glob("*.pt"))
    loaded = RewardModel.from_pretrained(tmp_path / "run")
    assert loaded.head.kind == head and loaded.rm_config.finetuning_type == finetuning_type
    torch.testing.assert_close(loaded(**model_inputs(batch)).head_params, before, atol=1e-6, rtol=0)


def test_scalar_checkpoint_seeds_gaussian_but_not_back(tiny_llama, tmp_path):
    scalar = build_model(tiny_llama, head="scalar").eval()
    scalar.save_pretrained(tmp_path / "s")
    gaussian = RewardModel.from_pretrained(tmp_path / "s", head="gaussian")
    batch = _batch("right")
    torch.testing.assert_close(gaussian(**model_inputs(batch)).head_params[:, 0],
                               scalar(**model_inputs(batch)).scores, atol=1e-6, rtol=0)
    gaussian.save_pretrained(tmp_path / "g")
    with pytest.raises(ModelError, match="'gaussian' head, which cannot be loaded as a 'scalar' head"):
        RewardModel.from_pretrained(tmp_path / "g", head="scalar")


def test_bert_falls_back_to_padded_batches(tiny_bert):
    model = build_model(tiny_bert, pooling="first")
    assert model.check_packing() is False and "bidirectional" in model.packing_obstacle


# --------------------------------------------------------------------------- exactness of the fast paths
PAIRS = [
    {"prompt_ids": [5, 6, 7, 8, 9], "chosen_ids": [10, 11], "rejected_ids": list(range(30, 50))},  # 10x
    {"prompt_ids": [12], "chosen_ids": [13, 14, 15, 16, 17, 18], "rejected_ids": [19, 20, 21]},
    {"prompt_ids": list(range(60, 90)), "chosen_ids": [91], "rejected_ids": [92, 93]},
    {"prompt_ids": [], "chosen_ids": [94, 95, 96], "rejected_ids": [97, 98, 99, 100, 101, 102]},
]


def _scores_and_grads(model, batch):
    model.zero_grad()
    out = model(**model_inputs(batch))
    half = out.head_params.shape[0] // 2
    loss = model.head.pair_loss(out.head_params[:half], out.head_params[half:]).sum()
    loss = loss + out.head_params.pow(2).sum() * 0.1  # also touch every score
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return out.head_params.detach(), grads


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2", "tiny_gpt2"])
@pytest.mark.parametrize("prefix_sharing", [True, False])
@pytest.mark.parametrize("head", ["scalar", "gaussian"])
@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_packed_and_prefix_shared_match_plain(arch, prefix_sharing, head, finetuning_type, request):
    model = build_model(request.getfixturevalue(arch), finetuning_type, head=head, lora_rank=4).eval()
    assert model.check_packing()
    plain_params, plain_grads = _scores_and_grads(model, PairwiseDataCollatorWithPadding(0)(PAIRS))
    packed_params, packed_grads = _scores_and_grads(model, PackedPairCollator(prefix_sharing)(PAIRS))
    torch.testing.assert_close(packed_params, plain_params, atol=1e-5, rtol=0)
    assert plain_grads.keys() == packed_grads.keys() and len(plain_grads) > 4
    for name, grad in plain_grads.items():
        scale = grad.abs().max().clamp_min(1e-8)
        assert (packed_grads[name] - grad).abs().max() / scale < 1e-4, name


def test_packed_path_under_gradient_checkpointing(tiny_llama):
    model = build_model(tiny_llama, "full").eval()
    plain_params, plain_grads = _scores_and_grads(model, PairwiseDataCollatorWithPadding(0)(PAIRS))
    model.gradient_checkpointing_enable({"use_reentrant": False})
    model.train()  # checkpointing recomputes only in training mode; the tiny Llama has no dropout
    packed_params, packed_grads = _scores_and_grads(model, PackedPairCollator(True)(PAIRS))
    torch.testing.assert_close(packed_params, plain_params, atol=1e-5, rtol=0)
    for name, grad in plain_grads.items():
        assert (packed_grads[name] - grad).abs().max() / grad.abs().max().clamp_min(1e-8) < 1e-4, name


WINDOWED = ["tiny_mistral_window", "tiny_qwen2_window"]


@pytest.mark.parametrize("arch", WINDOWED)
@pytest.mark.parametrize("prefix_sharing", [True, False])
def test_sliding_window_models_stay_exact_when_packed(arch, prefix_sharing, request):
    model = build_model(request.getfixturevalue(arch), "full", lora_rank=4).eval()
    from discorm.model.packed import sliding_windows

    assert 5 in sliding_windows(model.config) and max(len(p["rejected_ids"]) for p in PAIRS) > 5
    plain_params, plain_grads = _scores_and_grads(model, PairwiseDataCollatorWithPadding(0)(PAIRS))
    packed_params, packed_grads = _scores_and_grads(model, PackedPairCollator(prefix_sharing)(PAIRS))
    torch.testing.assert_close(packed_params, plain_params, atol=1e-5, rtol=0)
    for name, grad in plain_grads.items():
        assert (packed_grads[name] - grad).abs().max() / grad.abs().max().clamp_min(1e-8) < 1e-4, name


@pytest.mark.slow  # compiles FlexAttention for the CPU (tens of seconds)
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2", *WINDOWED])
def test_flex_attention_forward_matches_plain(arch, request):
    """FlexAttention (one call per layer, one block mask per batch) on the CPU: forward only, as torch has no
    FlexAttention backward there."""
    model = build_model(request.getfixturevalue(arch), "full").eval()
    model.attention_backend = "flex"
    with torch.no_grad():
        plain = model(**model_inputs(PairwiseDataCollatorWithPadding(0)(PAIRS))).head_params
        try:
            packed = model(**model_inputs(PackedPairCollator(True)(PAIRS))).head_params
        except torch._inductor.exc.InductorError as err:  # torch's CPU code generation, not the mask
            pytest.skip(f"torch's inductor cannot compile this FlexAttention mask for this CPU "
                        f"({str(err).strip().splitlines()[0][:120]}); auto scores with split SDPA on CPUs")
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=0)


def test_flex_attention_refuses_to_train_on_cpu(tiny_llama):
    from discorm.errors import ConfigError

    model = build_model(tiny_llama, "full")
    model.attention_backend = "flex"
    with pytest.raises(ConfigError, match="no FlexAttention backward"):
        model(**model_inputs(PackedPairCollator(True)(PAIRS)))


def test_auto_backend_choice(monkeypatch):
    from discorm.model import packed

    monkeypatch.setattr(packed, "_flex_failure", None)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert packed.CPU_EVAL_BACKEND in ("sdpa_split", "flex")  # the faster in benchmarks/bench_attention.py
    assert packed.choose_backend("auto", cpu, needs_grad=False) == packed.CPU_EVAL_BACKEND  # evaluation, scoring
    assert packed.choose_backend("auto", cpu, needs_grad=True) == "sdpa_split"  # training
    assert packed.choose_backend("auto", cpu, needs_grad=False, training=True) == "sdpa_split"
    assert packed.choose_backend("auto", cuda, needs_grad=True) == "flex"
    assert packed.choose_backend("sdpa_split", cuda, needs_grad=False) == "sdpa_split"
    monkeypatch.setattr(packed, "CPU_EVAL_BACKEND", "flex")
    assert packed.choose_backend("auto", cpu, needs_grad=False) == "flex"
    monkeypatch.setattr(packed, "_flex_failure", "RuntimeError: no compiler")
    assert packed.choose_backend("auto", cpu, needs_grad=False) == "sdpa_split"
    assert packed.choose_backend("auto", cuda, needs_grad=True) == "sdpa_split"


def test_auto_falls_back_to_split_sdpa_once_flex_fails(tiny_llama, monkeypatch, caplog):
    """Where FlexAttention cannot compile, auto warns once and scores the row with split SDPA, exactly; an
    explicit attention_backend: flex raises instead."""
    from discorm.model import packed

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("InductorError: CppCompileError: C++ compile error\nmore lines")

    monkeypatch.setattr(packed, "_flex_failure", None)
    monkeypatch.setattr(packed, "CPU_EVAL_BACKEND", "flex")  # as auto on a GPU
    monkeypatch.setattr(packed, "flex_attention_call", broken)
    model = build_model(tiny_llama, "full").eval()
    batch = PackedPairCollator(True)(PAIRS)
    with torch.no_grad():
        model.attention_backend = "sdpa_split"
        split = model(**model_inputs(batch)).head_params
        model.attention_backend = "auto"
        with caplog.at_level("WARNING", logger="discorm"):
            first = model(**model_inputs(batch)).head_params
            second = model(**model_inputs(batch)).head_params
        assert len(calls) == 1  # the failure is remembered: auto does not try again
        torch.testing.assert_close(first, split, atol=0, rtol=0)
        torch.testing.assert_close(second, split, atol=0, rtol=0)
        warnings = [r.getMessage() for r in caplog.records if "FlexAttention failed" in r.getMessage()]
        assert len(warnings) == 1 and "C++ compile error" in warnings[0] and "more lines" not in warnings[0]
        model.attention_backend = "flex"
        with pytest.raises(RuntimeError, match="CppCompileError"):
            model(**model_inputs(batch))
        # running out of memory is not a reason to leave FlexAttention: it is raised, not recorded
        monkeypatch.setattr(packed, "_flex_failure", None)
        def out_of_memory(*args, **kwargs):
            raise torch.OutOfMemoryError("out of memory")

        monkeypatch.setattr(packed, "flex_attention_call", out_of_memory)
        model.attention_backend = "auto"
        with pytest.raises(torch.OutOfMemoryError):
            model(**model_inputs(batch))
        assert packed._flex_failure is None


@pytest.mark.slow  # traces FlexAttention for the CPU until the compiler is missing (seconds)
def test_auto_scores_with_split_sdpa_where_inductor_has_no_compiler(tiny_llama, tmp_path):
    """The real failure: no C++ compiler for inductor (CXX names a missing one, in a fresh inductor cache)."""
    import json
    import os
    import subprocess
    import sys

    script = f"""
import json, logging, torch
from discorm.data.collator import PackedPairCollator, model_inputs
from discorm.model import packed
from tests.conftest import build_model
from tests.model.test_reward_model import PAIRS
logging.basicConfig(level=logging.WARNING)
packed.CPU_EVAL_BACKEND = "flex"  # as auto picks it on a GPU
model = build_model({str(tiny_llama)!r}, "full").eval()
batch = PackedPairCollator(True)(PAIRS)
with torch.no_grad():
    auto = model(**model_inputs(batch)).head_params
    model.attention_backend = "sdpa_split"
    split = model(**model_inputs(batch)).head_params
print(json.dumps({{"difference": float((auto - split).abs().max()), "failure": packed._flex_failure}}))
"""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "c"),
           "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "InvalidCxxCompiler" in result["failure"] and result["difference"] == 0.0
    assert "FlexAttention failed" in done.stderr and "split SDPA" in done.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention gradients need a GPU (no CPU backward)")
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2", *WINDOWED])
def test_flex_attention_gradients_match_plain_on_gpu(arch, request):
    model = build_model(request.getfixturevalue(arch), "full").to("cuda").eval()
    model.attention_backend = "flex"
    cuda = lambda batch: {k: v.to("cuda") for k, v in batch.items()}  # noqa: E731
    plain_params, plain_grads = _scores_and_grads(model, cuda(PairwiseDataCollatorWithPadding(0)(PAIRS)))
    packed_params, packed_grads = _scores_and_grads(model, cuda(PackedPairCollator(True)(PAIRS)))
    torch.testing.assert_close(packed_params, plain_params, atol=1e-4, rtol=0)
    for name, grad in plain_grads.items():
        assert (packed_grads[name] - grad).abs().max() / grad.abs().max().clamp_min(1e-8) < 1e-3, name


def test_transformers_is_in_the_tested_range_and_holds_the_packed_attention():
    """The packed path plugs into transformers' attention and mask registries; a release outside the tested
    range (pyproject.toml) may change them, so CI says so loudly instead of failing somewhere else."""
    import re

    import transformers
    from packaging.requirements import Requirement
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from discorm.model.packed import ATTN_IMPLEMENTATION, packed_sdpa_attention
    from tests.conftest import REPO

    line = re.search(r'"(transformers[^"]*)"', (REPO / "pyproject.toml").read_text()).group(1)
    spec = Requirement(line)
    assert spec.specifier.contains(transformers.__version__), (transformers.__version__, str(spec.specifier))
    assert AttentionInterface._global_mapping[ATTN_IMPLEMENTATION] is packed_sdpa_attention
    assert AttentionMaskInterface._global_mapping[ATTN_IMPLEMENTATION] is sdpa_mask


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_training_with_gradient_checkpointing_follows_the_plain_run(tiny_llama, tmp_path, finetuning_type):
    """`gradient_checkpointing: true` through the Trainer's own call (which passes transformers' extra keywords,
    e.g. ``every_n_layers``) trains the same steps as without it."""
    from discorm.config import load_args
    from discorm.train.workflow import run_rm

    rows = [{"prompt": "q", "chosen": f"yes {i} " * (1 + i % 3), "rejected": f"no {i}"} for i in range(8)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    losses = {}
    for checkpointing in (False, True):
        out = tmp_path / f"o{checkpointing}"
        run_rm(*load_args({"model_name_or_path": str(tiny_llama), "dataset": str(tmp_path / "d.jsonl"),
                           "max_steps": 2, "per_device_train_batch_size": 4, "output_dir": str(out),
                           "use_cpu": True, "save_strategy": "no", "disable_tqdm": True, "logging_steps": 1,
                           "finetuning_type": finetuning_type, "lora_rank": 4, "report_to": "none",
                           "gradient_checkpointing": checkpointing, "learning_rate": 1e-2}))
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        losses[checkpointing] = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses[False]) == 2 and losses[True] == pytest.approx(losses[False], abs=1e-5)
