"""Re-templating: a conversation rendered by the policy's chat template scores as the same conversation given as
messages, for several policy templates against the reward model's own; texts that are not such renderings are
refused by item."""

import logging
from dataclasses import replace

import pytest
from transformers import AutoTokenizer

import discorm.data.retemplate as retemplate
from discorm.data.retemplate import ChatFormat, Retemplater
from discorm.data.templates import Renderer
from discorm.data.tokenize import Encoder
from discorm.errors import ConfigError, DataError, ModelError
from tests.conftest import build_model, default_model_dir
from tests.policies import CONVERSATIONS, POLICIES, policy_tokenizer, rollout


@pytest.fixture(scope="module")
def models(tiny_llama):
    """The reward model with its tokenizer's ChatML template, and with the built-in Llama-3 one (a BOS)."""
    model = build_model(tiny_llama, "full").eval()
    llama3 = build_model(tiny_llama, "full").eval()
    llama3.rm_config = replace(llama3.rm_config, template="llama3")
    return {"chatml": model, "llama3": llama3}


@pytest.mark.parametrize("rm", ["chatml", "llama3"])
@pytest.mark.parametrize("policy", list(POLICIES))
def test_a_policy_rendering_scores_as_the_conversation_given_as_messages(models, tiny_llama, rm, policy):
    model, tokenizer = models[rm], policy_tokenizer(tiny_llama, policy)
    expected = [r["reward"] for r in model.score(CONVERSATIONS)]
    for variant in ({"eos": True}, {"eos": False}, {"eos": True, "extra_bos": True}, {"eos": True, "pad": 2}):
        texts = [rollout(tokenizer, conversation, **variant) for conversation in CONVERSATIONS]
        got = [r["reward"] for r in model.score(texts, policy_tokenizer=tokenizer)]
        assert got == pytest.approx(expected, abs=1e-5), variant
    if policy != rm:  # scored as given, a text in a foreign template gets another reward
        as_given = [r["reward"] for r in model.score([rollout(tokenizer, CONVERSATIONS[0])])]
        assert abs(as_given[0] - expected[0]) > 1e-4


@pytest.mark.parametrize("policy", list(POLICIES))
def test_parse_gives_back_the_messages(tiny_llama, policy):
    tokenizer = policy_tokenizer(tiny_llama, policy)
    chat = ChatFormat.learn(Renderer(tokenizer), policy)
    for conversation in CONVERSATIONS:
        assert chat.parse(rollout(tokenizer, conversation, extra_bos=True)) == conversation
    empty = conversation[:-1] + [{"role": "assistant", "content": ""}]  # the policy stopped at once
    assert chat.parse(rollout(tokenizer, empty)) == empty


def test_prompts_and_completions_are_joined(models, tiny_llama):
    model = models["chatml"]
    tokenizer = policy_tokenizer(tiny_llama, "llama3")
    encoder = Encoder.for_model(model)
    plain, policy = Retemplater(encoder), Retemplater(encoder, tokenizer)
    conversation = CONVERSATIONS[1]
    expected = encoder.encode_item(conversation)
    prompt_text = tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True, tokenize=False)
    completion = conversation[-1]["content"]
    assert policy.encode_joined(prompt_text, completion + "<|eot_id|>") == expected  # text, policy format
    assert plain.encode_joined(conversation[:-1], conversation[-1:]) == expected  # conversational (TRL)
    assert policy.encode_joined(conversation[:-1], completion + "<|eot_id|>") == expected  # messages + text
    assert plain.encode_joined("Tell me about the moon.", completion) == encoder.encode_item(
        {"prompt": "Tell me about the moon.", "response": completion})  # plain text: a user turn and its reply
    with pytest.raises(DataError, match="item 3: the completion has no prompt"):
        plain.encode_joined(None, completion, "item 3")
    with pytest.raises(DataError, match="item 4: the completion is empty"):
        plain.encode_joined(conversation[:-1], [], "item 4")


@pytest.mark.parametrize("text, reason", [
    ("just some words, no template", "does not begin like a conversation"),
    ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>", "ends with a user turn"),
    ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant"
     "<|end_header_id|>\n\nyes<|eot_id|><|start_header_id|>robot<|end_header_id|>\n\nbeep", "cannot be read back"),
])
def test_a_text_the_policy_template_cannot_have_rendered_is_refused_by_item(models, tiny_llama, text, reason):
    reader = Retemplater(Encoder.for_model(models["chatml"]), policy_tokenizer(tiny_llama, "llama3"))
    with pytest.raises(DataError, match=f"item 2: .*{reason}"):
        reader.encode_item(text, "item 2")


def test_a_policy_tokenizer_without_turns_or_unknown_is_refused(models, tiny_llama, tmp_path):
    encoder = Encoder.for_model(models["chatml"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="has no chat template"):
        Retemplater(encoder, tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ConfigError, match="does not mark where a user turn"):
        Retemplater(encoder, tokenizer)
    with pytest.raises(ModelError, match="policy_tokenizer .*does not exist"):
        models["chatml"].score(["x"], policy_tokenizer=str(tmp_path / "no-such-tokenizer"))


def test_a_foreign_text_without_a_policy_tokenizer_warns_once(models, tiny_llama, monkeypatch, caplog):
    monkeypatch.setitem(retemplate._warned, "foreign", False)
    model = models["chatml"]
    own = model.tokenizer.decode(Encoder.for_model(model).encode_item(CONVERSATIONS[0]))
    foreign = rollout(policy_tokenizer(tiny_llama, "llama3"), CONVERSATIONS[0])
    with caplog.at_level(logging.WARNING, logger="discorm.data.retemplate"):
        model.score([own])
        assert not caplog.records
        model.score([own, foreign, foreign])
        model.score([foreign])
    assert len(caplog.records) == 1
    assert "input 1 does not look like" in caplog.text and "--policy-tokenizer" in caplog.text


@pytest.mark.slow
def test_the_default_models_own_template_as_the_policy(models):
    """SmolLM2's real chat template (a default system prompt when there is none) against the tiny ChatML one."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    model = models["chatml"]
    expected = [r["reward"] for r in model.score(CONVERSATIONS)]
    for variant in ({"eos": True}, {"eos": False, "pad": 1}):
        texts = [rollout(tokenizer, conversation, **variant) for conversation in CONVERSATIONS]
        assert [r["reward"] for r in model.score(texts, policy_tokenizer=tokenizer)] == pytest.approx(expected,
                                                                                                     abs=1e-5)
