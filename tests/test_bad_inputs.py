"""A catalogue of bad inputs: config keys, data files (jsonl, json, csv, parquet, LlamaFactory folders), chat
messages, model paths, scoring inputs and HTTP requests.

Each command case runs `discorm` in-process and asserts the exit status and the key words of its one-line
message (never a traceback); each HTTP case asserts the status and the key words (never a 5xx).
"""

import json
import logging
import shutil
from dataclasses import dataclass, field

import pytest
import yaml

from discorm.cli import main
from tests.conftest import CHATML
from tests.serve.server_helpers import CHATS, served_model

GOOD_ROWS = [{"prompt": f"q {i}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(8)]
NOT_UTF8 = b"caf\xe9"  # latin-1 for "cafe" with an accent


@dataclass
class Context:
    tmp: object
    tiny: object
    run: object

    def write(self, name: str, content) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, list):
            content = "".join(json.dumps(row) + "\n" for row in content)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def train(self, *overrides: str, config: dict | None = None) -> list[str]:
        base = {"model_name_or_path": str(self.tiny), "output_dir": str(self.tmp / "out"), "use_cpu": True,
                "max_steps": 1, "finetuning_type": "full", "dataset": self.write("good.jsonl", GOOD_ROWS),
                "disable_tqdm": True, "save_strategy": "no"}
        path = self.tmp / "c.yaml"
        path.write_text(yaml.safe_dump({**base, **(config or {})}))
        return ["train", str(path), *overrides]

    def rated(self, content, name: str = "r.jsonl") -> list[str]:
        """Train a multi-objective head (helpfulness rated 1-5) on a rated file."""
        head = {"head": "multi_objective", "attributes": ["helpfulness"], "score_range": [1, 5]}
        return self.train(f"dataset={self.write(name, content)}", config=head)

    def data(self, name: str, content, *overrides: str) -> list[str]:
        return self.train(f"dataset={self.write(name, content)}", *overrides)

    def folder(self, info: dict | bytes, files: dict) -> list[str]:
        """A LlamaFactory data folder (dataset_info.json + files); trains on its first entry (or `x`)."""
        self.write("lf/dataset_info.json", info if isinstance(info, bytes) else json.dumps(info))
        for name, content in files.items():
            self.write(f"lf/{name}", content)
        name = "x" if isinstance(info, bytes) else next(iter(info))
        return self.train(f"dataset={name}", f"dataset_dir={self.tmp / 'lf'}")

    def score(self, content, *extra: str, model: str | None = None) -> list[str]:
        path = self.write("rows.jsonl", content)
        return ["score", model or str(self.run), "--input", path, "--output", str(self.tmp / "s.jsonl"), *extra]


def _parquet(ctx: Context, rows: dict) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = ctx.tmp / "d.parquet"
    pq.write_table(pa.table(rows), path)
    return str(path)


def _raising_template(ctx: Context) -> list[str]:
    model = shutil.copytree(ctx.tiny, ctx.tmp / "strict_model")
    (model / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% endfor %}" + CHATML)
    rows = [{"prompt": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}],
             "chosen": "a", "rejected": "b"}]
    return ctx.train(f"model_name_or_path={model}", f"dataset={ctx.write('sys.jsonl', rows)}")


@dataclass
class Case:
    name: str
    make: object  # Context -> argv
    words: list[str]
    code: int = 2
    marks: list = field(default_factory=list)


EXPLICIT_BOT = [{"prompt": [{"role": "bot", "content": "hi"}], "chosen": "a", "rejected": "b"}]
COMMAND_CASES = [
    # config keys and training arguments: checked before any data or model is loaded
    Case("unknown-key", lambda c: c.train("learning_rat=1e-4"), ["unknown config key", "did you mean 'learning_rate'"]),
    Case("batch-size-0", lambda c: c.train("per_device_train_batch_size=0"),
         ["per_device_train_batch_size=0", "[1, inf]"]),
    Case("negative-epochs", lambda c: c.train("num_train_epochs=-1"), ["num_train_epochs=-1", "out of range"]),
    Case("zero-epochs", lambda c: c.train("num_train_epochs=0", "max_steps=-1"), ["num_train_epochs=0 trains nothing"]),
    Case("not-a-number", lambda c: c.train("learning_rate=fast"), ["learning_rate='fast'", "not a valid float"]),
    Case("bad-choice", lambda c: c.train("head=banana"), ["head='banana' is not valid", "allowed values"]),
    Case("out-of-range", lambda c: c.train("reward_alpha=1.5"), ["reward_alpha=1.5", "out of range"]),
    Case("logging-steps-0", lambda c: c.train("logging_steps=0"), ["logging_steps=0", "above 0"]),
    Case("option-of-another-head", lambda c: c.train("num_atoms=5"), ["num_atoms does not apply to the scalar head"]),
    Case("override-form", lambda c: c.train("learning_rate"), ["'learning_rate' is not of the form key=value"]),
    Case("resume-missing", lambda c: c.train("resume_from_checkpoint=/nonexistent/checkpoint-3"),
         ["resume_from_checkpoint='/nonexistent/checkpoint-3'", "not a complete checkpoint"]),
    Case("yaml-syntax", lambda c: ["train", c.write("c.yaml", "model_name_or_path: [a\nx: 1\n")], ["invalid YAML"]),
    Case("yaml-not-utf8", lambda c: ["train", c.write("c.yaml", b"dataset: demo\noutput_dir: " + NOT_UTF8 + b"\n")],
         ["c.yaml:2", "is not UTF-8"]),
    Case("config-missing", lambda c: ["train", str(c.tmp / "none.yaml")], ["none.yaml does not exist"]),
    # data files, every format
    Case("jsonl-not-utf8", lambda c: c.data("bad.jsonl", json.dumps(GOOD_ROWS[0]).encode() + b'\n{"prompt": "'
                                             + NOT_UTF8 + b'"}\n'), ["bad.jsonl:2", "not UTF-8", "iconv"]),
    Case("json-not-utf8", lambda c: c.data("bad.json", b'[\n{"prompt": "' + NOT_UTF8 + b'"}]'),
         ["bad.json:2", "byte 0xe9", "not UTF-8"]),
    Case("csv-not-utf8", lambda c: c.data("bad.csv", b"prompt,chosen,rejected\nq,a,b\nq," + NOT_UTF8 + b",b\n"),
         ["bad.csv:3", "not UTF-8"]),
    Case("parquet-not-utf8", lambda c: c.train("dataset=" + _parquet(c, {"prompt": ["q"], "chosen": [NOT_UTF8],
                                                                          "rejected": [b"b"]})),
         ["d.parquet row 0", "column 'chosen'", "not UTF-8 text"]),
    Case("dataset-info-not-utf8", lambda c: c.folder(b'{"x": "' + NOT_UTF8 + b'"}', {}),
         ["dataset_info.json:1", "not UTF-8"]),
    Case("jsonl-malformed", lambda c: c.data("bad.jsonl", '{"prompt": "q", "chosen": "a", "rejected": "b"}\n{oops\n'),
         ["bad.jsonl:2", "malformed JSON"]),
    Case("jsonl-deeply-nested", lambda c: c.data("deep.jsonl", '{"prompt": ' + "[" * 100_000 + "\n"),
         ["deep.jsonl:1", "nested too deeply"]),
    Case("json-not-a-list", lambda c: c.data("bad.json", '{"a": 1, "b": 2}'), ["expected a JSON list of objects"]),
    Case("csv-unknown-columns", lambda c: c.data("bad.csv", "question,answer\nq,a\n"),
         ["cannot tell the data format", "['answer', 'question']"]),
    Case("parquet-corrupt", lambda c: c.data("bad.parquet", b"PAR1 this is not parquet"),
         ["not a readable parquet file"]),
    Case("empty-file", lambda c: c.data("empty.jsonl", ""), ["the file is empty"]),
    Case("data-missing", lambda c: c.train(f"dataset={c.tmp / 'nope.jsonl'}"), ["nope.jsonl' not found"]),
    Case("infinite-margin", lambda c: c.data("m.jsonl", '{"prompt": "q", "chosen": "a", "rejected": "b", '
                                                        '"margin": 1e400}\n'),
         ["m.jsonl:1", "column 'margin' should be a finite number", "inf"]),
    Case("lone-surrogate", lambda c: c.data("s.jsonl", '{"prompt": "q", "chosen": "a\\ud800", "rejected": "b"}\n'),
         ["s.jsonl:1", "lone surrogate"]),
    Case("info-not-ranking", lambda c: c.folder({"sft": {"file_name": "d.json"}}, {"d.json": "[]"}),
         ["dataset_info.json['sft'] is not a ranking data set"]),
    Case("info-bad-formatting", lambda c: c.folder({"x": {"file_name": "d.json", "ranking": True,
                                                          "formatting": "weird"}}, {"d.json": "[]"}),
         ["formatting 'weird' is not one of"]),
    Case("info-missing-file", lambda c: c.folder({"x": {"file_name": "gone.json", "ranking": True}}, {}),
         ["file_name", "gone.json", "does not exist"]),
    Case("info-entry-not-object", lambda c: c.folder({"x": ["d.json"]}, {}), ["['x']: expected an object"]),
    Case("alpaca-bad-history", lambda c: c.folder(
        {"x": {"file_name": "d.json", "ranking": True}},
        {"d.json": json.dumps([{"instruction": "q", "chosen": "a", "rejected": "b", "history": [["only one"]]}])}),
         ["each turn of column 'history'", "[user text, assistant text]"]),
    # rated data
    Case("rated-out-of-range", lambda c: c.rated([{"prompt": "q", "response": "a", "helpfulness": 3},
                                                  {"prompt": "q", "response": "b", "helpfulness": 9}]),
         ["r.jsonl:2", "helpfulness=9 is outside score_range [1, 5]", "widen score_range"]),
    Case("rated-infinite-score", lambda c: c.rated('{"prompt": "q", "response": "a", "helpfulness": 1e400}\n'),
         ["r.jsonl:1", "'helpfulness' should be a finite number", "inf"]),
    Case("rated-unknown-attribute", lambda c: c.rated([{"prompt": "q", "response": "a", "scores": {"helpfulnes": 2}}]),
         ["r.jsonl:1", "rates unknown attribute(s) ['helpfulnes']", "Add them to `attributes:`"]),
    Case("rated-csv-unknown-column", lambda c: c.rated("prompt,response,helpfulness,verbosity\nq,a,3,2\n", "r.csv"),
         ["r.csv row 0", "numeric column 'verbosity' is not a declared attribute"]),
    Case("rated-rows-pairwise-head", lambda c: c.data("r.jsonl", [{"prompt": "q", "response": "a", "score": 1}]),
         ["r.jsonl:1", "the head learns from pairs only", "(multi_objective, regression)"]),
    Case("rated-no-attributes", lambda c: c.train(config={"head": "multi_objective"}),
         ["multi_objective needs `attributes: [name, ...]`"]),
    # chat messages
    Case("unknown-role", lambda c: c.data("r.jsonl", EXPLICIT_BOT), ["r.jsonl:1", "has role 'bot'", "Rename the role"]),
    Case("unknown-role-implicit", lambda c: c.data("r.jsonl", [{
        "chosen": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}],
        "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}]),
        ["has role 'robot'", "roles must be one of"]),
    Case("unknown-role-sharegpt", lambda c: c.folder(
        {"x": {"file_name": "d.json", "ranking": True, "formatting": "sharegpt"}},
        {"d.json": json.dumps([{"conversations": [{"from": "alien", "value": "q"}],
                                "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}])}),
        ["has role 'alien'", "the tags allow"]),
    Case("message-without-content", lambda c: c.data("r.jsonl", [{"prompt": [{"role": "user"}], "chosen": "a",
                                                                   "rejected": "b"}]),
         ["need 'role' and 'content' keys"]),
    Case("message-content-not-text", lambda c: c.data("r.jsonl", [{"prompt": "q", "chosen": [
        {"role": "assistant", "content": ["a"]}], "rejected": "b"}]), ["should be str"]),
    Case("template-rejects-conversation", _raising_template,
         ["sys.jsonl:1", "chat template", "rejects this conversation", "System role not supported",
          "template: chatml"]),
    # model paths
    Case("model-path-relative", lambda c: c.train("model_name_or_path=./missing/model"),
         ["model path './missing/model' does not exist"]),
    Case("model-path-absolute", lambda c: c.train("model_name_or_path=/nonexistent/models/rm"),
         ["model path '/nonexistent/models/rm' does not exist"]),
    Case("model-folder-not-a-model", lambda c: c.train(f"model_name_or_path={c.tmp}"),
         ["could not load a tokenizer from"]),
    Case("score-model-missing", lambda c: c.score([{"text": "hi"}], model="./runs/missing"),
         ["model path './runs/missing' does not exist"]),
    Case("serve-model-missing", lambda c: ["serve", "./runs/missing"], ["model path './runs/missing' does not exist"]),
    Case("eval-model-missing", lambda c: ["eval", *c.train("model_name_or_path=../runs/gone")[1:]],
         ["model path '../runs/gone' does not exist"]),
    # scoring inputs
    Case("score-empty-text", lambda c: c.score([{"text": "hello"}, {"text": ""}]), ["rows.jsonl:2", "text is empty"]),
    Case("score-not-utf8", lambda c: c.score(b'{"text": "' + NOT_UTF8 + b'"}\n'), ["rows.jsonl:1", "not UTF-8"]),
    Case("score-unknown-columns", lambda c: c.score([{"question": "q"}]), ["expected 'text', 'messages'"]),
    Case("score-identical-pair", lambda c: c.score([{"prompt": "q", "chosen": "same", "rejected": "same"}]),
         ["identical", "two different, non-empty responses"]),
    Case("score-input-missing", lambda c: ["score", str(c.run), "--input", str(c.tmp / "none.jsonl"), "--output",
                                           str(c.tmp / "o.jsonl")], ["none.jsonl does not exist"]),
    Case("score-unknown-role", lambda c: c.score([{"messages": [{"role": "wizard", "content": "x"}]}]),
         ["rows.jsonl:1", "has role 'wizard'"]),
    Case("score-batch-size-0", lambda c: c.score([{"text": "hi"}], "--batch-size", "0"),
         ["argument --batch-size", "0 must be above 0"]),
    Case("serve-public-without-key", lambda c: ["serve", str(c.run), "--host", "0.0.0.0"],
         ["--host 0.0.0.0 exposes the reward server", "--api-key"]),
]


@pytest.fixture(scope="module")
def run_dir(tiny_llama, tmp_path_factory):
    run = tmp_path_factory.mktemp("catalogue") / "run"
    served_model(tiny_llama, run)
    return run


def _error_line(stderr: str) -> str:
    """The one line naming the error: `discorm: error: ...`, or argparse's `discorm ...: error: ...`."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("discorm") and "error: " in lines[-1], stderr[-3000:]
    assert sum(line.startswith("discorm") and "error: " in line for line in lines) == 1, stderr[-3000:]
    return lines[-1]


@pytest.mark.parametrize("case", COMMAND_CASES, ids=[c.name for c in COMMAND_CASES])
def test_bad_command_input(case, tiny_llama, run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # main() logs to this test's captured stderr
    monkeypatch.delenv("DISCORM_API_KEY", raising=False)
    argv = case.make(Context(tmp_path, tiny_llama, run_dir))
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    line = _error_line(capsys.readouterr().err)
    assert code == case.code, line
    for words in case.words:
        assert words in line, line


KEY = {"X-API-Key": "k"}
DEEP = b'{"query": ' + b"[" * 10_000
HTTP_CASES = [
    ("empty-query", "/get_reward", {"json": {"query": [""]}}, 422, ["item 0", "empty"]),
    ("whitespace-query", "/get_reward", {"json": {"query": ["ok", " \n "]}}, 422, ["item 1", "empty"]),
    ("empty-text-item", "/score", {"json": ["", CHATS[0]]}, 422, ["item 0", "empty"]),
    ("empty-message-list", "/score", {"json": [[]]}, 422, ["item 0", "message list is empty"]),
    ("malformed-json", "/score", {"content": b"{not json"}, 400, ["malformed JSON"]),
    ("not-utf8-body", "/score", {"content": b'["' + NOT_UTF8 + b'"]'}, 400, ["malformed JSON"]),
    ("deeply-nested", "/get_reward", {"content": DEEP}, 400, ["malformed JSON"]),
    ("too-many-items", "/score", {"json": CHATS * 3}, 413, ["12 inputs is over the limit of 8"]),
    ("body-too-large", "/score", {"json": [{"prompt": "x" * 30_000, "response": "y"}]}, 413, ["byte limit"]),
    ("unknown-role", "/score", {"json": [[{"role": "bot", "content": "x"}]]}, 422, ["item 0", "role 'bot'"]),
    ("content-not-text", "/score", {"json": [{"prompt": "q", "response": 5}]}, 422, ["item 0", "response"]),
    ("lone-surrogate", "/score", {"content": b'["a\\ud800b"]'}, 422, ["item 0", "lone surrogate"]),
    ("not-an-input", "/score", {"json": [42]}, 422, ["item 0", "cannot score"]),
    ("scalar-body", "/score", {"json": 5}, 422, ["expected a list of inputs"]),
    ("empty-list", "/score", {"json": []}, 422, ['"inputs" must be a non-empty list']),
    ("unknown-key", "/score", {"json": {"inputs": CHATS, "reward_mod": "mean"}}, 422, ["unknown key", "reward_mod"]),
    ("bad-reward-mode", "/score", {"json": {"inputs": CHATS, "reward_mode": "max"}}, 422, ["reward_mode", "max"]),
    ("bad-alpha", "/score", {"json": {"inputs": CHATS, "reward_alpha": 0}}, 422, ["reward_alpha=0", "out of range"]),
    ("nan-alpha", "/score", {"content": b'{"inputs": ["hi"], "reward_alpha": NaN}'}, 422, ["finite number"]),
    ("query-not-strings", "/get_reward", {"json": {"query": ["ok", {"a": 1}]}}, 422, ["list of strings", "item 1"]),
    ("query-missing", "/get_reward", {"json": {"queries": ["x"]}}, 422, ['expected {"query"']),
    ("query-not-a-list", "/get_reward", {"json": {"query": "text"}}, 422, ['"query" must be a non-empty list', "str"]),
    ("key-not-unicode", "/score", {"content": b'{"inputs": ["hi"], "k\\ud800": 1}'}, 422,
     ["key 'k\\ud800'", "not valid Unicode"]),
    ("bad-content-length", "/score", {"content": b"[]", "headers": {"content-length": "lots"}}, 400,
     ["Content-Length"]),
    ("wrong-api-key", "/score", {"json": CHATS, "headers": {"X-API-Key": "guess"}}, 401, ["API key"]),
]


@pytest.fixture(scope="module")
def client(run_dir):
    from fastapi.testclient import TestClient

    from discorm.model.reward_model import RewardModel
    from discorm.serve.server import create_app

    app = create_app(RewardModel.from_pretrained(run_dir), max_items=8, max_body_bytes=20_000, api_key="k")
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


@pytest.mark.parametrize("name, route, request_kwargs, status, words", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_bad_http_request(client, name, route, request_kwargs, status, words):
    kwargs = dict(request_kwargs)
    kwargs["headers"] = {**KEY, "content-type": "application/json", **kwargs.get("headers", {})}
    response = client.post(route, **kwargs)
    assert response.status_code == status, response.text
    for word in words:
        assert word in response.json()["error"], response.text
    assert client.post("/score", json=CHATS[:1], headers=KEY).status_code == 200  # and the server goes on


def test_the_catalogue_covers_every_kind_of_input():
    assert len(COMMAND_CASES) + len(HTTP_CASES) >= 30
    names = {case.name for case in COMMAND_CASES}
    for fragment in ("jsonl", "json-", "csv", "parquet", "info", "role", "model-path", "score-", "yaml", "epochs",
                     "rated"):
        assert any(fragment in name for name in names), fragment
