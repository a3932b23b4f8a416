"""RewardModel.select on a tiny model: one scoring pass, the strategies, determinism, duplicates, held-out items and
the errors for bad pools."""

import pytest
import torch

from discorm.errors import DataError, ModelError
from discorm.model.acquisition import binary_entropy
from tests.conftest import build_model


def _pool(n=12):
    return [{"prompt": f"question {i % 5}", "responses": [f"answer {i} " * (1 + i % 3), f"other {i % 4}"], "id": i}
            for i in range(n)]


@pytest.fixture(scope="module")
def laplace_model(tiny_llama):
    model = build_model(tiny_llama, uncertainty="laplace").eval()
    hidden = model.head.covariance.shape[0]
    root = torch.randn(hidden, hidden, generator=torch.Generator().manual_seed(0))
    model.head.set_posterior(root @ root.T / hidden, 1.0)
    return model


@pytest.fixture(scope="module")
def scalar_model(tiny_llama):
    return build_model(tiny_llama).eval()


@pytest.mark.parametrize("strategy", ["bald", "entropy", "epistemic_std", "diverse_bald", "random"])
def test_select_returns_the_pool_rows_best_first_deterministically(laplace_model, strategy):
    pool = _pool()
    chosen = laplace_model.select(pool, budget=5, strategy=strategy, seed=3)
    assert len(chosen) == 5 and len({row["id"] for row in chosen}) == 5
    for row in chosen:
        assert {k: v for k, v in row.items() if k not in ("acquisition", "preferences")} == pool[row["id"]]
        (pref,) = row["preferences"]
        assert pref["a"] == 0 and pref["b"] == 1 and 0 < pref["p"] < 1 and pref["p_std"] >= 0
    if strategy != "diverse_bald":
        scores = [row["acquisition"] for row in chosen]
        assert scores == sorted(scores, reverse=True)
    if strategy == "entropy":
        assert chosen[0]["acquisition"] == pytest.approx(float(binary_entropy(torch.tensor(
            chosen[0]["preferences"][0]["p"], dtype=torch.float64))), abs=1e-9)
    assert laplace_model.select(pool, budget=5, strategy=strategy, seed=3) == chosen


def test_bald_ranks_by_what_the_model_does_not_know(laplace_model):
    """BALD of a pair is below its entropy; the top pick under BALD has the largest spread among the picks."""
    pool = _pool()
    everything = {row["id"]: row for row in laplace_model.select(pool, budget=len(pool), strategy="bald")}
    totals = {row["id"]: row["acquisition"] for row in laplace_model.select(pool, budget=len(pool),
                                                                             strategy="entropy")}
    assert all(everything[i]["acquisition"] <= totals[i] + 1e-12 for i in totals)
    assert all(everything[i]["acquisition"] > 0 for i in totals)


def test_lists_score_the_mean_over_their_pairs(laplace_model):
    pool = [{"prompt": "q", "responses": ["one", "two two", "three three three"]},
            {"prompt": "q", "response_a": "one", "response_b": "two two"}]
    lists = laplace_model.select(pool, budget=2, strategy="bald")
    by_size = {len(row["preferences"]): row for row in lists}
    assert [(p["a"], p["b"]) for p in by_size[3]["preferences"]] == [(0, 1), (0, 2), (1, 2)]
    pair = laplace_model.select([pool[1]], budget=1, strategy="bald")[0]
    assert by_size[3]["preferences"][0]["p"] == pytest.approx(pair["preferences"][0]["p"], abs=1e-5)
    scores = [laplace_model.select([{"prompt": "q", "responses": [pool[0]["responses"][i], pool[0]["responses"][j]]}],
                                   budget=1)[0]["acquisition"] for i, j in ((0, 1), (0, 2), (1, 2))]
    assert by_size[3]["acquisition"] == pytest.approx(sum(scores) / 3, abs=1e-5)


def test_select_never_returns_a_duplicate_or_an_excluded_comparison(laplace_model):
    pool = _pool(8)
    swapped = {"prompt": pool[2]["prompt"], "responses": pool[2]["responses"][::-1], "id": 100}
    pool += [dict(pool[2], id=101), swapped]
    held_out = [{"prompt": pool[5]["prompt"], "chosen": pool[5]["responses"][1], "rejected": pool[5]["responses"][0]}]
    chosen = laplace_model.select(pool, budget=7, strategy="bald", exclude=held_out)
    ids = [row["id"] for row in chosen]
    assert 5 not in ids and 101 not in ids and 100 not in ids and len(set(ids)) == 7
    with pytest.raises(DataError, match=r"budget 8 is not between 1 and the 7 distinct items the pool can offer "
                                        r"\(of 10 items \(2 repeat earlier items and 1 are excluded\)\)"):
        laplace_model.select(pool, budget=8, exclude=held_out)


def test_epistemic_strategies_are_refused_without_a_posterior(scalar_model):
    with pytest.raises(ModelError, match="uncertainty: laplace"):
        scalar_model.select(_pool(), budget=2, strategy="bald")
    chosen = scalar_model.select(_pool(), budget=3, strategy="entropy")
    assert all(row["preferences"][0]["p_std"] == 0 for row in chosen)


@pytest.mark.parametrize(("pool", "budget", "message"), [
    ([], 1, "the pool is empty"),
    (_pool(3), 4, "budget 4 is not between 1 and the 3 distinct items"),
    (_pool(3), 0, "budget 0 is not between 1"),
    ([{"prompt": "q", "chosen": "a", "rejected": "b"}], 1,
     r"pool item 0: the pool item already has a label \('chosen'"),
    ([*_pool(2), {"prompt": "q", "responses": ["a", "b"], "ranking": [0, 1]}], 1,
     r"pool item 2: the pool item already has a label \('ranking'\)"),
    ([{"prompt": "q", "responses": ["a"]}], 1, "pool item 0: 'responses' holds 1 response"),
    ([{"prompt": "q", "responses": ["a", "a"]}], 1, r"pool item 0: responses\[1\] repeats responses\[0\]"),
    ([{"prompt": "q", "text": "a"}], 1, "pool item 0: a pool item needs 'prompt' and 'responses'"),
])
def test_bad_pools_stop_naming_the_row_and_key(scalar_model, pool, budget, message):
    with pytest.raises(DataError, match=message):
        scalar_model.select(pool, budget=budget, strategy="entropy")


def test_ensemble_select_reads_its_members(tiny_llama):
    model = build_model(tiny_llama, uncertainty="ensemble", ensemble_size=3).eval()
    chosen = model.select(_pool(), budget=4, strategy="bald", seed=1)
    assert len(chosen) == 4 and all(row["acquisition"] > 0 and row["preferences"][0]["p_std"] > 0 for row in chosen)


def test_select_reads_the_pool_in_one_scoring_pass(laplace_model, monkeypatch):
    import discorm.model.selection as selection

    calls = []
    real = selection.score_groups
    monkeypatch.setattr(selection, "score_groups", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    laplace_model.select(_pool(12), budget=5, strategy="diverse_bald")
    assert calls == [12]


def test_cli_select_writes_jsonl_excludes_held_out_and_refuses_what_it_should(scalar_model, tmp_path, capsys):
    import json

    from discorm.cli import main
    from tests.conftest import user_error

    scalar_model.save_pretrained(tmp_path / "run")
    pool = _pool(6)
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    held = {"prompt": pool[0]["prompt"], "chosen": pool[0]["responses"][0], "rejected": pool[0]["responses"][1]}
    (tmp_path / "held.jsonl").write_text(json.dumps(held) + "\n")
    out = tmp_path / "next.jsonl"
    command = ["select", str(tmp_path / "run"), "--pool", str(tmp_path / "pool.jsonl"), "--out", str(out),
               "--strategy", "entropy", "--exclude", str(tmp_path / "held.jsonl")]
    assert main([*command, "--budget", "5"]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(row["id"] for row in written) == [1, 2, 3, 4, 5]
    capsys.readouterr()
    assert main([*command, "--budget", "5"]) == 2
    assert "--out " + str(out) + " already exists and is not empty" in user_error(capsys.readouterr().err)
    assert main([*command, "--budget", "4", "--force", "--seed", "1"]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == written[:4]
    assert main([*command, "--budget", "6", "--force"]) == 2
    assert "budget 6 is not between 1 and the 5 distinct items" in user_error(capsys.readouterr().err)
    assert main([*command[:-4], "--budget", "2", "--force"]) == 2  # the default strategy, bald
    assert "Train it with `uncertainty: laplace`" in user_error(capsys.readouterr().err)
    (tmp_path / "lists.jsonl").write_text(json.dumps({"prompt": "q", "responses": ["a", "b", "c"]}) + "\n")
    assert main(["select", str(tmp_path / "run"), "--pool", str(tmp_path / "lists.jsonl"), "--out",
                 str(tmp_path / "l.json"), "--budget", "1", "--strategy", "entropy", "--format", "argilla"]) == 2
    assert "lists.jsonl:1: the pool item compares 3 responses, and --format argilla is written for pairs" in user_error(
        capsys.readouterr().err)
