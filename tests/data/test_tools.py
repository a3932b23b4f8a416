"""Tool calls: a row's ``tools``, the assistant's ``tool_calls`` and tool turns (LlamaFactory's ``function_call`` and
``observation`` turns among them) are rendered by the model's own chat template and scored; malformed calls are
refused naming the row. Per-row and global ``chat_template_kwargs`` reach the template, the row's first."""

import json
from dataclasses import replace

import httpx
import pytest
from transformers import AutoTokenizer

from discorm.config import DataArguments
from discorm.data.formats import FORMATS, convert
from discorm.data.templates import Renderer
from discorm.data.tokenize import Encoder
from discorm.errors import DataError
from discorm.integrations.trl import reward_function
from discorm.model.reward_model import RewardModel
from discorm.serve.scoring import score_file
from discorm.serve.server import create_app
from tests.conftest import build_datasets, build_model
from tests.data.test_reasoning import QWEN3_LIKE
from tests.serve.server_helpers import running

# A Qwen2.5 / Hermes-style template: the tools as JSON in the system turn, each call as a <tool_call> block, tool
# results as <tool_response> blocks of a user turn.
TOOLS_TEMPLATE = (
    "{%- if tools -%}"
    "{{ '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' -%}{{ messages[0].content }}{%- else -%}You are a helpful assistant."
    "{%- endif -%}"
    "{{ '\\n\\n# Tools\\n\\n<tools>' }}{%- for tool in tools -%}{{ '\\n' + (tool | tojson) }}{%- endfor -%}"
    "{{ '\\n</tools>\\n\\nFor each function call, return a json object within <tool_call></tool_call> tags.'"
    " + '<|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' -%}{{ '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'user' or (m.role == 'assistant' and not m.tool_calls) -%}"
    "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- elif m.role == 'assistant' -%}"
    "{{ '<|im_start|>assistant' }}{%- if m.content -%}{{ '\\n' + m.content }}{%- endif -%}"
    "{%- for call in m.tool_calls -%}{%- if call.function is defined -%}{%- set call = call.function -%}{%- endif -%}"
    "{{ '\\n<tool_call>\\n{\"name\": \"' + call.name + '\", \"arguments\": ' + (call.arguments | tojson) + '}\\n"
    "</tool_call>' }}"
    "{%- endfor -%}{{ '<|im_end|>\\n' }}"
    "{%- elif m.role == 'tool' -%}"
    "{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' -%}{{ '<|im_start|>user' }}{%- endif -%}"
    "{{ '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{ '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
CONVERSATION = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": "18 C, sunny", "name": "get_weather"},
    {"role": "assistant", "content": "It is 18 C and sunny in Paris."},
]


@pytest.fixture(scope="module")
def tool_model(tiny_llama):
    model = build_model(tiny_llama, "full").eval()
    model.tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model.tokenizer.chat_template = TOOLS_TEMPLATE
    return model


def rewards(model, items) -> list[float]:
    return [r["reward"] for r in model.score(items)]


def test_a_tool_calling_conversation_renders_with_the_template_and_scores(tool_model):
    renderer = Encoder.for_model(tool_model).renderer
    text = renderer.render(CONVERSATION, options={"tools": [WEATHER]})
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\n<tools>\n" + json.dumps(WEATHER)
        + "\n</tools>\n\nFor each function call, return a json object within <tool_call></tool_call> tags.<|im_end|>\n"
        "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nIt is 18 C and sunny in Paris.<|im_end|>\n")
    openai = [{**m, "tool_calls": [{"id": "call_0", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]} if m.get("tool_calls") else m
        for m in CONVERSATION]
    bare = [{**m, "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]} if m.get("tool_calls")
            else m for m in CONVERSATION]
    got = rewards(tool_model, [{"messages": CONVERSATION, "tools": [WEATHER]}, {"messages": openai, "tools": [WEATHER]},
                               {"messages": bare, "tools": json.dumps([WEATHER])}, CONVERSATION])
    assert got[0] == pytest.approx(got[1], abs=1e-6) and got[0] == pytest.approx(got[2], abs=1e-6)
    assert abs(got[0] - got[3]) > 1e-5  # without the tools the system turn differs


def test_a_tool_call_can_be_the_scored_response(tool_model):
    items = [{"messages": CONVERSATION[:2], "tools": [WEATHER]},
             {"messages": [CONVERSATION[0], {"role": "assistant", "content": "", "tool_calls": [
                 {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]}],
              "tools": [WEATHER]}]
    paris, rome = rewards(tool_model, items)
    assert abs(paris - rome) > 1e-6


def sharegpt_row(**changes) -> dict:
    """A LlamaFactory sharegpt ranking row with function-call turns (glaive_toolcall_en_demo's shape)."""
    row = {"conversations": [{"from": "human", "value": "What is the weather in Paris?"},
                             {"from": "function_call", "value": json.dumps({"name": "get_weather",
                                                                            "arguments": {"city": "Paris"}})},
                             {"from": "observation", "value": "18 C, sunny"}],
           "chosen": {"from": "gpt", "value": "It is 18 C and sunny in Paris."},
           "rejected": {"from": "gpt", "value": "I do not know."},
           "tools": json.dumps([WEATHER["function"]])}
    return {**row, **changes}


def test_llamafactory_function_call_turns_become_tool_calls(tool_model, tmp_path):
    pair = convert(sharegpt_row(), FORMATS["sharegpt"].spec(), "tools.json row 0")
    assert [m["role"] for m in pair.prompt] == ["user", "assistant", "tool"]
    assert json.loads(pair.prompt[1]["tool_calls"]) == [CALL]
    assert pair.meta["chat"] == {"tools": [WEATHER["function"]]}
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(sharegpt_row()) + "\n" + json.dumps(sharegpt_row(rejected={"from": "gpt",
                                                                                        "value": "No."})) + "\n")
    train, _, _ = build_datasets(DataArguments(dataset=str(path)), tool_model.tokenizer)
    encoder = Encoder.for_model(tool_model)
    expected = encoder.encode(pair.prompt, [pair.chosen], options=pair.meta["chat"])
    assert train[0]["prompt_ids"] == expected.prompt_ids and train[0]["chosen_ids"] == expected.response_ids[0]
    assert "<tools>" in tool_model.tokenizer.decode(train[0]["prompt_ids"])
    renamed = [{**{k: v for k, v in sharegpt_row().items() if k != "tools"}, "functions": sharegpt_row()["tools"]}]
    (tmp_path / "glaive.json").write_text(json.dumps(renamed * 2))  # LlamaFactory's layout, through dataset_info.json
    (tmp_path / "dataset_info.json").write_text(json.dumps({"glaive_rm": {
        "file_name": "glaive.json", "formatting": "sharegpt", "ranking": True,
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "tools": "functions"}}}))
    listed, _, _ = build_datasets(DataArguments(dataset="glaive_rm", dataset_dir=str(tmp_path)), tool_model.tokenizer)
    assert listed[0]["prompt_ids"] == expected.prompt_ids


@pytest.mark.parametrize(("row", "message"), [
    (sharegpt_row(conversations=[{"from": "human", "value": "hi"},
                                 {"from": "function_call", "value": '{"name": "get_weather", "arguments": {city'}]),
     "tools.json row 3: tool_calls is not valid JSON"),
    (sharegpt_row(conversations=[{"from": "human", "value": "hi"},
                                 {"from": "function_call", "value": '{"arguments": {"city": "Paris"}}'}]),
     "tools.json row 3: tool call 0 has no function name"),
    (sharegpt_row(conversations=[{"from": "human", "value": "hi"}, {"from": "function_call", "value":
                                 '{"name": "get_weather", "arguments": "{city: Paris}"}'}]),
     r"tools.json row 3: the arguments of tool call 0 \(get_weather\) is not valid JSON"),
    (sharegpt_row(conversations=[{"from": "human", "value": "hi"}, {"from": "function_call", "value":
                                 '{"name": "get_weather", "arguments": [1, 2]}'}]),
     "should be a JSON object, found list"),
    (sharegpt_row(tools='{"name": "get_weather"}'), "column 'tools' should be a list of tool schemas"),
    (sharegpt_row(tools='[{"description": "no name"}]'), "tool 0 of column 'tools' has no name"),
    (sharegpt_row(tools="[not json"), "column 'tools' is not valid JSON"),
    (sharegpt_row(chat_template_kwargs=["enable_thinking"]), "should be an object of template variables"),
])
def test_malformed_tool_rows_are_refused_naming_the_row(row, message):
    with pytest.raises(DataError, match=message):
        convert(row, FORMATS["sharegpt"].spec(), "tools.json row 3")


def test_a_tool_turn_without_a_call_is_refused(tool_model):
    encoder = Encoder.for_model(tool_model)
    orphan = [CONVERSATION[0], CONVERSATION[2], CONVERSATION[3]]
    with pytest.raises(DataError, match="item 4: message 1 is a tool turn .* follows a user turn"):
        encoder.encode_item(orphan, "item 4")
    with pytest.raises(DataError, match="item 0: tool_calls should be a list"):
        encoder.encode_item([CONVERSATION[0], {"role": "assistant", "content": "", "tool_calls": 7}], "item 0")
    with pytest.raises(DataError, match="the raw template .* cannot show tools"):
        Renderer(tool_model.tokenizer, "raw").render(CONVERSATION, options={"tools": [WEATHER]})


def test_chat_template_kwargs_reach_the_template_row_over_global(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = QWEN3_LIKE
    prompt = [{"role": "user", "content": "hi"}]
    closed = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert not Renderer(tokenizer).render_prompt(prompt).endswith(closed)
    quiet = Renderer(tokenizer, template_kwargs={"enable_thinking": False})
    assert quiet.render_prompt(prompt).endswith(closed)
    assert not quiet.render_prompt(prompt, options={"chat_template_kwargs": {"enable_thinking": True}}).endswith(closed)
    model = build_model(tiny_llama, "full").eval()
    model.tokenizer = tokenizer
    model.rm_config = replace(model.rm_config, chat_template_kwargs={"enable_thinking": False})
    item = {"prompt": "hi", "response": "hello"}
    ids = Encoder.for_model(model).encode_item(item)
    assert tokenizer.decode(ids).endswith(closed + "hello<|im_end|>")
    with pytest.raises(DataError, match=r"item 2: chat_template_kwargs \['tokenize'\] name arguments"):
        Encoder.for_model(model).encode_item({**item, "chat_template_kwargs": {"tokenize": True}}, "item 2")


def test_discorm_score_reads_the_tools_of_pairs_and_responses(tool_model, tmp_path):
    tool_model.save_pretrained(tmp_path / "run")
    pairs, responses = tmp_path / "pairs.jsonl", tmp_path / "responses.jsonl"
    pairs.write_text(json.dumps(sharegpt_row()) + "\n")
    responses.write_text(json.dumps({"messages": CONVERSATION, "tools": [WEATHER]}) + "\n")
    score_file(str(tmp_path / "run"), str(pairs), str(tmp_path / "pairs_out.jsonl"))
    score_file(str(tmp_path / "run"), str(responses), str(tmp_path / "responses_out.jsonl"))
    pair = convert(sharegpt_row(), FORMATS["sharegpt"].spec(), "row")
    chosen = rewards(tool_model, [{"messages": pair.prompt + pair.chosen, "tools": [WEATHER["function"]]}])[0]
    scored = json.loads((tmp_path / "pairs_out.jsonl").read_text())
    assert scored["chosen"]["reward"] == pytest.approx(chosen, abs=1e-5)
    single = json.loads((tmp_path / "responses_out.jsonl").read_text())
    assert single["reward"] == pytest.approx(rewards(tool_model, [{"messages": CONVERSATION, "tools": [WEATHER]}])[0],
                                             abs=1e-5)


def test_trl_prompts_and_completions_carry_their_tools(tool_model, tmp_path):
    prompts, completions = [CONVERSATION[:3]] * 2, [CONVERSATION[3:], [{"role": "assistant", "content": "No idea."}]]
    expected = rewards(tool_model, [{"messages": p + c, "tools": [WEATHER]} for p, c in zip(prompts, completions)])
    tools = [[WEATHER], [WEATHER]]
    assert reward_function(tool_model)(prompts, completions, tools=tools) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(DataError, match=r"tools: expected a list of one value per completion \(2\)"):
        reward_function(tool_model)(prompts, completions, tools=[[WEATHER]])
    tool_model.save_pretrained(tmp_path / "run")
    app = create_app(RewardModel.from_pretrained(tmp_path / "run"))
    with running(app) as (url, _):
        assert reward_function(url)(prompts, completions, tools=tools) == pytest.approx(expected, abs=1e-5)
        body = {"prompts": prompts, "completions": completions}
        answer = httpx.post(f"{url}/score", json={**body, "tools": tools, "chat_template_kwargs": [None, {}]})
        assert answer.json()["rewards"] == pytest.approx(expected, abs=1e-5)
        short = httpx.post(f"{url}/score", json={**body, "tools": tools[:1]})
        assert short.status_code == 422 and '1 "tools" for 2 completions' in short.json()["error"]
        misplaced = httpx.post(f"{url}/score", json={"inputs": [CONVERSATION], "tools": tools[:1]})
        assert misplaced.status_code == 422 and '"tools" goes with "completions"' in misplaced.json()["error"]
