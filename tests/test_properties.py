"""Property-based tests: random JSON rows to the data layer and random bodies to the reward server end in a
DiscoRM error (data) or a 4xx (server), never an unhandled exception or a 5xx."""

import json
import math
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from discorm.config import FORMATTINGS, DataArguments
from discorm.data.loader import tokenized_dataset
from discorm.data.templates import Renderer
from discorm.data.tokenize import Encoder
from discorm.errors import DiscoRMError
from discorm.model.heads.base import Attribute
from tests.serve.server_helpers import served_model

SETTINGS = settings(max_examples=200, deadline=timedelta(seconds=10), derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# text with any code point, lone surrogates included (JSON can carry them as \u escapes)
TEXT = st.text(st.characters(codec=None, categories=None), max_size=12) | st.sampled_from(
    ["", " ", "hi", "\n\nHuman: a\n\nAssistant: b", "<|im_end|>"])
SCALARS = st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True) | TEXT
ROLES = st.sampled_from(["system", "user", "assistant", "tool", "bot", "", "human", "gpt"]) | TEXT
MESSAGE = st.fixed_dictionaries({"role": ROLES, "content": TEXT | SCALARS},
                                optional={"from": ROLES, "value": TEXT, "extra": SCALARS})
JSON = st.recursive(SCALARS | MESSAGE, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner,
                                                                                                  max_size=3),
                    max_leaves=12)
FIELD = st.sampled_from(["prompt", "chosen", "rejected", "system", "margin", "soft_label", "noise", "instruction",
                         "input", "history", "conversations", "messages", "response", "scores", "helpfulness"])
VALUE = TEXT | st.lists(MESSAGE, max_size=3) | MESSAGE | JSON
# rows shaped like each format, with random values, and rows of anything
WORDS = st.text(st.characters(codec="utf-8"), min_size=1, max_size=10)
GOOD_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": WORDS})
NEAR = st.one_of(WORDS, WORDS, WORDS, st.lists(GOOD_MESSAGE, min_size=1, max_size=3), VALUE)
NUMBER = st.one_of(st.floats(-5, 5), st.floats(-5, 5), st.floats(), SCALARS)
NUMBERS = {"margin": NUMBER, "soft_label": st.one_of(st.floats(0, 1), st.floats(0, 1), NUMBER), "noise": NUMBER,
           "system": st.one_of(WORDS, WORDS, TEXT, SCALARS)}
RATING = st.one_of(st.integers(1, 5), st.floats(1, 5), NUMBER)
RATINGS = {"helpfulness": RATING, "correctness": RATING, "system": NUMBERS["system"], "margin": NUMBER,
           "scores": st.dictionaries(st.sampled_from(["helpfulness", "correctness", "verbosity"]), RATING) | JSON}
SHAREGPT = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", "robot"]), "value": WORDS})
ROW = (st.fixed_dictionaries({"prompt": NEAR, "chosen": NEAR, "rejected": NEAR}, optional=NUMBERS)
       | st.fixed_dictionaries({"chosen": NEAR, "rejected": NEAR}, optional=NUMBERS)
       | st.fixed_dictionaries({"instruction": WORDS | SCALARS, "input": WORDS | SCALARS, "chosen": WORDS | SCALARS,
                                "rejected": WORDS | SCALARS}, optional={"history": JSON | st.lists(
                                    st.lists(WORDS, min_size=2, max_size=2), max_size=2), **NUMBERS})
       | st.fixed_dictionaries({"conversations": st.lists(SHAREGPT, max_size=3) | JSON, "chosen": SHAREGPT | JSON,
                                "rejected": SHAREGPT | JSON}, optional=NUMBERS)
       | st.fixed_dictionaries({"prompt": NEAR, "response": NEAR}, optional=RATINGS)
       | st.dictionaries(FIELD | TEXT, VALUE, max_size=6))
# a head that reads rated rows (two attributes rated 1-5), or one that learns from pairs only
ATTRIBUTES = st.sampled_from([(), (Attribute("helpfulness", 1, 5), Attribute("correctness", 1, 5))])


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@SETTINGS
@given(rows=st.lists(ROW, min_size=1, max_size=3),
       formatting=st.one_of(*[st.just("auto")] * 4, st.sampled_from(FORMATTINGS)),
       attributes=ATTRIBUTES)
def test_random_rows_reach_the_model_or_a_discorm_error(tokenizer, rows, formatting, attributes):
    _load_and_check(tokenizer, rows, formatting, attributes)


MOSTLY_VALID = st.one_of(st.integers(1, 5), st.integers(1, 5), st.floats(1, 5), st.none(), RATING)
RATED_ROW = st.fixed_dictionaries({"prompt": NEAR, "response": NEAR}, optional={
    "helpfulness": MOSTLY_VALID, "correctness": MOSTLY_VALID, "system": NUMBERS["system"],
    "scores": st.dictionaries(st.sampled_from(["helpfulness", "correctness"]), MOSTLY_VALID) | RATINGS["scores"]})


@SETTINGS
@given(rows=st.lists(RATED_ROW, min_size=1, max_size=3), formatting=st.sampled_from(["auto", "rated"]))
def test_random_rated_rows_reach_the_model_or_a_discorm_error(tokenizer, rows, formatting):
    _load_and_check(tokenizer, rows, formatting, (Attribute("helpfulness", 1, 5), Attribute("correctness", 1, 5)))


def _load_and_check(tokenizer, rows: list[dict], formatting: str, attributes: tuple) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "rows.jsonl")
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        args = DataArguments(dataset=str(path), formatting=formatting, cutoff_len=48, dataset_dir=folder)
        try:
            dataset, _ = tokenized_dataset(str(path), tokenizer, Renderer(tokenizer), 48, args.read_options(),
                                           attributes=attributes)
            examples = list(dataset)
        except DiscoRMError as err:
            assert str(err) and "\n" not in str(err)
            event(f"error: {type(err).__name__}")
            return
    event(f"{len(examples)} examples tokenized")
    for example in examples:  # what comes through is well-formed
        if example.get("response_ids") is not None:  # a rated response: its ratings in range, NaN where not rated
            event("rated response tokenized")
            assert example["response_ids"] and len(example["prompt_ids"]) + len(example["response_ids"]) <= 48
            assert len(example["scores"]) == len(attributes) and not all(map(math.isnan, example["scores"]))
            assert all(math.isnan(v) or 1 <= v <= 5 for v in example["scores"])
            continue
        assert example["chosen_ids"] and example["rejected_ids"]
        assert len(example["prompt_ids"]) + max(len(example["chosen_ids"]), len(example["rejected_ids"])) <= 48
        for key in ("margin", "soft_label", "noise"):
            assert example.get(key) is None or math.isfinite(example[key])


@SETTINGS
@given(item=VALUE | st.lists(MESSAGE, min_size=1, max_size=3))
def test_random_scoring_inputs_encode_or_raise_a_discorm_error(tokenizer, item):
    encoder = Encoder(tokenizer, Renderer(tokenizer), 48)
    try:
        ids = encoder.encode_item(item, "item 0")
    except DiscoRMError as err:
        assert str(err).startswith("item 0")
        event("error")
        return
    event("encoded")
    assert 0 < len(ids) <= 48


@pytest.fixture(scope="module")
def client(tiny_llama, tmp_path_factory):
    from fastapi.testclient import TestClient

    from discorm.serve.server import create_app

    model = served_model(tiny_llama, tmp_path_factory.mktemp("property") / "run")
    with TestClient(create_app(model, max_items=8, max_body_bytes=20_000), base_url="http://127.0.0.1") as test_client:
        yield test_client


GOOD_ITEM = st.one_of(WORDS, st.lists(GOOD_MESSAGE, min_size=1, max_size=3),
                      st.fixed_dictionaries({"prompt": WORDS, "response": WORDS}))
ITEM = st.one_of(GOOD_ITEM, GOOD_ITEM, GOOD_ITEM, TEXT, st.lists(MESSAGE, max_size=3), st.fixed_dictionaries(
    {"prompt": TEXT | st.lists(MESSAGE, max_size=2), "response": TEXT | st.lists(MESSAGE, max_size=2)}), JSON)
OPTIONS = st.fixed_dictionaries({}, optional={
    "reward_mode": st.sampled_from(["mean", "lower_quantile", "mean_minus_std", "max"]) | SCALARS,
    "reward_alpha": st.floats(0.001, 0.999) | SCALARS, "reward_k": st.floats(-3, 3) | SCALARS})
ITEMS = st.lists(ITEM, min_size=1, max_size=4) | st.lists(ITEM, max_size=12)
QUERIES = st.lists(st.one_of(WORDS, WORDS, WORDS, WORDS, TEXT, SCALARS), min_size=1, max_size=4)
BODY = st.one_of(ITEMS, st.builds(lambda items, options: {"inputs": items, **options}, ITEMS, OPTIONS),
                 st.builds(lambda query, options: {"query": query, **options}, QUERIES, OPTIONS), JSON)


@SETTINGS
@given(route=st.sampled_from(["/score", "/get_reward"]), body=BODY | st.binary(max_size=64))
def test_random_bodies_get_an_answer_or_a_4xx(client, route, body):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(route, content=content, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    event(f"status {response.status_code}")
    answer = response.json()
    if response.status_code == 200:
        items = body if isinstance(body, list) else body.get("inputs", body.get("query"))
        assert len(answer["rewards"]) == len(items) and all(math.isfinite(r) for r in answer["rewards"])
    else:
        assert 400 <= response.status_code < 500 and answer["error"]
