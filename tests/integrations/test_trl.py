"""TRL's GRPOTrainer with a DiscoRM reward model, read two ways in the same run: the `discorm export` folder as
`reward_funcs` (a path: TRL loads it with num_labels=1 and reads logits[:, 0]) and DiscoRM's reward function. The
rewards TRL logs equal DiscoRM's own scores of the same conversations."""

import logging

import pytest
import torch
from datasets import Dataset

from discorm.errors import DataError
from discorm.integrations.trl import reward_function
from discorm.serve.export import export_sequence_classification
from discorm.serve.server import create_app
from tests.policies import CONVERSATIONS, policy_tokenizer
from tests.serve.server_helpers import running, served_model

trl = pytest.importorskip("trl")


@pytest.fixture(scope="module")
def run(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trl_rm")
    model = served_model(tiny_llama, folder / "run", head="scalar")
    export_sequence_classification(str(folder / "run"), str(folder / "export"))
    return folder, model


def test_grpo_logs_discorms_rewards_through_the_export_and_the_reward_function(run, tiny_llama, tmp_path, caplog):
    folder, model = run
    prompts = [[{"role": "user", "content": text}] for text in
               ("What is 12 + 7?", "Tell me about bees.", "Is the moon far?", "hello world")]
    config = trl.GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=2,
                            max_completion_length=8, max_steps=2, logging_steps=1, learning_rate=1e-4, beta=0.0,
                            bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                            save_strategy="no", seed=0, disable_tqdm=True)
    discorm = reward_function(str(folder / "run"))
    with caplog.at_level(logging.ERROR):
        trainer = trl.GRPOTrainer(model=str(tiny_llama), reward_funcs=[str(folder / "export"), discorm], args=config,
                                  train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))
        trainer.train()
    export_name = trainer.reward_func_names[0]
    assert trainer.reward_func_names[1] == "discorm"
    steps = [log for log in trainer.state.log_history if "rewards/discorm/mean" in log]
    assert len(steps) == 2
    for log in steps:  # the two readings agree at every step
        assert log[f"rewards/{export_name}/mean"] == pytest.approx(log["rewards/discorm/mean"], abs=1e-4)
    logged = trainer._logs  # the last generation batch, as TRL logs it
    conversations = [p + c for p, c in zip(logged["prompt"], logged["completion"])]
    own = [r["reward"] for r in model.score(conversations)]
    assert list(logged["rewards"]["discorm"]) == pytest.approx(own, abs=1e-5)
    assert list(logged["rewards"][export_name]) == pytest.approx(own, abs=1e-4)
    assert steps[-1]["rewards/discorm/mean"] == pytest.approx(sum(own) / len(own), abs=1e-5)


def test_the_reward_function_reads_text_and_conversational_inputs_and_risk(tiny_llama, tmp_path):
    model = served_model(tiny_llama, tmp_path / "run", head="gaussian")
    llama3 = policy_tokenizer(tiny_llama, "llama3")
    prompts = [c[:-1] for c in CONVERSATIONS]
    completions = [c[-1:] for c in CONVERSATIONS]
    logged = []
    risk = reward_function(str(tmp_path / "run"), reward_mode="lower_quantile", reward_alpha=0.05)
    rewards = risk(prompts, completions, log_metric=lambda name, value: logged.append((name, value)))
    expected = model.score(CONVERSATIONS, reward_mode="lower_quantile", reward_alpha=0.05)
    assert rewards == pytest.approx([r["reward"] for r in expected], abs=1e-5)
    assert logged[0][0] == "discorm/sigma"
    assert logged[0][1] == pytest.approx(sum(r["sigma"] for r in expected) / 3, abs=1e-5)
    policy = reward_function(model, policy_tokenizer=llama3)  # texts rendered by the policy's template
    text_prompts = [llama3.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    text_completions = [c[0]["content"] + llama3.eos_token for c in completions]
    assert policy(text_prompts, text_completions) == pytest.approx(
        [r["reward"] for r in model.score(CONVERSATIONS)], abs=1e-5)
    with pytest.raises(DataError, match="completion 1: the text does not begin like a conversation"):
        policy(text_prompts[:1] + ["plain"], text_completions[:2])
    with pytest.raises(DataError, match="2 prompts for 3 completions"):
        policy(text_prompts[:2], text_completions)


def test_the_reward_function_through_the_server_gives_the_same_rewards(tiny_llama, tmp_path):
    model = served_model(tiny_llama, tmp_path / "run", head="gaussian")
    prompts, completions = [c[:-1] for c in CONVERSATIONS], [c[-1:] for c in CONVERSATIONS]
    local = reward_function(model, reward_mode="mean_minus_std", reward_k=1.0)(prompts, completions)
    with running(create_app(model, api_key="k", max_items=2)) as (url, _):
        remote = reward_function(url, reward_mode="mean_minus_std", reward_k=1.0, api_key="k")
        logged = []
        assert remote(prompts, completions, log_metric=lambda *a: logged.append(a)) == pytest.approx(local, abs=1e-5)
        assert logged and logged[0][0] == "discorm/sigma"
        with pytest.raises(Exception, match="answered 401"):
            reward_function(url)(prompts, completions)
    assert torch.isfinite(torch.tensor(local)).all()
