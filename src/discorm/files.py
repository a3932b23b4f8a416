"""The files users make and read: UTF-8 text (a byte-order mark is allowed), JSON whose errors name the line,
and writes that replace a file only once the new one is complete (a crash leaves the previous file intact)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from discorm.errors import DataError, DiscoRMError


def cache_root() -> Path:
    """Where DiscoRM caches converted models and tokenized data (``DISCORM_HOME`` overrides)."""
    return Path(os.environ.get("DISCORM_HOME", Path.home() / ".cache" / "discorm"))


def read_utf8(path: str | Path, error: type[DiscoRMError] = DataError) -> str:
    """The file's text without a leading byte-order mark; a file that is not UTF-8 raises ``error`` naming the
    line, column and byte."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err}); check the path and its permissions.") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        start = err.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise error(
            f"{path}:{line}: byte {data[start]:#04x} at column {column} is not UTF-8 ({err.reason}); the file "
            f"must be UTF-8 text. Convert it, e.g. `iconv -f latin1 -t utf-8 {path} -o fixed{Path(path).suffix}`."
        ) from None


def read_json(path: str | Path, error: type[DiscoRMError] = DataError, fix: str = "fix the file",
              object_pairs_hook=None) -> Any:
    """A JSON file's value; malformed JSON raises ``error`` naming the line and ``fix``."""
    try:
        return json.loads(read_utf8(path, error), object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as err:
        raise error(f"{path}:{err.lineno}: malformed JSON ({err.msg}); {fix}.") from None
    except RecursionError:
        raise error(f"{path}: the JSON is nested too deeply to read; flatten it.") from None


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; once the block ends without an error it becomes ``path`` in one
    rename, so readers see the old file or the complete new one, never a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, value: Any, **kwargs) -> None:
    write_text(path, json.dumps(value, indent=2, **kwargs))


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
