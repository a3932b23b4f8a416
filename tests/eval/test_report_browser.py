"""report.html in a real headless browser (Debian's Chromium driven by Playwright): no console errors, no network
request, every section present, every number on the page equal to eval_results.json, and data text shown
escaped. Skipped, with the reason, where Chromium or Playwright is missing."""

import json
import os
import shutil

import pytest

from discorm.eval.runner import EvalOptions, run_evaluation
from tests.eval.helpers import run_dir, text_scores, write_jsonl

NASTY = "<script>alert('x')</script></pre><b>bold?</b> & friends"
SECTIONS = ["summary", "rewardbench", "subsets", "calibration", "scores", "length", "wrong", "compare"]


def _chromium() -> str | None:
    for path in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser"),
                 shutil.which("google-chrome")):
        if path and os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install -e '.[dev]'): report.html is not checked in a browser")
    executable = _chromium()
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): report.html is not checked in a browser")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield instance
        instance.close()


def matches(text: str, value) -> bool:
    """The page shows the number (to 4 decimals), an interval as 'low – high', and a missing value as '–'."""
    if value is None or (isinstance(value, float) and value != value):
        return text == "–"
    if isinstance(value, list):
        parts = text.split(" – ")
        return len(parts) == len(value) and all(matches(p, v) for p, v in zip(parts, value))
    if isinstance(value, str):
        return text == value
    if isinstance(value, int) and not isinstance(value, bool):
        return text == str(value)
    return abs(float(text) - value) <= 5.001e-5


def lookup(results: dict, path: list):
    value = results
    for key in path:
        value = value.get(key) if isinstance(value, dict) else (value[key] if isinstance(value, list) else None)
    return value


@pytest.fixture
def report(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr("discorm.eval.runner.score_items", text_scores)
    pairs = [{"prompt": f"question {i}", "chosen": f"answer {i} {i % 3}", "rejected": f"reply {i} {1 + i % 2}",
              "subset": "easy" if i % 2 else "hard"} for i in range(10)]
    pairs.append({"prompt": "tell me " + NASTY, "chosen": NASTY + " -3", "rejected": "fine 2", "subset": "hard"})
    v1 = [{"prompt": f"q {i}", "chosen": f"yes {i % 2}", "rejected": "no 0.5", "subset": subset}
          for i, subset in enumerate(["alpacaeval-easy", "mt-bench-hard", "donotanswer", "hep-go", "shp"] * 2)]
    v2 = [{"id": "1", "prompt": "p", "subset": "Math", "chosen": ["c 2"], "rejected": ["r 1", "s 3", "t 0"]},
          {"id": "ref:0", "prompt": "p", "subset": "Ties", "chosen": ["c 5"], "rejected": ["r 1"]},
          {"id": "tied:0", "prompt": "p", "subset": "Ties", "chosen": ["c 4", "d 3"], "rejected": ["r 1"]}]
    sets = {"my <pairs>": write_jsonl(tmp_path / "pairs.jsonl", pairs), "rb": write_jsonl(tmp_path / "v1.jsonl", v1),
            "rb2": write_jsonl(tmp_path / "v2.jsonl", v2)}
    run = run_dir(tiny_llama, tmp_path)
    options = EvalOptions(show_progress=False, resamples=200)
    run_evaluation(str(run), sets, tmp_path / "first", options, report=False)
    results = run_evaluation(str(run), sets, tmp_path / "out", options, compare=str(tmp_path / "first"))
    assert results == json.loads((tmp_path / "out" / "eval_results.json").read_text())
    return tmp_path / "out"


def test_report_opens_in_chromium_and_matches_eval_results(report, browser):
    results = json.loads((report / "eval_results.json").read_text())
    page = browser.new_page()
    errors, requests, dialogs = [], [], []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requests.append(request.url)
            if not request.url.startswith(("file:", "data:")) else None)
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto((report / "report.html").as_uri())
    page.wait_for_load_state("load")

    assert errors == [] and requests == [] and dialogs == []
    assert [page.locator(f"section#{name}").count() for name in SECTIONS] == [1] * len(SECTIONS)
    headline = page.locator("section#summary tbody tr td.name").all_inner_texts()
    assert headline == list(results["sets"])  # escaped set names shown as text

    cells = page.eval_on_selector_all("[data-key]", "els => els.map(e => [e.dataset.key, e.textContent])")
    checked = {tuple(json.loads(key)) for key, _ in cells}
    for key, text in cells:
        assert matches(text, lookup(results, json.loads(key))), (key, text)
    for name in results["sets"]:
        for path in (("sets", name, "accuracy"), ("sets", name, "accuracy_ci"), ("sets", name, "ece"),
                     ("sets", name, "length", "baseline_accuracy"), ("sets", name, "length", "spearman_reward_length"),
                     ("compare", "sets", name, "p_value")):
            assert path in checked, path
    for section in ("Chat", "Chat Hard", "Safety", "Reasoning"):
        assert ("sets", "rb", "rewardbench", "sections", section) in checked
    assert ("sets", "rb", "rewardbench", "overall") in checked
    assert ("sets", "rb2", "subsets", "Ties", "score") in checked

    images = page.eval_on_selector_all("img", "els => els.map(e => [e.src.slice(0, 22), e.naturalWidth])")
    assert len(images) >= 3 * len(results["sets"]) and all(
        src == "data:image/png;base64," and width > 100 for src, width in images)
    wrong = page.inner_text("section#wrong")
    assert NASTY in wrong  # shown as text, never run
    page.close()
