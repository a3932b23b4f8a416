"""Every shipped head under every uncertainty wrapper: the wrapper answers each name of the head interface as its
member does (a method or flag added to ``RewardHead`` cannot be dropped by a wrapper), and each pair trains, runs
the post-training stages, saves, loads, scores and exports."""

import copy
import inspect
import json
import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from discorm.config import load_args
from discorm.data.tokenize import Encoder
from discorm.errors import ModelError
from discorm.model.heads import HEADS, LaplaceHead, RewardHead, with_uncertainty
from discorm.model.heads.base import PARAMS_ARGUMENTS, RewardDistribution
from discorm.model.reward_model import RewardModel
from discorm.serve.export import export_sequence_classification
from discorm.train.workflow import run_rm

HIDDEN, ROWS = 6, 4
SHIPPED = [kind for kind, cls in HEADS.items() if cls.__module__.startswith("discorm.")]
# options that switch on every capability of a head (ties, rated attributes with a spread)
OPTIONS = {"scalar": {"tie_model": "rao_kupper"}, "gaussian": {"tie_model": "thurstone"},
           "categorical": {"num_atoms": 5, "tie_model": "atoms", "learn_tie_param": False},
           "multi_objective": {"attributes": ["a", "b"], "output": "gaussian", "score_range": [0, 4]},
           "regression": {"output": "gaussian", "score_range": [0, 4]}}
# The head interface: every public name of RewardHead but the distribution (which the wrappers replace, tested by
# hand in test_uncertainty.py) and what nn.Module gives every module.
INTERFACE = sorted(name for name in dir(RewardHead) if not name.startswith("_")
                   and not hasattr(nn.Module, name) and not hasattr(RewardDistribution, name))
# What a wrapper answers differently from its member, on purpose (checked below, and by the runs at the end).
OWN = {"laplace": {"uncertainty", "load_head_state", "export_spec"},
       "ensemble": {"uncertainty", "load_head_state", "export_spec", "export_labels", "supports_temperature",
                    "learns_combination", "fit_combination", "pair_weights"}}


def _member(kind):
    cls = HEADS[kind]
    return cls(HIDDEN, **cls.resolve_options(OPTIONS.get(kind, {}), saved_only=True))


def _wrap(member, uncertainty):
    """A wrapper around copies of ``member``: Laplace with no posterior yet, an ensemble of two equal members
    (so every average over members is the member's own value)."""
    if uncertainty == "laplace":
        return LaplaceHead(copy.deepcopy(member), HIDDEN)
    return with_uncertainty(lambda: copy.deepcopy(member), HIDDEN, "ensemble", 2)


def _arguments(method, name, member, wrapper, hidden):
    """Arguments for ``method`` of the member and of the wrapper, chosen by argument name: params from the same
    hidden states, the same other values (an ensemble's per-pair weights: one equal column per member)."""
    attributes = max(len(member.attributes), 1)
    generator = torch.Generator().manual_seed(1)
    samples = {"margin": torch.rand(ROWS, generator=generator), "soft_label": torch.rand(ROWS, generator=generator),
               "temperature": 1.0, "outcomes": torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 2], [1, 1, 1]]),
               "levels": torch.tensor([0, 1, 1, 2]), "scores": torch.rand(ROWS, attributes, generator=generator) * 4,
               "mask": torch.rand(ROWS, attributes, generator=generator) > 0.3, "keys": [f"p:{i}" for i in range(ROWS)],
               "name": "tie_model", "values": {}, "options": {}, "alpha": 0.1,
               "weights": torch.rand(() if name == "plackett_luce" else ROWS, generator=generator)}
    for_member, for_wrapper = {}, {}
    for position, (arg, parameter) in enumerate(inspect.signature(method).parameters.items()):
        if parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        if arg in PARAMS_ARGUMENTS:
            rows = hidden[position]
            for_member[arg], for_wrapper[arg] = member(rows), wrapper(rows)
        elif arg in samples:
            for_member[arg] = for_wrapper[arg] = samples[arg]
            if arg == "weights" and wrapper.uncertainty == "ensemble":
                for_wrapper[arg] = torch.stack([samples[arg]] * 2, -1)
        elif parameter.default is parameter.empty:
            raise AssertionError(f"{name}({arg}): give the test a sample value for `{arg}`")
    return for_member, for_wrapper


def _answer(head, name, arguments):
    """What ``head.name`` answers: its value, its result on ``arguments``, or the type of error it raises."""
    value = getattr(head, name)
    if not callable(value):
        return value
    try:
        return value(**arguments)
    except Exception as err:  # noqa: BLE001 -- the error is the answer compared
        return type(err)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, abs=1e-5)
    return a == b


def differences(member, wrapper) -> list[str]:
    """The names of the head interface that ``wrapper`` answers differently from ``member``, apart from the ones it
    answers differently on purpose (OWN)."""
    torch.manual_seed(0)
    hidden = torch.randn(8, ROWS, HIDDEN)  # one batch of states per argument position
    found = []
    for name in INTERFACE:
        if name in OWN[wrapper.uncertainty]:
            continue
        value = getattr(member, name)
        for_member, for_wrapper = _arguments(value, name, member, wrapper, hidden) if callable(value) else ({}, {})
        if not _same(_answer(member, name, for_member), _answer(wrapper, name, for_wrapper)):
            found.append(name)
    return found


@pytest.mark.parametrize("uncertainty", ["laplace", "ensemble"])
@pytest.mark.parametrize("kind", SHIPPED)
def test_a_wrapper_answers_every_name_of_the_interface_as_its_member(kind, uncertainty):
    member = _member(kind)
    assert differences(member, _wrap(member, uncertainty)) == []


@pytest.mark.parametrize("uncertainty", ["none", "laplace", "ensemble"])
@pytest.mark.parametrize("kind", SHIPPED)
def test_fsdp2_can_take_over_every_head(kind, uncertainty):
    """FSDP2's fully_shard gives a module the class FSDP<cls>(FSDPModule, cls): a head's layout must allow it."""
    from torch.distributed.fsdp import FSDPModule

    head = _member(kind) if uncertainty == "none" else _wrap(_member(kind), uncertainty)
    cls = type(head)
    head.__class__ = type(f"FSDP{cls.__name__}", (FSDPModule, cls), {})
    assert isinstance(head, FSDPModule) and isinstance(head, cls)


def test_a_wrapper_that_drops_a_method_or_flag_is_found():
    """The check above fails for a wrapper that answers a method with RewardHead's default (a hand-written wrapper
    that forwards some methods and forgets one), forwards one without giving the member its own params, or
    answers a capability flag of its own."""

    class Forgetful(LaplaceHead):
        fit_combination = RewardHead.fit_combination

    class Unsliced(LaplaceHead):
        def rated_loss(self, params, scores, mask):
            return self.member.rated_loss(params, scores, mask)

    class Flagless(LaplaceHead):
        learns_ratings = False

    member = _member("multi_objective")
    for wrapper, dropped in ((Forgetful, "fit_combination"), (Unsliced, "rated_loss"), (Flagless, "learns_ratings")):
        assert differences(member, wrapper(copy.deepcopy(member), HIDDEN)) == [dropped]


def test_what_a_wrapper_answers_on_purpose():
    member = _member("multi_objective")
    laplace, ensemble = _wrap(member, "laplace"), _wrap(member, "ensemble")
    assert (laplace.uncertainty, ensemble.uncertainty, member.uncertainty) == ("laplace", "ensemble", "")
    assert laplace.learns_combination and not ensemble.learns_combination and not ensemble.supports_temperature
    assert (member.export_labels, laplace.export_labels, ensemble.export_labels) == ((1, 3), (1, 3), (1,))
    keys = ["pairs.jsonl:0", "pairs.jsonl:1"]
    assert laplace.pair_weights(keys) is None and ensemble.pair_weights(keys).shape == (2, 2)
    pc, pr = ensemble(torch.randn(3, HIDDEN)), ensemble(torch.randn(3, HIDDEN))
    with pytest.raises(ModelError, match="an ensemble has one per head"):
        ensemble.fit_combination(pc, pr)
    assert laplace.saved_options() == member.saved_options() == ensemble.saved_options()
    assert laplace.kind == ensemble.kind == "multi_objective"


WORDS = ["fox", "dog", "moon", "bees", "tea", "chess", "owls", "bread"]
CHATS = [[{"role": "user", "content": "fox dog"}, {"role": "assistant", "content": "yes tea"}],
         [{"role": "user", "content": "moon"}, {"role": "assistant", "content": "no owls bread"}]]


def _data(tmp_path, attributes: tuple) -> str:
    """12 pairs ('yes' answers win), and for a head that learns from ratings 12 rated responses (the first
    attribute: 'yes' is good, the others: long is good)."""
    pairs = [{"prompt": f"{WORDS[i % 8]} {WORDS[(i + 3) % 8]}", "chosen": f"yes {WORDS[i % 5]}",
              "rejected": f"no {WORDS[(i + 1) % 7]}"} for i in range(12)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    if not attributes:
        return str(tmp_path / "pairs.jsonl")
    rows = [{"prompt": WORDS[i % 8], "response": ("yes " if i % 2 else "no ") + " ".join(WORDS[: 1 + i % 3]),
             **{a.name: 1 + i % 3 if n else 4 * (i % 2) for n, a in enumerate(attributes)}} for i in range(12)]
    (tmp_path / "rated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"{tmp_path / 'rated.jsonl'},{tmp_path / 'pairs.jsonl'}"


def _train(tiny_llama, tmp_path, data, kind, uncertainty):
    """A run with every post-training stage the pair allows: the learned combination, the Laplace posterior, the
    reward normalisation, the temperature."""
    out = tmp_path / f"{kind}-{uncertainty}"
    learned = HEADS[kind].learns_combination and uncertainty != "ensemble"
    calibrated = HEADS[kind].supports_temperature and uncertainty != "ensemble"
    config = {"model_name_or_path": str(tiny_llama), "dataset": data, "output_dir": str(out), "max_steps": 2,
              "finetuning_type": "full", "per_device_train_batch_size": 4, "learning_rate": 1e-3, "cutoff_len": 32,
              "use_cpu": True, "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "head": kind,
              **OPTIONS.get(kind, {}), "reward_normalization": True, "temperature_scaling": calibrated,
              "calibration_size": 3, "combination": "learned" if learned else "fixed", "uncertainty": uncertainty,
              "ensemble_size": 2}
    run_rm(*load_args(config))
    return out


def _exported_rewards(run, out, model):
    """DiscoRM's reward read from the exported checkpoint as OpenRLHF reads it: logit 0 less config.mean."""
    export_sequence_classification(str(run), str(out))
    exported = AutoModelForSequenceClassification.from_pretrained(out).eval()
    encoder = Encoder.for_model(model)
    with torch.no_grad():
        logits = [float(exported(input_ids=torch.tensor([encoder.encode_item(c)])).logits[0, 0]) for c in CHATS]
    return [logit - exported.config.mean for logit in logits]


@pytest.mark.parametrize("kind", SHIPPED)
def test_every_head_with_every_uncertainty_trains_saves_loads_scores_and_exports(tiny_llama, tmp_path, kind):
    data = _data(tmp_path, HEADS[kind].attributes_from(HEADS[kind].resolve_options(OPTIONS.get(kind, {}))))
    scored = {}
    for uncertainty in (None, "laplace", "ensemble"):
        run = _train(tiny_llama, tmp_path, data, kind, uncertainty)
        model = RewardModel.from_pretrained(run)
        assert (model.head.kind, model.head.uncertainty) == (kind, uncertainty or "")
        scored[uncertainty] = model.score(CHATS)
        assert all(math.isfinite(r["reward"]) for r in scored[uncertainty])
        if uncertainty:
            assert all(r["sigma_epistemic"] > 0 for r in scored[uncertainty])
        if 1 in model.head.export_labels:
            exported = _exported_rewards(run, tmp_path / f"export-{run.name}", model)
            assert exported == pytest.approx([r["reward"] for r in scored[uncertainty]], abs=1e-4)
        else:
            with pytest.raises(ModelError, match="cannot be exported"):
                export_sequence_classification(str(run), str(tmp_path / f"export-{run.name}"))
    # Laplace trains the member as it is and adds a spread: the same rewards as the plain head
    assert [r["reward"] for r in scored["laplace"]] == pytest.approx([r["reward"] for r in scored[None]], abs=1e-5)
    if HEADS[kind].learns_combination:
        weights = [json.loads((tmp_path / f"{kind}-{u}" / "discorm_config.json").read_text())["head_options"]
                   ["attribute_weights"] for u in (None, "laplace")]
        assert weights[0] != [0.5, 0.5] and weights[1] == pytest.approx(weights[0], abs=1e-5)
