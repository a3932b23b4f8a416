"""Reading user text files (data, configs, dataset_info.json): UTF-8 or a clear error naming the line."""

from __future__ import annotations

from pathlib import Path

from discorm.errors import DataError, DiscoRMError


def read_utf8(path: str | Path, error: type[DiscoRMError] = DataError) -> str:
    """The file's text; a file that is not UTF-8 raises ``error`` naming the line, column and byte."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err}); check the path and its permissions.") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise error(
            f"{path}:{line}: byte {data[err.start]:#04x} at column {column} is not UTF-8 ({err.reason}); the file "
            f"must be UTF-8 text. Convert it, e.g. `iconv -f latin1 -t utf-8 {path} -o fixed{Path(path).suffix}`."
        ) from None
