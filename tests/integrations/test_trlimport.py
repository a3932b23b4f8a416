"""Imported reward models are scored as their own trainers and consumers read them. A TRL RewardTrainer model is
read by transformers' rule: the whole chat-template rendering (ChatML's trailing newline included), at its last
token that is not the pad token, with pad == eos; `discorm eval`, `discorm score`, the server and
`RewardModel.score` give `AutoModelForSequenceClassification`'s logits[:, 0]. A LlamaFactory value-head folder is
read at the last token of its whole rendering, as LlamaFactory's `get_scores` reads it
(src/llamafactory/chat/hf_engine.py at ff6d4d1)."""

import json
import logging
from contextlib import contextmanager

import pytest
import torch
from datasets import Dataset
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    LlamaForCausalLM,
)

from discorm.cli import main
from discorm.data.templates import Renderer
from discorm.data.tokenize import Encoder
from discorm.errors import ModelError
from discorm.model.reward_model import RewardModel
from discorm.serve.export import export_sequence_classification
from discorm.serve.server import create_app
from tests.conftest import CHATML, make_model_dir
from tests.policies import CONVERSATIONS

trl = pytest.importorskip("trl")

ENDS_AT_EOS = (  # ChatML without the newline after the last <|im_end|>: the rendering ends with the pad token
    "{% for m in messages %}{% if not loop.first %}\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>{% endfor %}{% if add_generation_prompt %}\n<|im_start|>assistant\n{% endif %}"
)
PAIRS = [
    ("What is 12 + 7?", "The answer is 19.", "I am not sure anyone can answer that."),
    ("Tell me about bees.", "Bees make honey.", "no"),
    ("Is the moon far?", "The moon orbits the Earth.", "You should look it up yourself."),
    ("What is the capital of France?", "Paris is the capital of France.", "maybe"),
]


def _pair(prompt: str, chosen: str, rejected: str) -> dict:
    user = [{"role": "user", "content": prompt}]
    return {"chosen": user + [{"role": "assistant", "content": chosen}],
            "rejected": user + [{"role": "assistant", "content": rejected}]}


# contents that end or begin with whitespace or the end-of-turn / pad token itself, or are empty
CONTENT = st.text(st.sampled_from(list("ab \n")), max_size=6) | st.sampled_from(["", "<|im_end|>", "a<|im_end|>",
                                                                                "\n\n", " yes"])
TURNS = st.lists(st.tuples(CONTENT, CONTENT), min_size=1, max_size=3)


@pytest.fixture(scope="module", params=[("llama", CHATML), ("qwen2", ENDS_AT_EOS)], ids=["chatml", "ends_at_eos"])
def trl_model(request, tmp_path_factory):
    """A tiny model trained for two steps by TRL's RewardTrainer on conversational pairs, pad == eos."""
    arch, template = request.param
    folder = tmp_path_factory.mktemp(f"trl_{arch}")
    base = make_model_dir(folder / "base", arch)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template, tokenizer.pad_token = template, tokenizer.eos_token
    tokenizer.save_pretrained(base)
    config = trl.RewardConfig(output_dir=str(folder / "out"), max_steps=2, per_device_train_batch_size=2,
                              learning_rate=5e-2, bf16=False, gradient_checkpointing=False, use_cpu=True,
                              report_to="none", save_strategy="no", seed=0, disable_tqdm=True)
    with _quiet():
        trainer = trl.RewardTrainer(model=str(base), args=config, processing_class=tokenizer,
                                    train_dataset=Dataset.from_list([_pair(*p) for p in PAIRS]))
        trainer.train()
    trainer.save_model(str(folder / "rm"))
    saved = json.loads((folder / "rm" / "config.json").read_text())
    assert saved["pad_token_id"] == tokenizer.eos_token_id  # pad == eos, as TRL saved it
    return folder / "rm"


@contextmanager
def _quiet():
    """transformers' and TRL's load-time notices off for the block."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _classifier_scores(folder, conversations) -> list[float]:
    """What TRL, RewardBench and GRPO read: the chat template's token ids of each whole conversation, right
    padded with the pad token, AutoModelForSequenceClassification's logits[:, 0]."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    classifier = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    ids = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in conversations]
    batch = tokenizer.pad({"input_ids": ids}, padding_side="right", return_tensors="pt")
    with torch.no_grad():
        return classifier(**batch).logits[:, 0].tolist()


def _at_end_of_turn(folder, conversations) -> list[float]:
    """The same classifier read at each conversation's final <|im_end|>: where DiscoRM reads its own models."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    classifier = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    scores = []
    for conversation in conversations:
        ids = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
        end = max(i for i, token in enumerate(ids) if token == tokenizer.eos_token_id)
        with torch.no_grad():
            hidden = classifier.model(torch.tensor([ids[: end + 1]])).last_hidden_state[0, -1]
            scores.append(classifier.score(hidden).item())
    return scores


def test_trl_reward_model_scores_as_transformers_reads_it(trl_model):
    conversations = CONVERSATIONS + [p for args in PAIRS for p in _pair(*args).values()]
    expected = _classifier_scores(trl_model, conversations)
    wrong = _at_end_of_turn(trl_model, conversations)
    assert max(abs(a - b) for a, b in zip(expected, wrong)) > 1e-3  # the reading position matters
    with _quiet():
        model = RewardModel.from_pretrained(trl_model).eval()
    assert (model.rm_config.score_at, model.rm_config.pad_token_id) == ("last_non_pad", model.tokenizer.eos_token_id)
    assert [r["reward"] for r in model.score(conversations)] == pytest.approx(expected, abs=1e-5)
    texts = [model.tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]  # RewardBench, OpenRLHF
    assert [r["reward"] for r in model.score(texts)] == pytest.approx(expected, abs=1e-5)
    with TestClient(create_app(model, max_items=32), base_url="http://127.0.0.1") as client:
        assert client.post("/score", json=conversations).json()["rewards"] == pytest.approx(expected, abs=1e-5)
        answer = client.post("/get_reward", json={"query": texts}).json()
        assert answer["rewards"] == pytest.approx(expected, abs=1e-5)


def test_trl_reward_model_through_discorm_eval_and_score(trl_model, tmp_path):
    pairs = [_pair(*p) for p in PAIRS]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    chosen = _classifier_scores(trl_model, [p["chosen"] for p in pairs])
    rejected = _classifier_scores(trl_model, [p["rejected"] for p in pairs])
    with _quiet():
        assert main(["eval", str(trl_model), "--data", f"p={data}", "--out", str(tmp_path / "eval"), "--no-report",
                     "--bootstrap", "100"]) == 0
        assert main(["score", str(trl_model), "--input", str(data), "--output", str(tmp_path / "out.jsonl")]) == 0
    predictions = [json.loads(x) for x in (tmp_path / "eval" / "predictions" / "p.jsonl").read_text().splitlines()]
    assert [s for p in predictions for s in p["scores"]] == pytest.approx(
        [s for pair in zip(chosen, rejected) for s in pair], abs=1e-5)
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)
    assert results["sets"]["p"]["accuracy"] == pytest.approx(accuracy)
    scored = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [s["chosen"]["reward"] for s in scored] == pytest.approx(chosen, abs=1e-5)
    assert [s["rejected"]["reward"] for s in scored] == pytest.approx(rejected, abs=1e-5)


def test_llamafactory_value_head_is_read_at_the_last_token_of_its_whole_rendering(tiny_llama, tmp_path):
    """LlamaFactory's rm stage saves the causal LM and value_head.safetensors (v_head.summary.*); get_scores renders
    with the saved chat template, right-pads, and reads the value head at attention_mask.sum() - 1."""
    torch.manual_seed(5)
    folder = tmp_path / "lf"
    causal = LlamaForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        for p in causal.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    causal.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(folder)
    weight, bias = torch.randn(1, 32), torch.randn(1)
    save_file({"v_head.summary.weight": weight, "v_head.summary.bias": bias}, str(folder / "value_head.safetensors"))

    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in CONVERSATIONS]
    assert all(text.endswith("<|im_end|>\n") for text in texts)
    inputs = tokenizer(texts, padding=True, padding_side="right", add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        values = causal.model(**inputs).last_hidden_state @ weight[0] + bias[0]  # (B, L)
    expected = values.gather(-1, inputs["attention_mask"].sum(-1, keepdim=True) - 1)[:, 0].tolist()
    ends = (inputs["attention_mask"].sum(-1) - 2).unsqueeze(-1)  # the final <|im_end|>, DiscoRM's own position
    assert (values.gather(-1, ends)[:, 0] - torch.tensor(expected)).abs().max() > 1e-3

    model = RewardModel.from_pretrained(folder).eval()
    assert (model.rm_config.imported_from, model.rm_config.score_at) == ("llamafactory", "last_token")
    assert [r["reward"] for r in model.score(CONVERSATIONS)] == pytest.approx(expected, abs=1e-5)
    assert [r["reward"] for r in model.score(texts)] == pytest.approx(expected, abs=1e-5)
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"chosen": CONVERSATIONS[0], "rejected": CONVERSATIONS[0][:1] + [
        {"role": "assistant", "content": "hello, how are you?"}]}) + "\n")
    assert main(["score", str(folder), "--input", str(data), "--output", str(tmp_path / "out.jsonl")]) == 0
    scored = json.loads((tmp_path / "out.jsonl").read_text())
    rejected = model.score([CONVERSATIONS[0][:1] + [{"role": "assistant", "content": "hello, how are you?"}]])
    assert scored["chosen"]["reward"] == pytest.approx(expected[0], abs=1e-5)
    assert scored["rejected"]["reward"] == pytest.approx(rejected[0]["reward"], abs=1e-5)
    export_sequence_classification(str(folder), str(tmp_path / "export"))  # to the format TRL and vLLM load
    shift = json.loads((tmp_path / "export" / "config.json").read_text())["discorm_reward_shift"]
    assert [s - shift for s in _classifier_scores(tmp_path / "export", CONVERSATIONS)] == pytest.approx(expected,
                                                                                                      abs=1e-5)


def test_the_export_of_an_imported_model_is_read_where_the_import_was(trl_model, tmp_path):
    """`discorm export` of a TRL folder keeps its template and its pad token: consumers still read the export where
    they read the original."""
    expected = _classifier_scores(trl_model, CONVERSATIONS)
    with _quiet():
        export_sequence_classification(str(trl_model), str(tmp_path / "export"))
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    shift = config.get("discorm_reward_shift", 0.0)
    assert [s - shift for s in _classifier_scores(tmp_path / "export", CONVERSATIONS)] == pytest.approx(expected,
                                                                                                      abs=1e-5)


def test_a_classifier_that_reads_its_first_token_is_refused(tiny_bert, tmp_path):
    BertForSequenceClassification.from_pretrained(tiny_bert, num_labels=1).save_pretrained(tmp_path / "bert")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelError, match="reads its first token through a pooler"):
        RewardModel.from_pretrained(tmp_path / "bert")


def _whole_encoder(tiny_llama, template: str, score_at: str, cutoff_len: int = 1024) -> Encoder:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template, tokenizer.pad_token = template, tokenizer.eos_token
    return Encoder(tokenizer, Renderer(tokenizer), cutoff_len, score_at, tokenizer.pad_token_id)


def _oracle(tokenizer, conversation, score_at: str) -> list[int]:
    """The tokens transformers / LlamaFactory run, up to the one read: the whole rendering tokenized at once, less
    the trailing pad tokens for last_non_pad (its first token stays)."""
    ids = tokenizer(tokenizer.apply_chat_template(conversation, tokenize=False), add_special_tokens=False)["input_ids"]
    while score_at == "last_non_pad" and len(ids) > 1 and ids[-1] == tokenizer.pad_token_id:
        ids = ids[:-1]
    return ids


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=TURNS, last=st.lists(CONTENT, min_size=1, max_size=3), template=st.sampled_from([CHATML, ENDS_AT_EOS]),
       score_at=st.sampled_from(["last_non_pad", "last_token"]))
def test_whole_readings_encode_what_the_consumer_runs(tiny_llama, turns, last, template, score_at):
    """Every response of a group ends at the token the consumer reads, the prompt shared (the slow, obvious twin:
    each whole conversation tokenized on its own), also where a response is all pad tokens."""
    encoder = _whole_encoder(tiny_llama, template, score_at)
    prompt = [{"role": role, "content": text} for user, reply in turns
              for role, text in (("user", user), ("assistant", reply))][:-1]
    responses = [[{"role": "assistant", "content": text}] for text in last]
    encoded = encoder.encode(prompt, responses)
    for response, ids in zip(responses, encoded.response_ids):
        assert ids and encoded.prompt_ids + ids == _oracle(encoder.tokenizer, prompt + response, score_at)


def test_truncation_keeps_the_token_read_and_the_end_of_turn(tiny_llama):
    long = [{"role": "user", "content": "the quick brown fox " * 20}, {"role": "assistant", "content": "yes " * 40}]
    for template, score_at, kept in [(CHATML, "last_non_pad", 2), (ENDS_AT_EOS, "last_non_pad", 1),
                                     (CHATML, "last_token", 2)]:  # <|im_end|> and "\n"; the token before <|im_end|>
        encoder = _whole_encoder(tiny_llama, template, score_at, cutoff_len=40)
        encoded = encoder.encode(long[:1], [long[1:]])
        sequence = encoded.prompt_ids + encoded.response_ids[0]
        assert encoded.truncated and len(sequence) <= 40
        assert sequence[-kept:] == _oracle(encoder.tokenizer, long, score_at)[-kept:]
