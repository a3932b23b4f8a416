"""The files users make and read: UTF-8 text (a byte-order mark is allowed), JSON whose errors name the line,
and the one destination rule of every command that writes: what is there already is replaced only when the user
asks for it by name (``check_destination``), a folder's other contents never, and every write is atomic (a
temporary file or folder, then a rename: an interrupted command leaves the previous file, or nothing)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from discorm.errors import DataError, DestinationError, DiscoRMError


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


def check_destination(path: str | Path, force: bool, folder: bool = False, reads: Iterable[str | Path] = (),
                      flag: str = "--force", option: str = "the destination") -> Path:
    """The destination rule, checked before any expensive work: ``path`` (a file, or with ``folder`` a folder) is
    never one of the paths the command ``reads``, never a path of the other kind, and when it holds something (a
    non-empty file, a folder with entries) it is written only with ``force``, which the error names as ``flag``.
    ``option`` names the path in errors (``--output out.jsonl``). Returns ``path``."""
    path = Path(path)
    for source in reads:
        if path.resolve() == Path(source).resolve() or (path.exists() and Path(source).exists()
                                                         and path.samefile(source)):
            raise DestinationError(f"{option} is {source}, which the command reads; writing it would destroy "
                                   "what it reads. Write to another path.")
    kind, other = ("folder", "file") if folder else ("file", "folder")
    if path.exists() and path.is_dir() != folder:
        raise DestinationError(f"{option} is a {other}, and the command writes a {kind} there; give the path of a "
                               f"new {kind}.")
    filled = any(path.iterdir()) if folder and path.is_dir() else path.is_file() and path.stat().st_size > 0
    if filled and not force:
        what = "the files the command writes (nothing else in the folder)" if folder else "it"
        raise DestinationError(f"{option} already exists and is not empty; choose a new path, or pass {flag} to "
                               f"replace {what}.")
    return path


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


@contextmanager
def replacing_folder(folder: str | Path, own: Iterable[str] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``folder`` to write a command's output into; once the block ends
    without an error the output takes its place: a new ``folder`` in one rename, else entry by entry, each in one
    rename, replacing the entry of the same name and removing the entries that match ``own`` (glob patterns: what
    the command writes, left by an earlier run) and that the new output lacks. Nothing else in ``folder`` is
    touched; an error inside the block leaves ``folder`` as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    staged = holder / folder.name  # made as any new folder is (mkdtemp's is private to its owner)
    try:
        staged.mkdir()
        yield staged
        if folder.is_dir():
            _move_into(staged, folder, tuple(own))
        else:
            os.replace(staged, folder)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def _move_into(staged: Path, folder: Path, own: tuple[str, ...]) -> None:
    """Move ``staged``'s entries into ``folder`` (see ``replacing_folder``). A file replaces a file in one rename;
    an old folder, or an entry of another kind, is moved aside first, and deleted once every new entry is in."""
    new = {entry.name: entry for entry in staged.iterdir()}
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", suffix=".tmp", dir=folder.parent))
    try:
        for entry in list(folder.iterdir()):
            replaced = entry.name in new and (entry.is_dir() or new[entry.name].is_dir())
            stale = entry.name not in new and any(fnmatch(entry.name, pattern) for pattern in own)
            if replaced or stale:
                os.replace(entry, old / entry.name)
        for name, entry in new.items():
            os.replace(entry, folder / name)
    finally:
        shutil.rmtree(old, ignore_errors=True)
