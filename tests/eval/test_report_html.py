"""report.html without a browser: the page rendered from templates/report.html.j2 has every section, the
Content-Security-Policy, no script, data text escaped, and every ``data-key`` cell equal to eval_results.json
(the same check as test_report_browser.py, on the parsed markup, so it runs where Chromium is missing)."""

import json
from html.parser import HTMLParser

import pytest

from discorm.eval import report as report_module
from discorm.eval.runner import EvalOptions, run_evaluation
from tests.eval.helpers import run_dir, text_scores, write_jsonl
from tests.eval.test_report_browser import NASTY, lookup, matches

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


class Page(HTMLParser):
    """Tags, attributes, the sections' ids and the text of every element tagged with a data-key."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.sections, self.cells, self.csp, self._open = [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy":
            self.csp.append(attrs["content"])
        if "data-key" in attrs:
            self._open = [attrs["data-key"], ""]
            self.cells.append(self._open)

    def handle_data(self, data):
        if self._open is not None:
            self._open[1] += data

    def handle_endtag(self, tag):
        self._open = None


@pytest.fixture(scope="module")
def evaluated(tiny_llama, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report_html")
    patch = pytest.MonkeyPatch()
    patch.setattr("discorm.eval.runner.score_items", text_scores)
    pairs = [{"prompt": f"q {i}", "chosen": f"a {i % 3}", "rejected": f"b {i % 2}", "subset": f"s{i % 2}"}
             for i in range(8)] + [{"prompt": NASTY, "chosen": NASTY + " -2", "rejected": "ok 1", "id": "<i>"}]
    v1 = [{"prompt": f"q {i}", "chosen": f"y {i % 2}", "rejected": "n 0.5", "subset": subset}
          for i, subset in enumerate(["alpacaeval-easy", "mt-bench-hard", "donotanswer", "shp"] * 2)]
    v2 = [{"id": "ref:0", "prompt": "p", "subset": "Ties", "chosen": ["c 5"], "rejected": ["r 1"]},
          {"id": "tied:0", "prompt": "p", "subset": "Ties", "chosen": ["c 4", "d 3"], "rejected": ["r 1"]},
          {"id": "9", "prompt": "p", "subset": "Math", "chosen": ["c 2"], "rejected": ["r 1", "s 3"]}]
    rated = [{"prompt": f"p {i}", "response": f"r {i % 3}", "score": float(i % 3)} for i in range(6)]
    lists = [{"prompt": f"l {i}", "responses": ["x 3", f"y {i}", "z 2"], "ranking": [0, [2, 1]] if i else [0, 2, 1]}
             for i in range(4)]
    sets = {"my <pairs>": write_jsonl(tmp_path / "p.jsonl", pairs), "rb": write_jsonl(tmp_path / "v1.jsonl", v1),
            "rb2": write_jsonl(tmp_path / "v2.jsonl", v2), "points": write_jsonl(tmp_path / "r.jsonl", rated),
            "lists": write_jsonl(tmp_path / "l.jsonl", lists)}
    run = run_dir(tiny_llama, tmp_path, head="regression")
    options = EvalOptions(show_progress=False, resamples=50)
    try:
        run_evaluation(str(run), sets, tmp_path / "first", options, report=False)
        results = run_evaluation(str(run), sets, tmp_path / "out", options, compare=str(tmp_path / "first"))
    finally:
        patch.undo()
    return results, (tmp_path / "out" / "report.html").read_text()


def test_every_section_and_every_number_of_eval_results(evaluated):
    results, html = evaluated
    page = Page()
    page.feed(html)
    assert page.sections == list(report_module.SECTIONS) and page.csp == [CSP] and "script" not in page.tags
    assert len(page.cells) > 100
    for key, text in page.cells:
        assert matches(text, lookup(results, json.loads(key))), (key, text)
    checked = {tuple(json.loads(key)) for key, _ in page.cells}
    assert {("sets", "rb", "rewardbench", "overall"), ("sets", "rb2", "rewardbench2", "overall"),
            ("sets", "rb2", "subsets", "Ties", "score"), ("rated_sets", "points", "attributes", "score", "rmse"),
            ("compare", "sets", "my <pairs>", "p_value"), ("sets", "lists", "listwise", "kendall_tau"),
            ("sets", "my <pairs>", "confidently_wrong", 0,
                                                           "reward_gap")} <= checked


def test_data_text_is_escaped_by_the_template(evaluated):
    _, html = evaluated
    assert NASTY not in html and "<script>" not in html and "my <pairs>" not in html
    assert "my &lt;pairs&gt;" in html and "id &lt;i&gt;" in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&lt;/pre&gt;&lt;b&gt;bold?&lt;/b&gt; &amp; friends" in html
