"""The documentation site: it builds with `mkdocs build --strict`, its generated parts cover the code (every config
key, every command, every public name), and a rendered page looks like a Material page in headless Chromium
(Debian's Chromium driven by Playwright, as the report.html test does; skipped, with the reason, without them)."""

from __future__ import annotations

import ast
import functools
import http.server
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import fields
from pathlib import Path

import pytest

import discorm
from tests.eval.test_report_browser import _chromium

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
_spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
hooks = importlib.util.module_from_spec(_spec)  # docs/hooks.py: what the site build generates from the code
_spec.loader.exec_module(hooks)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]'): the site is not built")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_site_builds_strict(site):
    for page in ("index.html", "reference/configuration/index.html", "reference/api/index.html",
                 "reference/cli/index.html", "benchmarks/index.html", "changelog/index.html"):
        assert (site / page).is_file(), page


def _shipped_heads() -> dict:
    """The heads DiscoRM registers (a test module may register its own while the suite runs)."""
    from discorm.model.heads import HEADS

    return {kind: head for kind, head in HEADS.items() if head.__module__.startswith("discorm.")}


def _config_fields() -> list:
    """(class, field) of every DiscoRM config key of the argument dataclasses (the rest of TrainingArguments is
    documented by transformers)."""
    from discorm.config import DataArguments, FinetuningArguments, ModelArguments, TrainingArguments

    return [(cls, f) for cls in (ModelArguments, DataArguments, FinetuningArguments, TrainingArguments)
            for f in fields(cls) if cls is not TrainingArguments or f.name in TrainingArguments.__annotations__]


def test_search_finds_every_key_command_head_and_reward_mode(site):
    from discorm.model.rm_config import REWARD_MODES

    index = json.loads((site / "search" / "search_index.json").read_text())
    text = " ".join(doc["title"] + " " + doc["text"] for doc in index["docs"])
    options = [o.name for head in _shipped_heads().values() for o in head.options]
    words = [*(f.name for _, f in _config_fields()), *options, *_shipped_heads(), *REWARD_MODES, "train", "eval",
             "score", "export", "serve", "preview", "pull", "keys", "env", "laplace", "ensemble", "listwise"]
    missing = [word for word in words if word not in text]
    assert not missing, f"the site's search index lacks {missing}"


def _keys(markdown: str) -> list[str]:
    return [line.split("`")[1] for line in markdown.splitlines() if line.startswith("| `")]


def test_configuration_page_documents_every_key():
    """The page is generated from the dataclasses and the head registry; it fails if the marker goes, and a key
    without help is undocumented."""
    documented = set(_keys(hooks.render((DOCS / "reference" / "configuration.md").read_text())))
    for cls, f in _config_fields():
        assert f.name in documented, f"the configuration reference lacks {cls.__name__}.{f.name}"
        assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name} has no help text"
    for kind, head in _shipped_heads().items():
        for option in head.options:
            assert option.name in documented and option.help.strip(), f"head option {kind}.{option.name}"


def test_cli_page_shows_every_command():
    from discorm.cli import build_parser

    page = (DOCS / "reference" / "cli.md").read_text()
    shown = {m.group("words").strip() for m in hooks.HELP_MARKER.finditer(page)}

    def commands(parser, prefix=()):
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    nested = list(commands(sub, (*prefix, name)))
                    yield from nested or [" ".join((*prefix, name))]

    missing = sorted(set(commands(build_parser())) - shown)
    assert not missing, f"docs/reference/cli.md shows no help for: {missing}"
    assert "usage: discorm eval" in hooks.render("<!-- discorm:help eval -->")


def test_api_reference_covers_every_public_name():
    """Every name in discorm.__all__ resolves and has a `::: module.Name` entry on the API page; the page documents
    nothing that is not exported."""
    page = (DOCS / "reference" / "api.md").read_text()
    documented = set(re.findall(r"^::: ([\w.]+)$", page, flags=re.M))
    exports = ast.literal_eval(re.search(r"_EXPORTS = (\{.*?\})", (REPO / "src/discorm/__init__.py").read_text(),
                                         flags=re.S).group(1))
    public = {f"{module}.{name}" for name, module in exports.items()}
    assert set(discorm.__all__) == {"__version__", *exports}
    for name in exports:
        assert getattr(discorm, name).__name__ == name
    assert public - documented == set(), "exported but not on docs/reference/api.md"
    assert documented - public == set(), "on docs/reference/api.md but not exported from discorm"


def test_run_directory_page_lists_every_model_config_field():
    from discorm.model.rm_config import RewardModelConfig

    page = (DOCS / "reference" / "run-directory.md").read_text()
    missing = [f.name for f in fields(RewardModelConfig) if f"`{f.name}`" not in page]
    assert not missing, f"docs/reference/run-directory.md lacks discorm_config.json fields {missing}"


@pytest.fixture(scope="module")
def served(site):
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_rendered_page_in_chromium(served, tmp_path):
    """A content page shows the Material header, navigation, search box and a table of contents, uses no network
    beyond the site itself, logs no errors, and its screenshot is not blank."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install "
                                         "-e '.[dev]'): the site is not checked in a browser")
    if _chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the site is not checked in a browser")
    from PIL import Image

    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors, foreign = [], []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: foreign.append(request.url)
                if not request.url.startswith((served, "data:")) else None)
        page.goto(f"{served}/heads/")
        page.wait_for_load_state("networkidle")
        assert errors == [] and foreign == []
        header = page.locator("header.md-header")
        assert header.is_visible() and header.bounding_box()["height"] > 30
        assert page.locator(".md-header__title").inner_text().strip().startswith("DiscoRM")
        assert page.locator("nav.md-nav--primary a.md-nav__link").count() >= 15
        assert page.locator(".md-search__input").count() == 1
        assert page.locator("nav.md-nav--secondary a.md-nav__link").count() >= 5  # this page's table of contents
        assert page.locator("article.md-content__inner h1").inner_text().startswith("Heads and uncertainty")
        background = page.eval_on_selector("header.md-header", "e => getComputedStyle(e).backgroundColor")
        assert background not in ("rgba(0, 0, 0, 0)", "transparent", "rgb(255, 255, 255)"), background
        # the theme's stylesheet is applied: the content sits in a centred grid, not at the page's left edge
        assert page.locator(".md-content").bounding_box()["x"] > 150
        shot = page.screenshot(path=str(tmp_path / "heads.png"))
        browser.close()
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, "the screenshot is nearly blank"
    header_strip = image.crop((0, 0, image.width, 40)).getcolors(maxcolors=1 << 16)
    assert header_strip is not None and max(header_strip)[1] != (255, 255, 255), "no coloured header at the top"
