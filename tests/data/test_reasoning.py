"""Reasoning traces: ``reasoning: strip`` scores a completion with a trace as the same answer without it, in
training, scoring and re-templating; ``keep`` hands the trace to the template; the saved model records which."""

import json
from dataclasses import replace

import pytest
from transformers import AutoTokenizer

from discorm.config import DataArguments, FinetuningArguments, ModelArguments
from discorm.data.retemplate import Retemplater
from discorm.data.templates import Renderer, strip_reasoning
from discorm.data.tokenize import Encoder
from discorm.errors import ConfigError, ModelError
from discorm.model.reward_model import RewardModel
from discorm.model.rm_config import RewardModelConfig
from discorm.train.workflow import setup_model
from tests.conftest import build_datasets, build_model
from tests.policies import rollout

# A Qwen3-style template: it reads reasoning_content (or a <think> block in the content), shows the trace of the
# assistant turns after the last user turn only, and closes an empty trace when enable_thinking is false.
QWEN3_LIKE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}"
    "{%- set content = m.content -%}"
    "{%- set trace = m.reasoning_content if m.reasoning_content is string else '' -%}"
    "{%- if '</think>' in content -%}"
    "{%- set trace = content.split('</think>')[0].split('<think>')[-1].strip('\\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{%- if loop.index0 > ns.last_user -%}"
    "{{ '<|im_start|>assistant\\n<think>\\n' + trace + '\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}"
    "{%- else -%}{{ '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- else -%}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking -%}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif -%}"
    "{%- endif -%}"
)
QUESTION = {"role": "user", "content": "What is 12 + 7?"}
ANSWER = "The answer is 19."
TRACE = "Let me add 12 and 7. 12 + 7 = 19, yes."


def chat(content: str, **extra) -> list[dict]:
    return [QUESTION, {"role": "assistant", "content": content, **extra}]


@pytest.fixture(scope="module")
def strip_model(tiny_llama):
    model = build_model(tiny_llama, "full").eval()
    model.rm_config = replace(model.rm_config, reasoning="strip")
    return model


def rewards(model, items, **kwargs) -> list[float]:
    return [r["reward"] for r in model.score(items, **kwargs)]


@pytest.mark.parametrize(("text", "stripped"), [
    (f"<think>{TRACE}</think>\n\n{ANSWER}", ANSWER),
    (f"<think>\n{TRACE}\n</think>{ANSWER}", ANSWER),
    (f"{TRACE}\n</think>\n\n{ANSWER}", ANSWER),  # the generation prompt opened the block
    (f"<thinking>{TRACE}</thinking> {ANSWER}", ANSWER),
    (f"{ANSWER} <think>{TRACE}", ANSWER),  # a trace cut off: nothing after it is an answer
    (f"<think>{TRACE}", ""),
    (f"{ANSWER}\n", f"{ANSWER}\n"),  # no trace: unchanged
    ("Use <b>bold</b> here.", "Use <b>bold</b> here."),
])
def test_strip_removes_every_kind_of_trace(text, stripped):
    assert strip_reasoning(text) == stripped


def test_a_completion_with_a_trace_scores_as_the_answer_alone(strip_model, tiny_llama):
    expected = rewards(strip_model, [chat(ANSWER)])[0]
    with_traces = [chat(f"<think>\n{TRACE}\n</think>\n\n{ANSWER}"), chat(f"{TRACE}</think>\n\n{ANSWER}"),
                   chat(ANSWER, reasoning_content=TRACE), {"prompt": "What is 12 + 7?",
                                                           "response": f"<think>{TRACE}</think> {ANSWER}"}]
    got = rewards(strip_model, with_traces)
    assert got[:3] == pytest.approx([expected] * 3, abs=1e-6)
    assert got[3] == pytest.approx(rewards(strip_model, [{"prompt": "What is 12 + 7?", "response": ANSWER}])[0],
                                   abs=1e-6)
    as_given = build_model(tiny_llama, "full").eval()  # no reasoning rule: the trace is part of the answer
    assert abs(rewards(as_given, with_traces[:1])[0] - rewards(as_given, [chat(ANSWER)])[0]) > 1e-4
    encoder = Encoder.for_model(strip_model)
    assert encoder.encode_item(with_traces[0]) == encoder.encode_item(chat(ANSWER))


def test_earlier_turns_lose_their_traces_too(strip_model):
    earlier = [QUESTION, {"role": "assistant", "content": f"<think>{TRACE}</think>19"},
               {"role": "user", "content": "thank you, and bees?"}, {"role": "assistant", "content": "Bees."}]
    plain = [*earlier[:1], {"role": "assistant", "content": "19"}, *earlier[2:]]
    assert rewards(strip_model, [earlier]) == pytest.approx(rewards(strip_model, [plain]), abs=1e-6)


def test_re_templating_from_a_policy_that_emits_traces(strip_model, tiny_llama):
    policy = AutoTokenizer.from_pretrained(tiny_llama)
    policy.chat_template = QWEN3_LIKE
    completion = f"<think>\n{TRACE}\n</think>\n\n{ANSWER}"
    text = rollout(policy, chat(completion))
    assert "<think>" in text
    expected = rewards(strip_model, [chat(ANSWER)])[0]
    assert rewards(strip_model, [text], policy_tokenizer=policy)[0] == pytest.approx(expected, abs=1e-6)
    prompt = policy.apply_chat_template([QUESTION], add_generation_prompt=True, tokenize=False)
    reader = Retemplater(Encoder.for_model(strip_model), policy)
    assert reader.encode_joined(prompt, completion + policy.eos_token) == reader.encode_item(chat(ANSWER))


def test_a_text_in_the_models_own_format_is_stripped_without_a_policy_tokenizer(strip_model):
    tokenizer = strip_model.tokenizer
    own = tokenizer.apply_chat_template(chat(f"<think>{TRACE}</think>\n{ANSWER}"), tokenize=False)
    assert rewards(strip_model, [own]) == pytest.approx(rewards(strip_model, [chat(ANSWER)]), abs=1e-6)


def test_keep_hands_the_trace_to_the_template(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    folded = Renderer(tokenizer, reasoning="keep").render(chat(ANSWER, reasoning_content=TRACE))
    assert folded == Renderer(tokenizer).render(chat(f"<think>\n{TRACE}\n</think>\n\n{ANSWER}"))
    assert TRACE not in Renderer(tokenizer).render(chat(ANSWER, reasoning_content=TRACE))  # ChatML ignores the key
    tokenizer.chat_template = QWEN3_LIKE
    rendered = Renderer(tokenizer, reasoning="keep").render(chat(ANSWER, reasoning_content=TRACE))
    assert rendered.endswith(f"<|im_start|>assistant\n<think>\n{TRACE}\n</think>\n\n{ANSWER}<|im_end|>\n")
    stripped = Renderer(tokenizer, reasoning="strip").render(chat(ANSWER, reasoning_content=TRACE))
    assert stripped.endswith(f"<|im_start|>assistant\n<think>\n\n</think>\n\n{ANSWER}<|im_end|>\n")


def test_the_saved_model_records_its_reasoning_rule(strip_model, tmp_path):
    strip_model.save_pretrained(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "discorm_config.json").read_text())["reasoning"] == "strip"
    loaded = RewardModel.from_pretrained(tmp_path / "run")
    assert Encoder.for_model(loaded).renderer.reasoning == "strip"
    assert rewards(loaded, [chat(f"<think>{TRACE}</think>{ANSWER}")]) == pytest.approx(
        rewards(strip_model, [chat(ANSWER)]), abs=1e-6)
    with pytest.raises(ModelError, match="reasoning='drop'"):
        RewardModelConfig(reasoning="drop")
    assert RewardModelConfig.from_dict({"head": "scalar", "finetuning_type": "full", "version": 4}).reasoning is None


def test_training_data_is_stripped_and_the_rule_is_saved(tiny_llama, tmp_path):
    rows = [{"prompt": f"question {i}", "chosen": f"<think>{TRACE}</think>\n\nyes {i}", "rejected": f"no {i}"}
            for i in range(4)]
    plain = [{**row, "chosen": f"yes {i}"} for i, row in enumerate(rows)]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    datasets = []
    for name, data in (("traces", rows), ("plain", plain)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in data))
        train, _, _ = build_datasets(DataArguments(dataset=str(path), reasoning="strip"), tokenizer)
        datasets.append(train["chosen_ids"])
    assert datasets[0] == datasets[1]
    with pytest.raises(ConfigError, match="reasoning='drop'"):
        DataArguments(reasoning="drop")
    with pytest.raises(ConfigError, match=r"chat_template_kwargs \['add_generation_prompt'\] name arguments"):
        DataArguments(chat_template_kwargs={"add_generation_prompt": True, "enable_thinking": False})
    args = DataArguments(reasoning="strip", chat_template_kwargs={"enable_thinking": False})
    model = setup_model(ModelArguments(model_name_or_path=str(tiny_llama)), FinetuningArguments(), data_args=args)
    assert (model.rm_config.reasoning, model.rm_config.chat_template_kwargs) == ("strip", {"enable_thinking": False})
