"""One model description, one encoder, one loss, keys that do what they say, no hidden state changes."""

import copy
import json
import logging
import shutil
import sys

import pytest
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from discorm.config import DataArguments, load_args
from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding, model_inputs
from discorm.data.pairs import Pair
from discorm.data.templates import Renderer
from discorm.data.tokenize import DataStats, PairTokenizer
from discorm.model.heads import CategoricalHead
from discorm.model.reward_model import RewardModel
from discorm.model.rm_config import VERSION
from discorm.train.trainer import PairwiseTrainer
from discorm.train.workflow import make_collator, metrics_fn, run_rm, setup_model
from tests.conftest import REPO, build_model

FIXTURES = REPO / "tests" / "fixtures"


def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


@pytest.mark.parametrize("name", ["v1_run_gaussian", "v1_run_categorical"])
def test_run_directory_from_version_1_loads_and_scores_identically(name, tmp_path):
    run = shutil.copytree(FIXTURES / name, tmp_path / name)
    expected = json.loads((run / "expected_scores.json").read_text())
    model = RewardModel.from_pretrained(run).eval()
    assert model.rm_config.version == VERSION and model.rm_config.template == "chatml"
    assert "variance_penalty" not in model.rm_config.head_options  # a loss option, no longer stored
    records = model.score(expected["chats"])
    for got, want in zip(records, expected["records"]):
        assert got == pytest.approx(want, abs=1e-6)
    from discorm.data.collator import pad_sequences

    ids, mask = pad_sequences(expected["ids"], 0)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask).head_params, torch.tensor(expected["head_params"]),
                                   atol=1e-6, rtol=0)
    model.save_pretrained(tmp_path / "resaved")  # written in the current version, loads again
    assert json.loads((tmp_path / "resaved" / "discorm_config.json").read_text())["version"] == VERSION
    assert RewardModel.from_pretrained(tmp_path / "resaved").score(expected["chats"]) == records


def test_model_config_rejects_unknown_and_missing_fields(tmp_path):
    from discorm.errors import ModelError
    from discorm.model.rm_config import RewardModelConfig

    (tmp_path / "discorm_config.json").write_text(json.dumps({"version": 2, "head": "scalar", "colour": "red"}))
    with pytest.raises(ModelError, match=r"unknown field\(s\) \['colour'\]"):
        RewardModelConfig.load(tmp_path)
    (tmp_path / "discorm_config.json").write_text(json.dumps({"version": 2, "pooling": "last"}))
    with pytest.raises(ModelError, match=r"missing field\(s\) \['head', 'finetuning_type'\]"):
        RewardModelConfig.load(tmp_path)
    (tmp_path / "discorm_config.json").write_text(json.dumps({"version": 99, "head": "scalar"}))
    with pytest.raises(ModelError, match="newer DiscoRM"):
        RewardModelConfig.load(tmp_path)


def test_long_pair_is_truncated_identically_by_training_and_by_score(tiny_llama, tmp_path):
    """A multi-turn pair longer than cutoff_len: `discorm score` scores the tokens training saw."""
    model = build_model(tiny_llama, "full").eval()
    from dataclasses import replace

    model.rm_config = replace(model.rm_config, cutoff_len=40)
    model.save_pretrained(tmp_path / "run")
    prompt = [_user("Tell me about volcanoes and bees " * 3), _assistant("Volcanoes erupt. " * 4),
              _user("And the moon, the heart and glaciers?")]
    chosen, rejected = [_assistant("The moon orbits the Earth " * 3)], [_assistant("no")]
    example = PairTokenizer(model.tokenizer, Renderer(model.tokenizer), 40)(
        Pair(prompt, chosen, rejected), stats := DataStats())
    assert stats.truncated == 1 and len(example["prompt_ids"]) + len(example["chosen_ids"]) <= 40
    rows = [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
    (tmp_path / "pairs.jsonl").write_text(json.dumps(rows[0]) + "\n")
    from discorm.cli import main

    assert main(["score", str(tmp_path / "run"), "--input", str(tmp_path / "pairs.jsonl"),
                 "--output", str(tmp_path / "scored.jsonl")]) == 0
    scored = json.loads((tmp_path / "scored.jsonl").read_text())
    batch = PairwiseDataCollatorWithPadding(0)([example])
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"]).scores
    assert scored["chosen"]["reward"] == pytest.approx(float(expected[0]), abs=1e-5)
    assert scored["rejected"]["reward"] == pytest.approx(float(expected[1]), abs=1e-5)
    # a single response scored alone follows the same rule (with itself as the longest response)
    loaded = RewardModel.from_pretrained(tmp_path / "run")
    single = PairTokenizer(loaded.tokenizer, Renderer(loaded.tokenizer), 40).encode(prompt, [chosen])
    from discorm.data.tokenize import Encoder

    assert Encoder.for_model(loaded).encode_item({"prompt": prompt, "response": chosen}) == (
        single.prompt_ids + single.response_ids[0])


def test_packing_false_alone_gives_padded_batches(tiny_llama):
    model = build_model(tiny_llama)
    assert isinstance(make_collator(model, DataArguments(packing=False), model.tokenizer),
                      PairwiseDataCollatorWithPadding)
    collator = make_collator(model, DataArguments(prefix_sharing=False), model.tokenizer)
    assert isinstance(collator, PackedPairCollator) and not collator.prefix_sharing
    assert make_collator(model, DataArguments(), model.tokenizer).prefix_sharing


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_mean_and_first_pooling_choose_padded_batches_with_the_real_reason(tiny_llama, pooling, caplog):
    model = build_model(tiny_llama, pooling=pooling)
    with caplog.at_level(logging.INFO, logger="discorm"):
        collator = make_collator(model, DataArguments(), model.tokenizer)
    assert isinstance(collator, PairwiseDataCollatorWithPadding)
    assert f"pooling: {pooling}" in caplog.text and "bidirectional" not in caplog.text
    assert not model._packing_checked  # no self-check was needed to decide


def test_group_by_length_applies_to_training_and_evaluation_does_not_depend_on_order(tiny_llama, tmp_path):
    rows = [{"prompt": "q", "chosen": "yes " * (i % 7 + 1), "rejected": "no", "noise": float(i % 5)}
            for i in range(16)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = load_args({"model_name_or_path": str(tiny_llama), "dataset": str(tmp_path / "d.jsonl"),
                      "group_by_length": True, "output_dir": str(tmp_path / "o"), "use_cpu": True})
    from tests.conftest import build_datasets

    model = build_model(tiny_llama, head="gaussian")
    train, _, _ = build_datasets(args[1], model.tokenizer)
    metrics = []
    for strategy in ("group_by_length", "random"):
        training_args = copy.deepcopy(args[2])
        training_args.train_sampling_strategy = strategy
        trainer = PairwiseTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=train,
                                  data_collator=PackedPairCollator(), compute_metrics=metrics_fn(model))
        assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler) == (strategy == "group_by_length")
        metrics.append(trainer.evaluate())  # grouped by length, or in data order
    assert metrics[0]["eval_accuracy"] == metrics[1]["eval_accuracy"]
    for key in ("eval_nll", "eval_ece", "eval_margin", "eval_sigma_noise_corr"):  # labels travel with their pairs
        assert metrics[0][key] == pytest.approx(metrics[1][key], abs=1e-6)


def test_run_rm_leaves_its_arguments_unchanged(tiny_llama, tmp_path):
    rows = [{"prompt": "q", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(8)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = load_args({"model_name_or_path": str(tiny_llama), "dataset": str(tmp_path / "d.jsonl"),
                      "eval_dataset": str(tmp_path / "d.jsonl"), "group_by_length": True, "do_train": True,
                      "max_steps": 1, "output_dir": str(tmp_path / "o"), "use_cpu": True, "save_strategy": "no",
                      "disable_tqdm": True, "finetuning_type": "full", "report_to": "none"})
    before = copy.deepcopy(args)
    run_rm(*args)
    for got, want in zip(args, before):
        assert got == want, type(got).__name__


def test_continuing_a_run_uses_the_current_loss_options(tiny_llama, tmp_path):
    trained = build_model(tiny_llama, "full", head="gaussian").eval()
    trained.save_pretrained(tmp_path / "run")
    _, _, training_args, ft = load_args({"output_dir": str(tmp_path / "o"), "use_cpu": True, "head": "gaussian",
                                         "variance_penalty": 2.5, "finetuning_type": "full"})
    from discorm.config import ModelArguments

    model = setup_model(ModelArguments(model_name_or_path=str(tmp_path / "run")), ft).eval()
    trainer = PairwiseTrainer(model=model, args=training_args, finetuning_args=ft,
                              data_collator=PairwiseDataCollatorWithPadding(0))
    assert trainer.loss_fn.loss_options == {"variance_penalty": 2.5}
    batch = PairwiseDataCollatorWithPadding(0)([{"prompt_ids": [5, 6], "chosen_ids": [7, 8], "rejected_ids": [9]}])
    with torch.no_grad():
        params = model(**model_inputs(batch)).head_params
        loss = trainer.compute_loss(model, batch)
    expected = model.head.pair_loss(params[:1], params[1:]).mean() + 2.5 * (params[0, 1] + params[1, 1])
    torch.testing.assert_close(loss, expected)


def test_categorical_head_honours_margins():
    """P(c > r + m) = sum_ij p_c(i) p_r(j) [1(a_i - a_j > m) + 1/2 1(a_i - a_j = m)], by a double loop."""
    torch.manual_seed(2)
    head = CategoricalHead(4, num_atoms=5, atom_range=2.0)  # atoms -2, -1, 0, 1, 2
    pc, pr = torch.randn(4, 5), torch.randn(4, 5)
    margin = torch.tensor([0.0, 1.0, 0.5, -1.0])
    p_c, p_r, atoms = pc.softmax(-1), pr.softmax(-1), torch.linspace(-2, 2, 5)
    log_p, _ = head.log_prob_pair(pc, pr, margin)
    for b in range(4):
        brute = sum(float(p_c[b, i] * p_r[b, j]) * (1.0 if atoms[i] - atoms[j] > margin[b] + 1e-6 else
                                                    0.5 if abs(atoms[i] - atoms[j] - margin[b]) < 1e-6 else 0.0)
                    for i in range(5) for j in range(5))
        assert float(log_p[b].exp()) == pytest.approx(brute, abs=1e-6)
    torch.testing.assert_close(log_p[:1], head.log_prob_pair(pc[:1], pr[:1])[0])  # margin 0 = no margin
    assert float(log_p[1]) < float(head.log_prob_pair(pc[1:2], pr[1:2])[0])  # a margin makes winning harder


def test_score_with_a_reward_mode_leaves_the_model_unchanged(tiny_llama):
    model = build_model(tiny_llama, head="gaussian").eval()
    config = copy.deepcopy(model.rm_config)
    chats = [[_user("hi"), _assistant("hello there")]]
    mean = model.score(chats)[0]
    risk = model.score(chats, reward_mode="lower_quantile", reward_alpha=0.05)[0]
    assert risk["reward_mode"] == "lower_quantile" and risk["reward"] < mean["reward"]
    assert risk["reward"] == pytest.approx(mean["mean"] - 1.6448536 * mean["sigma"], abs=1e-4)
    assert model.rm_config == config and model.score(chats)[0] == mean


# ----------------------------------------------------------------------------- layers
LOWER_LAYERS = ("discorm.model", "discorm.data")
UPPER = ("discorm.train", "discorm.eval", "discorm.serve", "discorm.config", "discorm.cli")


def _import_graph() -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """Module -> the discorm modules it imports, counting imports inside functions; and the function-local ones."""
    import ast

    root = REPO / "src"
    files = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (root / "discorm").rglob("*.py")}
    graph, local = {name: set() for name in files}, {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for target in (t for t in targets if t.split(".")[0] == "discorm"):
                while target not in files and "." in target:
                    target = target.rpartition(".")[0]
                if target in files and target != name:
                    graph[name].add(target)
                    if id(node) not in top:
                        local.setdefault(name, []).append(target)
    return graph, local


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, found, counter = {}, {}, [], [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_circles_at_module_or_package_level():
    graph, _ = _import_graph()
    assert _cycles(graph) == []
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        outside = {_package(t) for t in targets} - {_package(module)}
        packages.setdefault(_package(module), set()).update(outside)
    assert _cycles(packages) == []


def test_model_and_data_import_nothing_above_them():
    graph, _ = _import_graph()
    upward = {module: sorted(t for t in targets if _package(t) in UPPER)
              for module, targets in graph.items() if _package(module) in LOWER_LAYERS}
    assert {module: targets for module, targets in upward.items() if targets} == {}


def test_function_local_discorm_imports_only_in_the_cli():
    _, local = _import_graph()
    assert set(local) <= {"discorm.cli"}, local


# ----------------------------------------------------------------------------- one evaluation path
def test_training_evaluates_its_run_with_the_code_of_discorm_eval(tiny_llama, tmp_path, capsys):
    """eval/ in a trained run is what `discorm eval RUN --data heldout=FILE` writes: the same bytes, but for the
    time scoring took (timing.json) and the report's time stamp and speed column."""
    import re

    import yaml

    from discorm.cli import main

    rows = [{"prompt": f"q {i}", "chosen": f"yes {i % 5}", "rejected": f"no {i % 3}"} for i in range(24)]
    data, heldout = tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    heldout.write_text("".join(json.dumps(r) + "\n" for r in rows[16:]))
    run = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": str(tiny_llama), "dataset": str(data),
                                      "eval_dataset": str(heldout), "output_dir": str(run), "max_steps": 2,
                                      "finetuning_type": "full", "head": "gaussian", "use_cpu": True,
                                      "save_strategy": "no", "report_to": "none", "disable_tqdm": True}))
    assert main(["train", str(config)]) == 0
    assert main(["eval", str(run), "--data", f"heldout={heldout}", "--out", str(tmp_path / "again")]) == 0
    capsys.readouterr()
    trained = sorted(p.relative_to(run / "eval") for p in (run / "eval").rglob("*") if p.is_file())
    again = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert trained == again and {str(p) for p in trained} >= {
        "eval_results.json", "predictions/heldout.jsonl", "calibration.png", "report.html", "timing.json"}
    for name in trained:
        first, second = (run / "eval" / name).read_bytes(), (tmp_path / "again" / name).read_bytes()
        if str(name) == "report.html":  # its time stamp and the items/s it measured differ
            first, second = (re.sub(rb"\d{4}-\d\d-\d\d \d\d:\d\d UTC|<td>[\d.]+</td>", b"", f) for f in (first, second))
        if str(name) != "timing.json":
            assert first == second, name


def test_compare_reads_an_older_runs_metrics_file_and_a_discorm_eval_output(tiny_llama, tmp_path):
    """An older training run wrote flat metrics to RUN/eval_results.json: --compare evaluates that run itself; a
    `discorm eval` output (file or folder) is read as it is."""
    from discorm.eval.runner import EvalOptions, run_evaluation

    rows = [{"prompt": f"q {i}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(6)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("old", "new"):
        build_model(tiny_llama).save_pretrained(tmp_path / name)
    (tmp_path / "old" / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.5, "eval_nll": 0.7}))
    options = EvalOptions(show_progress=False, resamples=200)
    first = run_evaluation(str(tmp_path / "new"), {"p": str(data)}, tmp_path / "a", options, report=False,
                           compare=str(tmp_path / "old" / "eval_results.json"))
    assert first["compare"]["sets"]["p"]["paired_items"] == 6
    second = run_evaluation(str(tmp_path / "new"), {"p": str(data)}, tmp_path / "b", options, report=False,
                            compare=str(tmp_path / "a"))  # an earlier discorm eval output: read, not re-run
    assert second["compare"]["sets"]["p"]["other_accuracy"] == first["sets"]["p"]["accuracy"]


def test_no_name_in_tests_hides_a_standard_library_module():
    """tests/distributed_worker.py runs as a script, so tests/ comes first on its sys.path: a tests/select/ folder
    would be imported as the standard library's select by torch.distributed."""
    names = {path.name.removesuffix(".py") for path in (REPO / "tests").iterdir()}
    assert not names & set(sys.stdlib_module_names)
