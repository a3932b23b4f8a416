"""Group scoring: sequences sharing a prefix (an RL batch's G completions of one prompt) are scored as one block
with the prefix computed once, and give the scores of scoring each sequence on its own."""

import random

import pytest
import torch

from discorm.model.inference import score_ids, score_sequences, shared_prefix_groups
from tests.conftest import build_model


def _rl_batch(prompts=3, group=5, seed=0):
    rng = random.Random(seed)
    system = [rng.randrange(3, 200) for _ in range(20)]  # every prompt starts alike: not enough to group them
    sequences = []
    for _ in range(prompts):
        prompt = system + [rng.randrange(3, 200) for _ in range(rng.randrange(30, 60))]
        sequences += [prompt + [rng.randrange(3, 200) for _ in range(rng.randrange(1, 25))] for _ in range(group)]
    rng.shuffle(sequences)
    return sequences


def test_groups_follow_the_prompts():
    sequences = _rl_batch()
    groups = shared_prefix_groups(sequences)
    assert sorted(len(members) for _, members in groups) == [5, 5, 5]
    for shared, members in groups:
        assert all(len(sequences[i]) > shared for i in members)
        assert len({tuple(sequences[i][:shared]) for i in members}) == 1 and shared >= 50
    assert shared_prefix_groups([[1, 2, 3], [1, 2, 3, 4]], min_shared=2) == [(2, [0, 1])]  # a prefix of another


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2", "tiny_mistral_window"])
@pytest.mark.parametrize("head", ["scalar", "gaussian"])
def test_group_scoring_equals_item_by_item(arch, head, request):
    model = build_model(request.getfixturevalue(arch), "full", head=head).eval()
    sequences = _rl_batch()
    grouped = score_sequences(model, sequences, batch_size=8)
    alone = torch.stack([score_ids(model, [s], 1)[0] for s in sequences])
    torch.testing.assert_close(grouped, alone, atol=1e-5, rtol=0)
    params, pooled = score_sequences(model, sequences, batch_size=4, features=True)
    torch.testing.assert_close(params, grouped, atol=1e-5, rtol=0)
    assert pooled.shape == (len(sequences), model.config.hidden_size)


def test_reward_model_score_groups_shared_prompts(tiny_llama):
    model = build_model(tiny_llama, "full").eval()
    prompt = [{"role": "user", "content": "Tell me about the moon and the tides, please, in some detail."}]
    items = [{"prompt": prompt, "response": f"answer number {i} " * (i + 1)} for i in range(6)]
    grouped = [r["reward"] for r in model.score(items, batch_size=6)]
    alone = [model.score([item], batch_size=1)[0]["reward"] for item in items]
    assert grouped == pytest.approx(alone, abs=1e-5)
