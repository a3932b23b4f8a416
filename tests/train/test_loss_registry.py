"""The loss tables (discorm/losses.py): the config's choices are their entries, an entry registered by a test is a
config value that trains, and a head that cannot honour an entry is refused naming the key."""

import json
import math

import datasets
import pytest
import torch
import torch.nn.functional as F

from discorm.config import DataArguments, FinetuningArguments, load_args, validate
from discorm.errors import ConfigError
from discorm.losses import (
    LIST_WEIGHTINGS,
    RANKING_LOSSES,
    STRENGTH_LOSSES,
    Comparisons,
    RankingLoss,
    StrengthLoss,
)
from discorm.model.heads import HEADS, ScalarHead, build_head
from discorm.train.loss import PairwiseLoss
from discorm.train.workflow import run_rm

CONFIG_KEYS = {"ranking_loss": RANKING_LOSSES, "list_weighting": LIST_WEIGHTINGS, "strength_loss": STRENGTH_LOSSES}


@pytest.fixture
def register():
    """table.register for the test; the entries are removed afterwards."""
    added = []

    def _register(table, entry):
        added.append((table, entry.name))
        return table.register(entry)

    yield _register
    for table, name in added:
        table.pop(name)


def adjacent(ranked, weighting):
    """A toy ranking loss: each response against the next one in rank order (K - 1 comparisons)."""
    order = torch.argsort(ranked.levels, stable=True)
    i, j = order[:-1], order[1:]
    level = ranked.levels
    outcomes = torch.stack([level[i] < level[j], level[i] == level[j], level[i] > level[j]], -1).float()
    share = torch.full((len(i),), weighting.share(len(i)))
    return Comparisons(ranked.start + i, ranked.start + j, outcomes, None, share, share, None)


def double_margin(strength, margin, weights, per_unit):
    """A toy strength loss: twice the margin of strength_loss: margin."""
    return 2 * per_unit * strength + (0 if margin is None else margin), weights


LIST = {"list_sizes": torch.tensor([4]), "list_levels": torch.tensor([2, 0, 3, 1])}  # ranking: 1, 3, 0, 2


@pytest.mark.parametrize("key", CONFIG_KEYS)
def test_every_config_choice_is_a_registered_entry(key):
    table = CONFIG_KEYS[key]
    assert table.key == key and FinetuningArguments.__dataclass_fields__[key].metadata["help"] == table.help()
    for name in table.choices():
        assert name == "auto" or table[name].name == name
        head = next(kind for kind, cls in HEADS.items() if name == "auto" or table[name].honoured_by(cls))
        args = FinetuningArguments(head=head, **{key: name})
        assert isinstance(PairwiseLoss.from_args(build_head(head, 4), args), PairwiseLoss)
        assert f"{name} (" in table.help()
    with pytest.raises(ConfigError, match=rf"{key}='hinge' is not valid; allowed values: {', '.join(table.choices())}"):
        FinetuningArguments(**{key: "hinge"})
    with pytest.raises(ConfigError, match=rf"{key}='hinge' is not valid"):
        table["hinge"]


def test_every_ranking_loss_a_head_declares_is_registered():
    for kind, head in HEADS.items():
        assert set(head.ranking_losses) <= set(RANKING_LOSSES), kind
        assert all(RANKING_LOSSES[name].honoured_by(head) for name in head.ranking_losses)
    honouring = {name: [k for k, h in HEADS.items() if e.honoured_by(h)] for name, e in RANKING_LOSSES.items()}
    assert honouring == {"plackett_luce": ["scalar"], "all_pairs": list(HEADS)}


def test_a_registered_ranking_loss_is_chosen_in_yaml_and_trains(register, tmp_path, tiny_llama):
    calls = []
    register(RANKING_LOSSES, RankingLoss("adjacent", "each response against the next in rank order",
                                         comparisons=lambda r, w: calls.append(r) or adjacent(r, w)))
    config = tmp_path / "c.yaml"
    config.write_text("head: scalar\nranking_loss: adjacent\nlist_weighting: list\n")
    *_, finetuning = load_args(str(config))
    head = build_head("scalar", 4)
    loss_fn = PairwiseLoss.from_args(head, finetuning)
    r = torch.tensor([[0.2], [1.5], [-0.4], [0.9]])
    # ranking 1 > 3 > 0 > 2: three adjacent comparisons of one list weighing 1/3 each, one unit in all
    expected = -(F.logsigmoid(torch.tensor(1.5 - 0.9)) + F.logsigmoid(torch.tensor(0.9 - 0.2))
                 + F.logsigmoid(torch.tensor(0.2 + 0.4))) / 3
    torch.testing.assert_close(loss_fn.batch_loss(r, LIST), expected)

    params = torch.nn.Parameter(torch.tensor([[0.0], [0.0], [0.0], [0.0]]))
    optimizer = torch.optim.SGD([params], lr=1.0)
    first = loss_fn.batch_loss(params, LIST)
    first.backward()
    optimizer.step()  # one step up the ranking: the better of each adjacent pair rises
    assert first.item() == pytest.approx(math.log(2)) and loss_fn.batch_loss(params.detach(), LIST).item() < math.log(2)
    assert params.detach().flatten().tolist() == pytest.approx([0.0, 1 / 6, -1 / 6, 0.0])

    calls.clear()
    data = tmp_path / "lists.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {n}", "responses": ["a", "bb", "ccc"],
                                        "ranking": [2, 0, 1]}) + "\n" for n in range(4)))
    config.write_text(f"model_name_or_path: {tiny_llama}\ndataset: {data}\nranking_loss: adjacent\n"
                      f"output_dir: {tmp_path / 'out'}\nfinetuning_type: full\nmax_steps: 1\ncutoff_len: 64\n"
                      "per_device_train_batch_size: 4\nsave_strategy: 'no'\nuse_cpu: true\ndisable_tqdm: true\n")
    metrics = run_rm(*load_args(str(config)))
    assert len(calls) == 4 and all(c.levels.tolist() == [1, 2, 0] for c in calls)  # one step: the four lists
    assert math.isfinite(metrics["train_loss"])


def test_a_registered_strength_loss_is_chosen_in_yaml(register, tmp_path):
    register(STRENGTH_LOSSES, StrengthLoss("double_margin", "twice the margin", double_margin, moves_margin=True))
    config = tmp_path / "c.yaml"
    config.write_text("strength_loss: double_margin\nstrength_margin: 0.5\n")
    *_, finetuning = load_args(str(config))
    head = build_head("scalar", 4)
    params = torch.tensor([[0.4], [1.0], [0.0], [0.5]])  # chosen 0.4, 1.0; rejected 0.0, 0.5
    batch = {"strength": torch.tensor([2.0, math.nan]), "margin": torch.tensor([0.1, 0.2])}
    expected = -(F.logsigmoid(torch.tensor(0.4 - 0.0 - 2.0 - 0.1)) + F.logsigmoid(torch.tensor(1.0 - 0.5 - 0.2))) / 2
    torch.testing.assert_close(PairwiseLoss.from_args(head, finetuning).batch_loss(params, batch), expected)


class MarginlessHead(ScalarHead):
    supports_margin = False


def test_a_head_that_cannot_honour_a_registered_loss_is_refused_naming_the_key(register):
    register(RANKING_LOSSES, RankingLoss("listnet", "the head's ListNet likelihood",
                                         likelihood=lambda head, params, ranked: (params.sum(), 1),
                                         requires="a head with a ListNet likelihood"))
    with pytest.raises(ConfigError, match=r"ranking_loss=listnet: listnet needs a head with a ListNet likelihood "
                                          r"\(none\), and the scalar head is not one. Use ranking_loss: "
                                          r"plackett_luce or all_pairs \(or auto\)."):
        FinetuningArguments(head="scalar", ranking_loss="listnet")
    with pytest.raises(ConfigError, match=r"ranking_loss=plackett_luce: plackett_luce needs a head with a logistic "
                                          r"P\(a > b\) \(scalar\), and the gaussian head is not one. Use "
                                          r"ranking_loss: all_pairs \(or auto\)"):
        FinetuningArguments(head="gaussian", ranking_loss="plackett_luce")

    register(STRENGTH_LOSSES, StrengthLoss("double_margin", "twice the margin", double_margin, moves_margin=True))
    finetuning = FinetuningArguments(strength_loss="double_margin")
    strengths = datasets.Dataset.from_dict({"chosen_ids": [[1]], "strength": [1.0]})
    validate(DataArguments(), finetuning, build_head("scalar", 4), strengths, None)  # a head with margins: fine
    with pytest.raises(ConfigError, match=r"strength_loss=double_margin: double_margin needs a head that honours a "
                                          r"margin \(scalar, .*\), and the scalar head is not one. Use "
                                          r"strength_loss: scaled_bt\."):
        validate(DataArguments(), finetuning, MarginlessHead(4), strengths, None)
    validate(DataArguments(), FinetuningArguments(strength_loss="scaled_bt"), MarginlessHead(4), strengths, None)
