"""MkDocs hooks: the parts of the site that are generated from the code, so they cannot drift from it.

- ``<!-- discorm:config-reference -->`` becomes the configuration reference (``discorm.config.reference_markdown``,
  the same tables ``discorm keys`` prints);
- ``<!-- discorm:help COMMAND [SUBCOMMAND] -->`` becomes the ``--help`` text of that command, from the argument
  parser of ``discorm.cli`` (``<!-- discorm:help -->`` alone: the top-level help).
"""

from __future__ import annotations

import argparse
import os
import re

CONFIG_MARKER = "<!-- discorm:config-reference -->"
HELP_MARKER = re.compile(r"<!-- discorm:help(?P<words>(?: [\w-]+)*) -->")
HELP_WIDTH = "100"


def _subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    # argparse has no public way to reach a subcommand's parser: its _SubParsersAction holds them by name
    for word in words:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or word not in actions[0].choices:
            raise ValueError(f"discorm has no command {' '.join(words)!r} (see docs/hooks.py)")
        parser = actions[0].choices[word]
    return parser


def command_help(words: list[str]) -> str:
    """The help text of ``discorm WORDS --help``, at a fixed width."""
    from discorm.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH  # argparse wraps to the terminal width
    try:
        return _subparser(build_parser(), words).format_help().rstrip()
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def render(markdown: str) -> str:
    """The page with every marker replaced by what the code says."""
    if CONFIG_MARKER in markdown:
        from discorm.config import reference_markdown

        markdown = markdown.replace(CONFIG_MARKER, reference_markdown())

    def _help(match: re.Match) -> str:
        words = match.group("words").split()
        return f"```text\n$ {' '.join(['discorm', *words, '--help'])}\n{command_help(words)}\n```"

    return HELP_MARKER.sub(_help, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return render(markdown)
