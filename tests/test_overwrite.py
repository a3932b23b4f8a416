"""Nothing a user made is replaced without being asked: every command that writes (train, eval, score, export,
the benchmarks' --out) refuses a destination that holds something unless asked by name (--force,
overwrite_output_dir), checks it before loading a model, replaces only what it writes itself, and writes
atomically, so an interrupted write leaves the previous files. Also: paths that are not what a command expects
(a folder that is not a model, a file where a folder is written) end in one clear error; files with a UTF-8
byte-order mark read like any other."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from discorm import files
from discorm.cli import main
from discorm.config import DataArguments, load_args
from discorm.errors import ConfigError, DataError, DestinationError
from discorm.eval import runner
from discorm.model.reward_model import RewardModel
from discorm.serve import scoring
from discorm.serve.export import export_sequence_classification
from discorm.train.workflow import run_rm
from tests.conftest import build_datasets, build_model, user_error

ROWS = [{"prompt": f"q {i}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(8)]


def _config(tiny_llama, tmp_path, **extra) -> dict:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return {"model_name_or_path": str(tiny_llama), "dataset": str(data), "output_dir": str(tmp_path / "run"),
            "max_steps": 2, "finetuning_type": "full", "use_cpu": True, "report_to": "none", "disable_tqdm": True,
            "save_strategy": "steps", "save_steps": 1, **extra}


def _run(tiny_llama, tmp_path):
    build_model(tiny_llama).save_pretrained(tmp_path / "run")
    return tmp_path / "run"


def _tree(folder) -> dict:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hidden(folder) -> list[str]:
    """Temporary files and folders (hidden) a write left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _pairs(path, n: int = 8):
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:n]))
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: the destination checks come first."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the destination was checked")

    monkeypatch.setattr(RewardModel, "from_pretrained", load)


# ----------------------------------------------------------------------------- the rule itself (files.py)
def test_check_destination_refuses_what_holds_something_unless_forced(tmp_path):
    (tmp_path / "full.jsonl").write_text("mine")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x").write_text("")
    (tmp_path / "bare").mkdir()
    with pytest.raises(DestinationError, match=r"--output full.jsonl already exists and is not empty; .* --force"):
        files.check_destination(tmp_path / "full.jsonl", False, option="--output full.jsonl")
    with pytest.raises(DestinationError, match="pass overwrite_output_dir: true to replace the files the command"):
        files.check_destination(tmp_path / "folder", False, folder=True, flag="overwrite_output_dir: true")
    for path, folder in (("full.jsonl", False), ("folder", True), ("empty.jsonl", False), ("bare", True),
                         ("new.jsonl", False), ("new", True)):
        assert files.check_destination(tmp_path / path, path in ("full.jsonl", "folder"), folder) == tmp_path / path
    for path, folder, message in (("folder", False, "is a folder, and the command writes a file"),
                                  ("full.jsonl", True, "is a file, and the command writes a folder")):
        with pytest.raises(DestinationError, match=message):  # --force does not make a file a folder
            files.check_destination(tmp_path / path, True, folder)
    os.link(tmp_path / "full.jsonl", tmp_path / "same.jsonl")
    for reads in ([tmp_path / "full.jsonl"], [tmp_path / "same.jsonl"], [str(tmp_path / "." / "full.jsonl")]):
        with pytest.raises(DestinationError, match="which the command reads"):
            files.check_destination(tmp_path / "full.jsonl", True, reads=reads)
    assert (tmp_path / "full.jsonl").read_text() == "mine"


def test_replacing_folder_replaces_only_its_own_entries(tmp_path):
    out = tmp_path / "out"
    (out / "predictions").mkdir(parents=True)
    (out / "predictions" / "old_set.jsonl").write_text("old")
    (out / "results.json").write_text("old")
    (out / "stale.json").write_text("old")  # an earlier run's own file that this run does not write
    (out / "notes.txt").write_text("mine")
    (out / "mine").mkdir()
    (out / "mine" / "keep.txt").write_text("mine")
    with files.replacing_folder(out, ("results.json", "stale.json", "predictions")) as staged:
        (staged / "predictions").mkdir()
        (staged / "predictions" / "new_set.jsonl").write_text("new")
        (staged / "results.json").write_text("new")
    assert _tree(out) == {"predictions/new_set.jsonl": b"new", "results.json": b"new", "notes.txt": b"mine",
                          "mine/keep.txt": b"mine"}
    before = _tree(out)
    with pytest.raises(OSError, match="No space left"), files.replacing_folder(out, ("results.json",)) as staged:
        (staged / "results.json").write_text("half")
        raise OSError(28, "No space left on device")
    assert _tree(out) == before and not _hidden(tmp_path)  # no temporary folder left
    with files.replacing_folder(tmp_path / "fresh") as staged:
        (staged / "a").write_text("new")
    assert _tree(tmp_path / "fresh") == {"a": b"new"} and not _hidden(tmp_path)
    (tmp_path / "plain").mkdir()
    assert (tmp_path / "fresh").stat().st_mode == (tmp_path / "plain").stat().st_mode  # not a private temp folder


KILLED_MID_WRITE = """
import os, signal, sys
from discorm import files

def records():
    for i in range(1000):
        if i == 500:
            os.kill(os.getpid(), signal.SIGTERM)
        yield {"i": i, "text": "x" * 100}

if sys.argv[2] == "file":
    files.write_jsonl(sys.argv[1], records())
else:
    with files.replacing_folder(sys.argv[1], ("scores.jsonl",)) as staged:
        files.write_jsonl(staged / "scores.jsonl", records())
"""


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_write_killed_by_sigterm_leaves_the_previous_file(tmp_path, kind):
    target = tmp_path / ("scores.jsonl" if kind == "file" else "out")
    old = target if kind == "file" else target / "scores.jsonl"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text('{"old": true}\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_MID_WRITE), str(target), kind], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert old.read_text() == '{"old": true}\n'
    half = [p for p in tmp_path.rglob("*.tmp*") if p.is_file()]  # the killed write's partial file, hidden
    assert half and all(p.name.startswith(".") or p.parent.name.startswith(".") for p in half)
    assert 0 < len(half[0].read_text().splitlines()) <= 500  # killed mid-write, with some records on disk


# ----------------------------------------------------------------------------- train
def test_training_into_a_trained_run_is_refused_unless_asked(tiny_llama, tmp_path, capsys):
    config = _config(tiny_llama, tmp_path, eval_dataset=str(_pairs(tmp_path / "held.jsonl", 4)))
    run_rm(*load_args(config))
    weights = (tmp_path / "run" / "model.safetensors").read_bytes()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**config, "learning_rate": 0.5}))
    assert main(["train", str(path)]) == 2
    error = user_error(capsys.readouterr().err)
    assert f"output_dir={str(tmp_path / 'run')!r} already holds a trained run" in error
    assert "overwrite_output_dir: true" in error and "resume_from_checkpoint: latest" in error
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == weights  # untouched
    run_rm(*load_args({**config, "resume_from_checkpoint": "latest"}))  # continuing it is asked for
    evaluation = tmp_path / "run" / "eval"
    (evaluation / "predictions" / "other.jsonl").write_text("an earlier evaluation's set")
    (evaluation / "notes.txt").write_text("mine")
    run_rm(*load_args({**config, "learning_rate": 0.5, "overwrite_output_dir": True}))  # so is replacing it
    assert (tmp_path / "run" / "model.safetensors").read_bytes() != weights
    # the run's evaluation is the new one alone, no other set's predictions beside it; the user's file stays
    assert sorted(p.name for p in (evaluation / "predictions").iterdir()) == ["heldout.jsonl"]
    assert (evaluation / "notes.txt").read_text() == "mine" and not _hidden(tmp_path / "run")


# ----------------------------------------------------------------------------- export
def test_export_never_writes_into_its_source_or_over_files_without_force(tiny_llama, tmp_path):
    run = _run(tiny_llama, tmp_path)
    source = _tree(run)
    for into in (run, run / "export", tmp_path):
        with pytest.raises(DestinationError, match="the run directory .* being exported"):
            export_sequence_classification(str(run), str(into), dtype="bfloat16", force=True)
    assert _tree(run) == source
    (tmp_path / "busy" / "sub").mkdir(parents=True)
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    (tmp_path / "busy" / "sub" / "keep.txt").write_text("mine")
    (tmp_path / "busy" / "model-00001-of-00002.safetensors").write_text("an earlier export's shard")
    with pytest.raises(DestinationError, match="--out .*busy already exists and is not empty; .* --force"):
        export_sequence_classification(str(run), str(tmp_path / "busy"))
    export_sequence_classification(str(run), str(tmp_path / "busy"), force=True)
    written = {p.name for p in (tmp_path / "busy").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "notes.txt", "sub"} <= written
    assert "model-00001-of-00002.safetensors" not in written  # the export's own stale file, replaced
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"  # nothing else
    assert (tmp_path / "busy" / "sub" / "keep.txt").read_text() == "mine"
    assert not any(name.startswith(".") for name in written)  # no temporary folder left inside
    export_sequence_classification(str(run), str(tmp_path / "new"))  # a new folder needs nothing
    assert (tmp_path / "new" / "config.json").is_file()
    assert not _hidden(tmp_path)


def test_export_cli_names_force_and_checks_before_loading(tiny_llama, tmp_path, capsys, no_model_load):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    (tmp_path / "file").write_text("mine")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    assert "--force" in user_error(capsys.readouterr().err)
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "file"), "--force"]) == 2
    assert "is a file, and the command writes a folder" in user_error(capsys.readouterr().err)
    assert (tmp_path / "file").read_text() == "mine"


def test_an_interrupted_export_leaves_the_previous_export(tiny_llama, tmp_path, monkeypatch):
    run = _run(tiny_llama, tmp_path)
    export_sequence_classification(str(run), str(tmp_path / "out"))
    before = _tree(tmp_path / "out")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(RewardModel.from_pretrained(run).tokenizer), "save_pretrained", disk_full)  # weights
    with pytest.raises(OSError, match="No space left"):
        export_sequence_classification(str(run), str(tmp_path / "out"), force=True)
    assert _tree(tmp_path / "out") == before
    assert not _hidden(tmp_path)


# ----------------------------------------------------------------------------- score
def _score(run, inp, out, *extra) -> list[str]:
    return ["score", str(run), "--input", str(inp), "--output", str(out), *extra]


def test_score_refuses_an_existing_output_unless_forced(tiny_llama, tmp_path, capsys):
    run, pairs = _run(tiny_llama, tmp_path), _pairs(tmp_path / "pairs.jsonl", 3)
    (tmp_path / "scores.jsonl").write_text("mine\n")
    assert main(_score(run, pairs, tmp_path / "scores.jsonl")) == 2
    error = user_error(capsys.readouterr().err)
    assert f"--output {tmp_path / 'scores.jsonl'} already exists and is not empty" in error and "--force" in error
    assert (tmp_path / "scores.jsonl").read_text() == "mine\n"
    assert main(_score(run, pairs, tmp_path / "scores.jsonl", "--force")) == 0
    records = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2] and all(0 < r["p_chosen"] < 1 for r in records)


def test_score_never_writes_over_its_input_nor_into_a_folder(tmp_path, capsys, no_model_load):
    pairs = _pairs(tmp_path / "pairs.jsonl", 3)
    before = pairs.read_bytes()
    for output in (pairs, tmp_path / "." / "pairs.jsonl"):
        assert main(_score(tmp_path / "run", pairs, output, "--force")) == 2
        assert "which the command reads" in user_error(capsys.readouterr().err)
    assert pairs.read_bytes() == before
    (tmp_path / "folder").mkdir()
    assert main(_score(tmp_path / "run", pairs, tmp_path / "folder")) == 2  # found before any scoring
    assert "is a folder, and the command writes a file" in user_error(capsys.readouterr().err)


def test_an_interrupted_score_leaves_the_previous_output(tiny_llama, tmp_path, monkeypatch):
    run, pairs = _run(tiny_llama, tmp_path), _pairs(tmp_path / "pairs.jsonl", 3)
    (tmp_path / "scores.jsonl").write_text("mine\n")

    def disk_full_after_one(path, records):
        def some():
            yield records[0]
            raise OSError(28, "No space left on device")

        files.write_jsonl(path, some())

    monkeypatch.setattr(scoring, "write_jsonl", disk_full_after_one)
    with pytest.raises(OSError, match="No space left"):
        scoring.score_file(str(run), str(pairs), str(tmp_path / "scores.jsonl"), force=True)
    assert (tmp_path / "scores.jsonl").read_text() == "mine\n"
    assert not _hidden(tmp_path)


@pytest.mark.parametrize("rows, words", [
    ([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "responses": ["a", "b"]}],
     ["rows.jsonl:2", "holds ranked lists", "rows.jsonl:1) holds pairs", "one kind of row"]),
    ([{"prompt": "q", "responses": ["a", "b"]}, {"text": "hi"}],
     ["rows.jsonl:2", "holds single responses", "holds ranked lists"]),
    ([{"text": "hi"}, {"prompt": "q", "chosen": "a", "rejected": "b"}],
     ["rows.jsonl:2", "holds pairs", "holds single responses"]),
    ([{"text": "hi"}, {"question": "q"}], ["rows.jsonl:2", "expected 'text'", "found ['question']"]),
])
def test_a_score_file_mixing_row_kinds_names_the_row(tmp_path, capsys, no_model_load, rows, words):
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(_score(tmp_path / "run", tmp_path / "rows.jsonl", tmp_path / "s.jsonl")) == 2
    error = user_error(capsys.readouterr().err)
    assert all(word in error for word in words), error
    with pytest.raises(DataError):
        scoring.file_kind([(f"rows.jsonl:{i + 1}", row) for i, row in enumerate(rows)])


# ----------------------------------------------------------------------------- eval
def _eval(run, *extra, report: bool = False) -> list[str]:
    return ["eval", str(run), "--bootstrap", "100", *extra, *([] if report else ["--no-report"])]


def test_eval_writes_a_folder_of_its_own_and_never_over_training_results(tiny_llama, tmp_path, capsys):
    run, pairs = _run(tiny_llama, tmp_path), _pairs(tmp_path / "pairs.jsonl", 4)
    (run / "eval").mkdir()
    (run / "eval" / "eval_results.json").write_text("training's")
    assert main(_eval(run, "--data", f"held={pairs}")) == 0
    assert json.loads((run / "eval-held" / "eval_results.json").read_text())["sets"]["held"]["items"] == 4
    assert _tree(run / "eval") == {"eval_results.json": b"training's"}
    before = _tree(run / "eval-held")
    capsys.readouterr()
    assert main(_eval(run, "--data", f"held={pairs}")) == 2  # the same default again: refused
    error = user_error(capsys.readouterr().err)
    assert f"the output folder {run / 'eval-held'} (the default; --out chooses another) already exists" in error
    assert "--force" in error and _tree(run / "eval-held") == before
    assert main(_eval(run, "--data", f"held={pairs}", "--out", str(run / "eval"))) == 2
    assert "--force" in user_error(capsys.readouterr().err) and (run / "eval" / "eval_results.json").read_text() == (
        "training's")
    assert main(_eval(run, "--data", f"held={pairs}", "--out", str(run))) == 2  # the model folder itself
    assert "which the command reads" in user_error(capsys.readouterr().err)


def test_eval_force_replaces_the_whole_evaluation_and_nothing_else(tiny_llama, tmp_path, capsys):
    run, pairs = _run(tiny_llama, tmp_path), _pairs(tmp_path / "pairs.jsonl", 4)
    out = tmp_path / "ev"
    assert main(_eval(run, "--data", f"first={pairs}", "--data", f"second={pairs}", "--out", str(out))) == 0
    (out / "notes.txt").write_text("mine")
    assert main(_eval(run, "--data", f"third={pairs}", "--out", str(out), "--force")) == 0
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["third.jsonl"]  # no stale predictions
    assert list(json.loads((out / "eval_results.json").read_text())["sets"]) == ["third"]
    assert (out / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("mine")
    capsys.readouterr()
    assert main(_eval(run, "--data", f"p={pairs}", "--out", str(tmp_path / "file"), "--force")) == 2
    assert "is a file, and the command writes a folder" in user_error(capsys.readouterr().err)


def test_eval_checks_its_destination_before_loading(tmp_path, capsys, no_model_load):
    pairs = _pairs(tmp_path / "pairs.jsonl", 4)
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "x").write_text("")
    assert main(_eval(tmp_path / "model", "--data", f"p={pairs}", "--out", str(tmp_path / "ev"))) == 2
    assert "--force" in user_error(capsys.readouterr().err)


def test_eval_of_a_config_writes_under_output_dir_not_at_its_top(tiny_llama, tmp_path, capsys):
    run, pairs = _run(tiny_llama, tmp_path), _pairs(tmp_path / "pairs.jsonl", 4)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_text("a run's weights")
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": str(run), "dataset": str(pairs),
                                      "output_dir": str(tmp_path / "out"), "use_cpu": True}))
    assert main(["eval", str(config)]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["eval-pairs", "model.safetensors"]
    assert (tmp_path / "out" / "eval-pairs" / "report.html").is_file()
    assert main(["eval", str(config)]) == 2
    assert "--force" in user_error(capsys.readouterr().err)


def test_an_interrupted_eval_leaves_the_previous_evaluation(tiny_llama, tmp_path, monkeypatch):
    run, pairs = _run(tiny_llama, tmp_path), _pairs(tmp_path / "pairs.jsonl", 4)
    assert main(_eval(run, "--data", f"p={pairs}", "--out", str(tmp_path / "ev"))) == 0
    before = _tree(tmp_path / "ev")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "write_report", disk_full)  # after the results and predictions are written
    with pytest.raises(OSError, match="No space left"):
        main(_eval(run, "--data", f"q={pairs}", "--out", str(tmp_path / "ev"), "--force", report=True))
    assert _tree(tmp_path / "ev") == before
    assert not _hidden(tmp_path)


# ----------------------------------------------------------------------------- paths that are not what is expected
@pytest.mark.parametrize("command", [
    lambda m, t: ["score", m, "--input", str(_pairs(t / "p.jsonl")), "--output", str(t / "s.jsonl")],
    lambda m, t: ["eval", m, "--data", f"p={_pairs(t / 'p.jsonl')}", "--out", str(t / "ev")],
    lambda m, t: ["export", m, "--out", str(t / "exported")],
    lambda m, t: ["serve", m],
], ids=["score", "eval", "export", "serve"])
def test_a_folder_that_is_not_a_model_is_named(tmp_path, capsys, command):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    assert main(command(str(tmp_path / "notes"), tmp_path)) == 2
    error = user_error(capsys.readouterr().err)
    assert f"{tmp_path / 'notes'} is a folder but not a model" in error and "discorm_config.json" in error
    assert not (tmp_path / "s.jsonl").exists() and not (tmp_path / "ev").exists()


# ----------------------------------------------------------------------------- benchmarks with --out
@pytest.mark.parametrize("module", ["bench_hidden_context", "bench_overoptimization"])
def test_benchmarks_refuse_earlier_results_unless_forced(tmp_path, monkeypatch, capsys, module):
    bench = pytest.importorskip(f"benchmarks.{module}")
    (tmp_path / "results.json").write_text("{}")
    monkeypatch.setattr(sys, "argv", [module, "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as stopped:
        bench.parse_args() if module == "bench_hidden_context" else bench.main()
    assert stopped.value.code == 2 and "results.json) already exists" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == "{}"
    if module == "bench_hidden_context":
        monkeypatch.setattr(sys, "argv", [module, "--out", str(tmp_path), "--force"])
        assert bench.parse_args().force


def test_a_failed_save_leaves_the_previous_run_files(tiny_llama, tmp_path, monkeypatch):
    model = build_model(tiny_llama)
    model.save_pretrained(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with torch.no_grad():
        next(model.head.parameters()).add_(1.0)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(model.tokenizer), "save_pretrained", disk_full)  # after the weights are written
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path / "run")
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert after == before and not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".saving")]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_files_with_a_byte_order_mark_read_like_any_other(tiny_llama, tmp_path, suffix):
    if suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in ROWS)
    elif suffix == ".json":
        text = json.dumps(ROWS)
    else:
        text = "prompt,chosen,rejected\n" + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\n" for r in ROWS)
    plain, marked = tmp_path / f"plain{suffix}", tmp_path / f"marked{suffix}"
    plain.write_text(text, encoding="utf-8")
    marked.write_text(text, encoding="utf-8-sig")  # as Windows tools write it
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    tokenizer = RewardModel.from_pretrained(tiny_llama).tokenizer
    plain_rows, _, _ = build_datasets(DataArguments(dataset=str(plain)), tokenizer)
    marked_rows, _, _ = build_datasets(DataArguments(dataset=str(marked)), tokenizer)
    columns = ("prompt_ids", "chosen_ids", "rejected_ids")
    assert [[r[c] for c in columns] for r in marked_rows] == [[r[c] for c in columns] for r in plain_rows]


def test_a_config_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 0.5\n", encoding="utf-8-sig")
    assert load_args(str(path))[2].learning_rate == 0.5


def test_do_train_false_is_refused_with_the_evaluation_command(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match="discorm eval MODEL --data NAME=PATH"):
        run_rm(*load_args(_config(tiny_llama, tmp_path, do_train=False)))
