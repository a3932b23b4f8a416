import pytest

from discorm.data.formats import FormatSpec, SkipPair, detect_format, parse_hh, split_shared_prompt, to_pair
from discorm.errors import DataError

HH_CHOSEN = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: Fine, thanks."
HH_REJECTED = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: Go away."


def test_detect_format():
    assert detect_format(["prompt", "chosen", "rejected"], "f") == "explicit"
    assert detect_format(["chosen", "rejected"], "f") == "implicit"
    assert detect_format(["conversations", "chosen", "rejected"], "f") == "sharegpt"
    with pytest.raises(DataError, match=r"f: cannot tell the data format from the columns \['a', 'b'\]"):
        detect_format(["a", "b"], "f")


def test_explicit_strings_with_system_margin_and_soft_label():
    row = {"prompt": "Q?", "chosen": "good", "rejected": "bad", "system": "Be kind.", "margin": 2, "soft_label": 0.75}
    pair = to_pair(row, FormatSpec("explicit"), "x:1")
    assert pair.prompt == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Q?"}]
    assert pair.chosen == [{"role": "assistant", "content": "good"}]
    assert pair.margin == 2.0 and pair.soft_label == 0.75


def test_explicit_message_lists():
    row = {"prompt": [{"role": "user", "content": "Q?"}],
           "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}
    pair = to_pair(row, FormatSpec("explicit"), "x:1")
    assert pair.prompt == row["prompt"] and pair.rejected == row["rejected"]


def test_implicit_hh_text_splits_at_last_shared_turn():
    pair = to_pair({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, FormatSpec("implicit"), "x:1")
    assert [m["role"] for m in pair.prompt] == ["user", "assistant", "user"]
    assert pair.prompt[-1]["content"] == "how are you?"
    assert pair.chosen == [{"role": "assistant", "content": "Fine, thanks."}]
    assert pair.rejected == [{"role": "assistant", "content": "Go away."}]


def test_parse_hh_and_split_messages():
    assert parse_hh("\n\nHuman: a b\n\nAssistant: c") == [{"role": "user", "content": "a b"},
                                                          {"role": "assistant", "content": "c"}]
    u1, a1, u2 = ({"role": r, "content": c} for r, c in (("user", "x"), ("assistant", "y"), ("user", "z")))
    chosen = [u1, a1, u2, {"role": "assistant", "content": "good"}]
    # divergence at a user turn backs off to the previous assistant turn
    rejected = [u1, a1, {"role": "user", "content": "other"}, {"role": "assistant", "content": "bad"}]
    prompt, c, r = split_shared_prompt(chosen, rejected)
    assert prompt == [u1] and c[0] == a1 and r[0] == a1


def test_implicit_message_lists():
    u = {"role": "user", "content": "Q"}
    pair = to_pair({"chosen": [u, {"role": "assistant", "content": "A"}],
                    "rejected": [u, {"role": "assistant", "content": "B"}]}, FormatSpec("implicit"), "x")
    assert pair.prompt == [u] and pair.chosen[0]["content"] == "A"


def test_alpaca_with_history_and_mapping():
    row = {"q": "Translate", "inp": "hola", "good": "hello", "bad": "bye", "history": [["hi", "hey"]]}
    spec = FormatSpec("alpaca", {"prompt": "q", "query": "inp", "chosen": "good", "rejected": "bad"})
    pair = to_pair(row, spec, "x")
    assert pair.prompt == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"},
                           {"role": "user", "content": "Translate\nhola"}]
    assert pair.chosen[0]["content"] == "hello"


def test_sharegpt_with_tags():
    row = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}],
           "chosen": {"from": "gpt", "value": "A"}, "rejected": {"from": "gpt", "value": "B"}}
    pair = to_pair(row, FormatSpec("sharegpt"), "x")
    assert pair.prompt == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    row = {"messages": [{"role": "user", "content": "Q"}],
           "chosen": {"role": "assistant", "content": "A"}, "rejected": {"role": "assistant", "content": "B"}}
    spec = FormatSpec("sharegpt", {"messages": "messages"},
                      {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"})
    assert to_pair(row, spec, "x").chosen == [{"role": "assistant", "content": "A"}]


def test_skippable_rows_and_type_errors():
    with pytest.raises(SkipPair) as skip:
        to_pair({"prompt": "Q", "chosen": "  ", "rejected": "b"}, FormatSpec("explicit"), "f:3")
    assert skip.value.reason == "empty response"
    with pytest.raises(SkipPair) as skip:
        to_pair({"prompt": "Q", "chosen": "same", "rejected": "same"}, FormatSpec("explicit"), "f:3")
    assert skip.value.reason == "identical chosen/rejected"
    with pytest.raises(DataError, match=r"f:4: column 'chosen' should be str or list or dict, found int"):
        to_pair({"prompt": "Q", "chosen": 5, "rejected": "b"}, FormatSpec("explicit"), "f:4")
    with pytest.raises(DataError, match=r"f:5: column 'margin' should be a finite number, found str"):
        to_pair({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": "big"}, FormatSpec("explicit"), "f:5")
    with pytest.raises(DataError, match=r"f:6: column 'margin' should be a finite number, found float \('inf'\)"):
        to_pair({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": float("inf")}, FormatSpec("explicit"), "f:6")
    # an empty cell (NaN in CSV and parquet tables) is a missing value, not an error
    assert to_pair({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": float("nan")}, FormatSpec("explicit"),
                   "f:7").margin is None
    with pytest.raises(DataError, match=r"soft_label'=1.5 is outside"):
        to_pair({"prompt": "Q", "chosen": "a", "rejected": "b", "soft_label": 1.5}, FormatSpec("explicit"), "f")
