"""The code blocks of the documentation and what the snippet test does with each.

Every ``bash``/``sh``/``console``/``python`` block of ``README.md`` and ``docs/`` carries a marker on the line
just above it:

- ``<!-- run -->``: run by ``tests/docs/test_snippets.py``, in order with the other runnable blocks of its page,
  in a sandbox where the built-in default model is a tiny random Llama (``DISCORM_HOME``) and no network is used;
- ``<!-- skip: REASON -->``: not run; the test lists it, skipped, with its reason (a GPU, the Hub, ...);
- ``<!-- file: NAME -->``: written to the sandbox as NAME (a module the next blocks import).

Other blocks (``yaml``, ``text``, ``json``) are shown, not run. A page whose first line is
``<!-- snippets: fresh -->`` runs in a sandbox with no trained model; the others find ``saves/quickstart`` (the
quick start's run) already there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
CODE_LANGUAGES = {"bash", "sh", "shell", "console", "python", "py"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,})(?P<lang>[\w+-]*)")
MARKER = re.compile(r"^\s*<!-- (?:(?P<run>run)|skip: (?P<reason>.+?)|file: (?P<file>[\w./-]+)) -->\s*$")
FRESH = "<!-- snippets: fresh -->"


@dataclass
class Snippet:
    page: str  # relative to the repository
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    action: str | None  # run, skip, file; None: unmarked
    reason: str = ""  # skip: why
    file: str = ""  # file: the name to write

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def is_python(self) -> bool:
        return self.language in ("python", "py")


def page_snippets(path: Path) -> list[Snippet]:
    """The code blocks of one page in order, with their markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    snippets, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, fence, indent = i, match.group("fence"), match.group("indent")
        i += 1
        body = []
        while i < len(lines) and not re.match(rf"^{re.escape(indent)}{fence}\s*$", lines[i]):
            body.append(lines[i][len(indent):])
            i += 1
        i += 1
        language = match.group("lang").lower()
        if language not in CODE_LANGUAGES:
            continue
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(previous)
        action = None
        if marker:
            action = "run" if marker.group("run") else "skip" if marker.group("reason") else "file"
        snippets.append(Snippet(str(path.relative_to(REPO)), start + 1, language, "\n".join(body) + "\n", action,
                                reason=(marker.group("reason") or "") if marker else "",
                                file=(marker.group("file") or "") if marker else ""))
    return snippets


def all_snippets() -> list[Snippet]:
    return [s for path in PAGES for s in page_snippets(path)]


def is_fresh(page: str) -> bool:
    return (REPO / page).read_text(encoding="utf-8").startswith(FRESH)
