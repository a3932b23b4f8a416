"""Sources -> rows -> Pairs (and Rated responses) -> tokenized ``datasets.Dataset``s.

A ``dataset`` entry is, in this order: ``demo``, ``demo_rated``, ``demo_ranked``, ``demo_graded`` and their
``_test`` splits (built in); a
name in
``dataset_dir/dataset_info.json`` (LlamaFactory); a local file or folder (jsonl, json, parquet, csv); a Hugging Face
Hub id (optionally ``id:split``). Several entries are joined with commas and mixed: pairs and rated responses
may share one data set (see ``data/ratings.py``); the rated rows are read with the head's attributes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import pyarrow.parquet
from datasets.fingerprint import update_fingerprint
from PIL import Image

from discorm.data import demo
from discorm.data.formats import FORMATS, check_columns, convert, detect_format
from discorm.data.images import data_uri
from discorm.data.listwise import Ranked
from discorm.data.pairs import Pair
from discorm.data.ratings import Rated
from discorm.data.rows import FormatSpec, SkipPair
from discorm.data.templates import Renderer
from discorm.data.tokenize import DataStats, PairTokenizer, raise_or_count
from discorm.errors import DataError
from discorm.files import cache_root, read_json, read_utf8

logger = logging.getLogger(__name__)

FILE_TYPES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
DATASET_INFO = "dataset_info.json"
CACHE_VERSION = "4"


@dataclass(frozen=True)
class ReadOptions:
    """How the rows of a source are read: ``dataset_dir`` holds dataset_info.json; ``formatting`` (auto: detected
    from the columns); the optional per-pair label columns; at most ``max_samples`` rows per source;
    ``strict``: skippable problems are errors; ``rated_heads``: the heads that learn from rated rows, named when
    a rated row meets one that does not."""

    dataset_dir: str = "data"
    formatting: str = "auto"
    margin_column: str = "margin"
    soft_label_column: str = "soft_label"
    noise_column: str = "noise"
    max_samples: int | None = None
    strict: bool = False
    rated_heads: tuple[str, ...] = ()
    strength_scale: float | None = None

    def spec(self, name: str, **kwargs) -> FormatSpec:
        return FORMATS[name].spec(margin_column=self.margin_column, soft_label_column=self.soft_label_column,
                                  noise_column=self.noise_column, strength_scale=self.strength_scale,
                                  rated_heads=self.rated_heads, **kwargs)


# ----------------------------------------------------------------------------- reading rows
class RepeatedKey(ValueError):
    """A JSON object names a key twice (JSON readers keep one of the values silently)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json's object_pairs_hook: the object, or RepeatedKey naming the first key it repeats."""
    found = dict(pairs)
    if len(found) < len(pairs):
        seen = set()
        raise RepeatedKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return found


def _repeated(where: str, key: str) -> DataError:
    return DataError(f"{where}: the key {key!r} appears twice in one JSON object, and a JSON reader keeps one of the "
                     f"values silently. Keep one {key!r} (rename or drop the other).")


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    for number, line in enumerate(read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except RepeatedKey as err:
            raise _repeated(f"{path}:{number}", err.key) from None
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}:{number}: malformed JSON ({err.msg} at column {err.colno}); each line of a .jsonl "
                "file must be one JSON object."
            ) from None
        except RecursionError:
            raise DataError(f"{path}:{number}: the JSON is nested too deeply to read; flatten that row.") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, found {type(row).__name__}.")
        yield f"{path}:{number}", row


def _read_json(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        data = read_json(path, DataError, fix="fix the file or use .jsonl", object_pairs_hook=_unique_keys)
    except RepeatedKey as err:
        raise _repeated(str(path), err.key) from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, found {type(data).__name__}.")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {index}: expected a JSON object, found {type(row).__name__}.")
        yield f"{path} row {index}", row


def _csv_has_rows(path: Path) -> bool:
    """Whether the CSV file has a row under its header; a column named twice is an error (the CSV reader would
    read the first and rename the other)."""
    text = read_utf8(path)  # a clear error naming the line, before the CSV parser meets the bytes
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: the header names the column(s) {repeated} more than once; the CSV reader would "
                        "read the first and rename the others. Rename or drop the repeated columns.")
    return any(line.strip() for line in text.splitlines()[reader.line_num:])


def _undecoded(feature):
    """A feature with its images left as {"bytes", "path"} (their original file bytes), not decoded into pixels."""
    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if isinstance(feature, (datasets.List, datasets.Sequence)):
        return type(feature)(_undecoded(feature.feature))
    return feature


def _image_bytes(table: datasets.Dataset) -> datasets.Dataset:
    """The table with its image columns undecoded: a row's images are checked and stored as they were given."""
    features = datasets.Features({name: _undecoded(feature) for name, feature in table.features.items()})
    return table if features == table.features else table.cast(features)


def _read_table(path: Path) -> Iterator[tuple[str, dict]]:
    kind = "parquet" if path.suffix == ".parquet" else "CSV"
    if kind == "CSV" and not _csv_has_rows(path):
        return  # no rows: read_file says so (the parser's own message names neither)
    try:
        # a clear error before datasets logs its own; no rows: read_file says so
        if kind == "parquet" and pyarrow.parquet.read_metadata(path).num_rows == 0:
            return
        table = datasets.Dataset.from_parquet(str(path)) if kind == "parquet" else datasets.Dataset.from_csv(
            str(path), encoding="utf-8-sig")
    except Exception as err:  # noqa: BLE001 - the parsers raise many kinds; all mean "not a readable file"
        cause = err.__cause__ or err
        raise DataError(
            f"{path}: not a readable {kind} file ({type(cause).__name__}: {str(cause)[:200]}); check that it is a "
            f"valid {kind} file with a header of column names."
        ) from None
    for index, row in enumerate(_image_bytes(table)):
        yield f"{path} row {index}", row


def read_file(path: Path) -> list[tuple[str, dict]]:
    if path.suffix not in FILE_TYPES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FILE_TYPES)}.")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; it should hold preference pairs ({', '.join(FILE_TYPES)}).")
    reader = {".jsonl": _read_jsonl, ".json": _read_json}.get(path.suffix, _read_table)
    rows = list(reader(path))
    if not rows:
        raise DataError(f"{path}: no rows found; the file holds no preference pairs (a table needs rows under its "
                        "header).")
    return rows


def read_path(path: Path) -> list[tuple[str, dict]]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in FILE_TYPES)
        if not files:
            raise DataError(f"{path}: folder has no data files ({', '.join(FILE_TYPES)}).")
        return [row for file in files for row in read_file(file)]
    return read_file(path)


def read_hub(name: str, read: ReadOptions, split: str = "train", subset: str | None = None):
    try:
        table = datasets.load_dataset(name, subset, split=split, cache_dir=None)
    except Exception as err:  # noqa: BLE001 - the hub raises many kinds; all mean "could not load"
        raise DataError(
            f"dataset {name!r} is not a local file or folder, not in {read.dataset_dir}/{DATASET_INFO}, and "
            f"could not be loaded from the Hugging Face Hub ({type(err).__name__}: {str(err)[:200]})."
        ) from None
    return [(f"{name} row {index}", row) for index, row in enumerate(_image_bytes(table))]


def _dataset_info(read: ReadOptions) -> dict | None:
    file = Path(read.dataset_dir, DATASET_INFO)
    if not file.is_file():
        return None
    try:
        info = read_json(file, DataError, object_pairs_hook=_unique_keys)
    except RepeatedKey as err:
        raise _repeated(str(file), err.key) from None
    if not isinstance(info, dict):
        raise DataError(f"{file}: expected an object of data set entries, found {type(info).__name__}.")
    return info


def _info_entry(entry, where: str, read: ReadOptions) -> tuple[dict, FormatSpec]:
    """One dataset_info.json entry, checked -> (entry, FormatSpec)."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with file_name, ranking, formatting, columns; found "
                        f"{type(entry).__name__}.")
    formatting = entry.get("formatting", "alpaca")
    if not isinstance(formatting, str) or formatting not in FORMATS:
        raise DataError(f"{where}: formatting {formatting!r} is not one of {', '.join(FORMATS)}.")
    if not entry.get("ranking", False) and FORMATS[formatting].kind != "rated":
        raise DataError(f"{where} is not a ranking data set; a reward model needs `\"ranking\": true` pairs "
                        "(or `\"formatting\": \"rated\"` rows, for a head that learns from ratings).")
    for key in ("columns", "tags"):
        value = entry.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise DataError(f"{where}: {key!r} must map names to column names (strings), found {value!r:.80}.")
    for key in ("file_name", "hf_hub_url"):
        if key in entry and not isinstance(entry[key], str):
            raise DataError(f"{where}: {key!r} must be a string, found {entry[key]!r:.80}.")
    return entry, read.spec(formatting, columns=entry.get("columns", {}), tags=entry.get("tags", {}),
                            base_dir=str(Path(read.dataset_dir).resolve()))


def read_source(name: str, read: ReadOptions, eval_split: bool = False):
    """One ``dataset`` entry -> (rows, FormatSpec or None for auto-detection)."""
    base = name.removesuffix("_test")
    if base in demo.BUILTIN:
        rows = demo.BUILTIN[base]("test" if name.endswith("_test") or eval_split else "train")
        spec = read.spec(demo.BUILTIN_FORMATS.get(base, "explicit"))
        spec.strength_scale = spec.strength_scale or demo.BUILTIN_STRENGTH_SCALE
        return [(f"{base} row {i}", row) for i, row in enumerate(rows)], spec
    info = _dataset_info(read)
    if info is not None and name in info:
        where = f"{read.dataset_dir}/{DATASET_INFO}[{name!r}]"
        entry, spec = _info_entry(info[name], where, read)
        if "file_name" in entry:
            path = Path(read.dataset_dir, entry["file_name"])
            if not path.exists():
                raise DataError(f"{where}: file_name {str(path)!r} does not exist.")
            return read_path(path), spec
        if "hf_hub_url" in entry:
            return read_hub(entry["hf_hub_url"], read, entry.get("split", "train"), entry.get("subset")), spec
        raise DataError(f"{where}: needs a `file_name` or an `hf_hub_url`.")
    path = _local_path(name, read)
    if path is not None:
        return read_path(path), None
    if info is not None and "/" not in name:
        raise DataError(
            f"dataset {name!r} is not in {read.dataset_dir}/{DATASET_INFO} and is not a file; known "
            f"names: {', '.join(sorted(info))}."
        )
    if "/" not in name or Path(name).suffix in FILE_TYPES or name.startswith(("/", ".", "~")):
        raise DataError(
            f"dataset {name!r} not found: it is not 'demo', not a file or folder (looked in . and "
            f"{read.dataset_dir}/), and no {DATASET_INFO} is there. Check the path."
        )
    hub, _, split = name.partition(":")
    return read_hub(hub, read, split or ("test" if eval_split else "train")), None


def _local_path(name: str, read: ReadOptions) -> Path | None:
    """A ``dataset`` entry's file or folder, as given or under ``dataset_dir``; None when it is neither."""
    return next((path for path in (Path(name), Path(read.dataset_dir, name)) if path.exists()), None)


def image_dir(name: str, read: ReadOptions) -> str | None:
    """Where a source's relative image paths are read from: a data file's folder, a data folder itself; None (the
    working directory) for other sources."""
    path = _local_path(name, read)
    if path is None:
        return None
    return str((path if path.is_dir() else path.parent).resolve())


# ----------------------------------------------------------------------------- pairs
def load_pairs(names: str, read: ReadOptions, stats: DataStats, eval_split: bool = False,
               attributes: tuple = ()) -> list[Pair | Rated | Ranked]:
    """Every row of every source as a Pair, in rated sources a Rated response (read with ``attributes``), in
    listwise sources a Ranked list."""
    pairs = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        rows, spec = read_source(name, read, eval_split)
        if read.max_samples:
            rows = rows[: read.max_samples]
        pairs += [pair for _, pair in pairs_from_rows(rows, spec, name, read, stats, attributes)]
    return pairs


def pairs_from_rows(rows: list[tuple[str, dict]], spec: FormatSpec | None, where: str, read: ReadOptions,
                    stats: DataStats, attributes: tuple = ()) -> Iterator[tuple[dict, Pair | Rated | Ranked]]:
    """(row, Pair) for every usable row of one source (``spec`` None: detected from the columns), (row, Rated)
    in a rated source, read with the head's ``attributes``, (row, Ranked) in a listwise one; skipped rows are
    counted in ``stats``."""
    if spec is None:
        spec = read.spec(detect_format(list(rows[0][1]), where) if read.formatting == "auto" else read.formatting,
                         base_dir=image_dir(where, read))
    spec = replace(spec, attributes=tuple(attributes))
    check_columns(list(rows[0][1]), spec, where)
    kind = FORMATS[spec.name].kind
    for row_where, row in rows:
        stats.read += 1
        stats.rated += kind == "rated"
        stats.lists += kind == "list"
        try:
            pair = convert(row, spec, row_where)
        except SkipPair as skip:
            raise_or_count(stats, skip.reason, str(skip), read.strict)
            continue
        except KeyError as err:
            raise DataError(f"{row_where}: missing column {err}; columns in this row: {sorted(row)}.") from None
        yield row, pair


PAIR_FIELDS = ("chosen", "rejected", "margin", "soft_label", "noise", "strength", "tie")
VOTE_COLUMNS = ("votes_chosen", "votes_tie", "votes_rejected")


def _image_text(source) -> str:
    """An image source as the data set stores it: a path or data URI as it is, a PIL image as a PNG data URI."""
    return data_uri(source) if isinstance(source, Image.Image) else source


def _record(pair: Pair | Rated | Ranked) -> dict:
    """A Pair, Rated response or Ranked list as one row of the raw data set (the same columns for all); ``images``:
    the prompt's image sources (paths, data URIs), None for a text row."""
    chat = pair.meta.get("chat")  # the template's options as a JSON text: rows' tools differ in shape
    images = pair.meta.get("images")
    record = {"prompt": pair.prompt, "source": pair.meta.get("source", ""), "chat": json.dumps(chat) if chat else None,
              "images": [_image_text(source) for source in images] if images else None,
              "response": None, "scores": None, "responses": None, "levels": None, "votes": None,
              **dict.fromkeys(PAIR_FIELDS + VOTE_COLUMNS)}
    if isinstance(pair, Rated):
        record.update(response=pair.response, scores=pair.scores)
    elif isinstance(pair, Ranked):
        record.update(responses=pair.responses, levels=pair.levels, votes=pair.votes)
    else:
        record.update({key: getattr(pair, key) for key in PAIR_FIELDS})
        record.update(dict(zip(VOTE_COLUMNS, pair.votes or (None,) * 3)))
    return record


_IDS = datasets.Sequence(datasets.Value("int32"))
TOKENIZED = {"prompt_ids": _IDS, "chosen_ids": _IDS, "rejected_ids": _IDS, "response_ids": _IDS,
             "responses_ids": datasets.Sequence(_IDS),
             "length": datasets.Value("int32"), "truncated": datasets.Value("bool"),
             "dropped": datasets.Value("string"), "lengths": _IDS, "pair_tokens": datasets.Value("int64"),
             "padded_tokens": datasets.Value("int64")}


def tokenized_dataset(names: str, tokenizer, renderer: Renderer, cutoff_len: int, read: ReadOptions,
                      eval_split: bool = False, attributes: tuple = (), num_proc: int | None = None,
                      overwrite_cache: bool = False, vision=None) -> tuple[datasets.Dataset, DataStats]:
    """Read and convert one comma-separated ``dataset`` value, then tokenize it with ``datasets.map`` (``num_proc``
    processes), cached under the fingerprint datasets gives the rows and the tokenizer. ``attributes``: the
    head's rated attributes (see ``data/ratings.py``); empty for heads that learn from pairs only. ``vision``: a
    vision-language model's image inputs (``data/vision.py``), which expand the prompts' images into tokens."""
    stats = DataStats()
    pairs = load_pairs(names, read, stats, eval_split, attributes)
    if not pairs:
        raise DataError(f"{names}: no usable pairs remain. {stats.summary(names)}")
    raw = datasets.Dataset.from_list([_record(pair) for pair in pairs])
    encode = PairTokenizer(tokenizer, renderer, cutoff_len, read.strict, vision)
    key = {"version": CACHE_VERSION, "tokenizer": getattr(tokenizer, "name_or_path", ""), "vocab": len(tokenizer),
           "template": renderer.name, "chat_template": renderer.chat_template, "cutoff_len": cutoff_len,
           "reasoning": renderer.reasoning, "chat_template_kwargs": renderer.template_kwargs,
           "strict": read.strict, "vision": vision and type(vision.processor).__name__}
    fingerprint = update_fingerprint(raw._fingerprint, encode.encode_record, key)
    cache = cache_root() / "datasets" / f"{fingerprint}.arrow"
    cache.parent.mkdir(parents=True, exist_ok=True)
    removed = ["prompt", "chat", "chosen", "rejected", "response", "responses"]
    features = datasets.Features({k: v for k, v in raw.features.items() if k not in removed} | TOKENIZED)
    tokenized = raw.map(encode.encode_record, num_proc=num_proc if num_proc and num_proc > 1 else None,
                        remove_columns=removed, features=features, new_fingerprint=fingerprint,
                        cache_file_name=str(cache), load_from_cache_file=not overwrite_cache, desc="Tokenizing")
    table = tokenized.data  # whole Arrow columns: far faster than reading row by row
    dropped = table.column("dropped").to_pylist()
    keep = [reason is None for reason in dropped]
    stats.truncated += sum(table.column("truncated").to_pylist())
    stats.dropped.update(Counter(reason for reason in dropped if reason))
    stats.lengths += [n for lengths, k in zip(table.column("lengths").to_pylist(), keep) if k for n in lengths]
    stats.pair_tokens += sum(n for n, k in zip(table.column("pair_tokens").to_pylist(), keep) if k)
    stats.padded_tokens += sum(n for n, k in zip(table.column("padded_tokens").to_pylist(), keep) if k)
    kept = tokenized if all(keep) else tokenized.select([i for i, k in enumerate(keep) if k])
    optional = ("images", "margin", "soft_label", "noise", "scores", "response_ids", "chosen_ids", "rejected_ids",
                "strength", "tie", *VOTE_COLUMNS, "responses_ids", "levels", "votes")
    kept_table = kept.with_format("arrow")[:]
    empty = [c for c in optional if c in table.column_names and kept_table.column(c).null_count == len(kept_table)]
    kept = kept.remove_columns(["truncated", "dropped", "lengths", "pair_tokens", "padded_tokens", *empty])
    if not len(kept):
        raise DataError(f"{names}: no usable pairs remain. {stats.summary(names)}")
    return kept, stats


def split_kinds(dataset: datasets.Dataset | None) -> tuple[datasets.Dataset | None, datasets.Dataset | None]:
    """A tokenized data set -> (its pairs, its rated responses), None where there are none. Ranked lists are in
    neither: the Trainer's periodic evaluation reads pairs and ratings, ``discorm eval`` reads lists."""
    if dataset is None:
        return None, None
    if "response_ids" not in dataset.column_names and "responses_ids" not in dataset.column_names:
        return dataset, None
    none = [None] * len(dataset)
    response, responses = (dataset[c] if c in dataset.column_names else none for c in ("response_ids", "responses_ids"))
    kind = ["rated" if r is not None else "list" if rs is not None else "pair" for r, rs in zip(response, responses)]
    rated = dataset.select([i for i, k in enumerate(kind) if k == "rated"])
    pairs = dataset.select([i for i, k in enumerate(kind) if k == "pair"])
    return (pairs if len(pairs) else None), (rated if len(rated) else None)


def split_validation(dataset: datasets.Dataset, val_size: float, seed: int, key: str = "val_size"):
    """Seeded split: a share (0 < val_size < 1) or a count (val_size >= 1) of pairs held out."""
    count = int(val_size) if val_size >= 1 else max(1, round(val_size * len(dataset)))
    if count >= len(dataset):
        raise DataError(f"{key}={val_size} leaves no training pairs out of {len(dataset)}; lower it.")
    parts = dataset.train_test_split(test_size=count, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def demo_test_split(names: str) -> str | None:
    """`demo,demo_rated` -> `demo_test,demo_rated_test`; None unless every entry is a built-in training set."""
    entries = [n.strip() for n in names.split(",") if n.strip()]
    if entries and all(n in demo.BUILTIN and not n.endswith("_test") for n in entries):
        return ",".join(f"{n}_test" for n in entries)
    return None
