import pytest

from discorm.data.formats import FORMATS, convert, detect_format
from discorm.data.pairs import parse_hh, split_shared_prompt
from discorm.data.rows import SkipPair
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
    pair = convert(row, FORMATS["explicit"].spec(), "x:1")
    assert pair.prompt == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Q?"}]
    assert pair.chosen == [{"role": "assistant", "content": "good"}]
    assert pair.margin == 2.0 and pair.soft_label == 0.75


def test_explicit_message_lists():
    row = {"prompt": [{"role": "user", "content": "Q?"}],
           "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}
    pair = convert(row, FORMATS["explicit"].spec(), "x:1")
    assert pair.prompt == row["prompt"] and pair.rejected == row["rejected"]


def test_implicit_hh_text_splits_at_last_shared_turn():
    pair = convert({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, FORMATS["implicit"].spec(), "x:1")
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
    pair = convert({"chosen": [u, {"role": "assistant", "content": "A"}],
                    "rejected": [u, {"role": "assistant", "content": "B"}]}, FORMATS["implicit"].spec(), "x")
    assert pair.prompt == [u] and pair.chosen[0]["content"] == "A"


def test_alpaca_with_history_and_mapping():
    row = {"q": "Translate", "inp": "hola", "good": "hello", "bad": "bye", "history": [["hi", "hey"]]}
    spec = FORMATS["alpaca"].spec({"prompt": "q", "query": "inp", "chosen": "good", "rejected": "bad"})
    pair = convert(row, spec, "x")
    assert pair.prompt == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"},
                           {"role": "user", "content": "Translate\nhola"}]
    assert pair.chosen[0]["content"] == "hello"


def test_sharegpt_with_tags():
    row = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}],
           "chosen": {"from": "gpt", "value": "A"}, "rejected": {"from": "gpt", "value": "B"}}
    pair = convert(row, FORMATS["sharegpt"].spec(), "x")
    assert pair.prompt == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    row = {"messages": [{"role": "user", "content": "Q"}],
           "chosen": {"role": "assistant", "content": "A"}, "rejected": {"role": "assistant", "content": "B"}}
    spec = FORMATS["sharegpt"].spec({"messages": "messages"},
                      {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"})
    assert convert(row, spec, "x").chosen == [{"role": "assistant", "content": "A"}]


def test_skippable_rows_and_type_errors():
    explicit = FORMATS["explicit"].spec()
    with pytest.raises(SkipPair) as skip:
        convert({"prompt": "Q", "chosen": "  ", "rejected": "b"}, explicit, "f:3")
    assert skip.value.reason == "empty response"
    with pytest.raises(SkipPair) as skip:
        convert({"prompt": "Q", "chosen": "same", "rejected": "same"}, explicit, "f:3")
    assert skip.value.reason == "identical chosen/rejected"
    with pytest.raises(DataError, match=r"f:4: column 'chosen' should be str or list or dict, found int"):
        convert({"prompt": "Q", "chosen": 5, "rejected": "b"}, explicit, "f:4")
    with pytest.raises(DataError, match=r"f:5: column 'margin' should be a finite number, found str"):
        convert({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": "big"}, explicit, "f:5")
    with pytest.raises(DataError, match=r"f:6: column 'margin' should be a finite number, found float \('inf'\)"):
        convert({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": float("inf")}, explicit, "f:6")
    # absent or null (an empty cell of a CSV or parquet table) is no margin; NaN is refused as infinity is
    assert convert({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": None}, explicit, "f:7").margin is None
    with pytest.raises(DataError, match=r"f:8: column 'margin' should be a finite number, found float \('nan'\)"):
        convert({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": float("nan")}, explicit, "f:8")
    with pytest.raises(DataError, match=r"soft_label'=1.5 is outside"):
        convert({"prompt": "Q", "chosen": "a", "rejected": "b", "soft_label": 1.5}, explicit, "f")
