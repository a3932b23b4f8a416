"""Sources -> rows -> Pairs (and Rated responses) -> tokenized ``datasets.Dataset``s for training and evaluation.

A ``dataset`` entry is, in this order: ``demo`` / ``demo_test`` / ``demo_rated`` / ``demo_rated_test`` (built in); a
name in
``dataset_dir/dataset_info.json`` (LlamaFactory); a local file or folder (jsonl, json, parquet, csv); a Hugging Face
Hub id (optionally ``id:split``). Several entries are joined with commas and mixed: pairs and rated responses
may share one data set (see ``data/ratings.py``); the rated rows are read with the head's attributes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow.parquet
from tqdm.auto import tqdm

from discorm.config import DataArguments
from discorm.data import demo
from discorm.data.formats import FORMATS, FormatSpec, Pair, SkipPair, check_columns, detect_format, to_pair
from discorm.data.ratings import Rated, to_rated
from discorm.data.templates import Renderer
from discorm.data.tokenize import DataStats, PairTokenizer, raise_or_count
from discorm.errors import DataError
from discorm.textfile import read_utf8

logger = logging.getLogger(__name__)

FILE_TYPES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
DATASET_INFO = "dataset_info.json"
CACHE_VERSION = "2"


# ----------------------------------------------------------------------------- reading rows
def _read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    for number, line in enumerate(read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
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
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg}); fix the file or use .jsonl.") from None
    except RecursionError:
        raise DataError(f"{path}: the JSON is nested too deeply to read; flatten its rows.") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, found {type(data).__name__}.")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {index}: expected a JSON object, found {type(row).__name__}.")
        yield f"{path} row {index}", row


def _read_table(path: Path) -> Iterator[tuple[str, dict]]:
    kind = "parquet" if path.suffix == ".parquet" else "CSV"
    if kind == "CSV":
        read_utf8(path)  # a clear error naming the line, before the CSV parser meets the bytes
    try:
        if kind == "parquet":
            pyarrow.parquet.read_metadata(path)  # a clear error before datasets logs its own
        table = datasets.Dataset.from_parquet(str(path)) if kind == "parquet" else datasets.Dataset.from_csv(str(path))
    except Exception as err:  # noqa: BLE001 - the parsers raise many kinds; all mean "not a readable file"
        cause = err.__cause__ or err
        raise DataError(
            f"{path}: not a readable {kind} file ({type(cause).__name__}: {str(cause)[:200]}); check that it is a "
            f"valid {kind} file with a header of column names."
        ) from None
    for index, row in enumerate(table):
        yield f"{path} row {index}", row


def read_file(path: Path) -> list[tuple[str, dict]]:
    if path.suffix not in FILE_TYPES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FILE_TYPES)}.")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; it should hold preference pairs ({', '.join(FILE_TYPES)}).")
    reader = {".jsonl": _read_jsonl, ".json": _read_json}.get(path.suffix, _read_table)
    rows = list(reader(path))
    if not rows:
        raise DataError(f"{path}: no rows found; the file holds no preference pairs.")
    return rows


def read_path(path: Path) -> list[tuple[str, dict]]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in FILE_TYPES)
        if not files:
            raise DataError(f"{path}: folder has no data files ({', '.join(FILE_TYPES)}).")
        return [row for file in files for row in read_file(file)]
    return read_file(path)


def read_hub(name: str, data_args: DataArguments, split: str = "train", subset: str | None = None):
    try:
        table = datasets.load_dataset(name, subset, split=split, cache_dir=None)
    except Exception as err:  # noqa: BLE001 - the hub raises many kinds; all mean "could not load"
        raise DataError(
            f"dataset {name!r} is not a local file or folder, not in {data_args.dataset_dir}/{DATASET_INFO}, and "
            f"could not be loaded from the Hugging Face Hub ({type(err).__name__}: {str(err)[:200]})."
        ) from None
    return [(f"{name} row {index}", row) for index, row in enumerate(table)]


def _dataset_info(data_args: DataArguments) -> dict | None:
    file = Path(data_args.dataset_dir, DATASET_INFO)
    if not file.is_file():
        return None
    try:
        info = json.loads(read_utf8(file))
    except json.JSONDecodeError as err:
        raise DataError(f"{file}:{err.lineno}: malformed JSON ({err.msg}).") from None
    if not isinstance(info, dict):
        raise DataError(f"{file}: expected an object of data set entries, found {type(info).__name__}.")
    return info


def _info_entry(entry, where: str, spec_args: dict) -> tuple[dict, FormatSpec]:
    """One dataset_info.json entry, checked -> (entry, FormatSpec)."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with file_name, ranking, formatting, columns; found "
                        f"{type(entry).__name__}.")
    formatting = entry.get("formatting", "alpaca")
    if not entry.get("ranking", False) and formatting != "rated":
        raise DataError(f"{where} is not a ranking data set; a reward model needs `\"ranking\": true` pairs "
                        "(or `\"formatting\": \"rated\"` rows, for a head that learns from ratings).")
    if formatting not in FORMATS:
        raise DataError(f"{where}: formatting {formatting!r} is not one of {', '.join(FORMATS)}.")
    for key in ("columns", "tags"):
        value = entry.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise DataError(f"{where}: {key!r} must map names to column names (strings), found {value!r:.80}.")
    for key in ("file_name", "hf_hub_url"):
        if key in entry and not isinstance(entry[key], str):
            raise DataError(f"{where}: {key!r} must be a string, found {entry[key]!r:.80}.")
    return entry, FormatSpec(formatting, entry.get("columns", {}), entry.get("tags", {}), **spec_args)


def read_source(name: str, data_args: DataArguments, eval_split: bool = False):
    """One ``dataset`` entry -> (rows, FormatSpec or None for auto-detection)."""
    spec_args = {"margin_column": data_args.margin_column, "soft_label_column": data_args.soft_label_column,
                 "noise_column": data_args.noise_column}
    base = name.removesuffix("_test")
    if base in demo.BUILTIN:
        rows = demo.BUILTIN[base]("test" if name.endswith("_test") or eval_split else "train")
        fmt = "rated" if base == "demo_rated" else "explicit"
        return [(f"{base} row {i}", row) for i, row in enumerate(rows)], FormatSpec(fmt, **spec_args)
    info = _dataset_info(data_args)
    if info is not None and name in info:
        where = f"{data_args.dataset_dir}/{DATASET_INFO}[{name!r}]"
        entry, spec = _info_entry(info[name], where, spec_args)
        if "file_name" in entry:
            path = Path(data_args.dataset_dir, entry["file_name"])
            if not path.exists():
                raise DataError(f"{where}: file_name {str(path)!r} does not exist.")
            return read_path(path), spec
        if "hf_hub_url" in entry:
            return read_hub(entry["hf_hub_url"], data_args, entry.get("split", "train"), entry.get("subset")), spec
        raise DataError(f"{where}: needs a `file_name` or an `hf_hub_url`.")
    for path in (Path(name), Path(data_args.dataset_dir, name)):
        if path.exists():
            return read_path(path), None
    if info is not None and "/" not in name:
        raise DataError(
            f"dataset {name!r} is not in {data_args.dataset_dir}/{DATASET_INFO} and is not a file; known "
            f"names: {', '.join(sorted(info))}."
        )
    if "/" not in name or Path(name).suffix in FILE_TYPES or name.startswith(("/", ".", "~")):
        raise DataError(
            f"dataset {name!r} not found: it is not 'demo', not a file or folder (looked in . and "
            f"{data_args.dataset_dir}/), and no {DATASET_INFO} is there. Check the path."
        )
    hub, _, split = name.partition(":")
    return read_hub(hub, data_args, split or ("test" if eval_split else "train")), None


# ----------------------------------------------------------------------------- pairs
def load_pairs(names: str, data_args: DataArguments, stats: DataStats, eval_split: bool = False,
               attributes: tuple = ()) -> list[Pair | Rated]:
    """Every row of every source as a Pair or, in rated sources, a Rated response (read with ``attributes``)."""
    pairs = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        rows, spec = read_source(name, data_args, eval_split)
        if data_args.max_samples:
            rows = rows[: data_args.max_samples]
        pairs += [pair for _, pair in pairs_from_rows(rows, spec, name, data_args, stats, attributes)]
    return pairs


def pairs_from_rows(rows: list[tuple[str, dict]], spec: FormatSpec | None, where: str, data_args: DataArguments,
                    stats: DataStats, attributes: tuple = ()) -> Iterator[tuple[dict, Pair | Rated]]:
    """(row, Pair) for every usable row of one source (``spec`` None: detected from the columns), or (row, Rated)
    in a rated source, read with the head's ``attributes``; skipped rows are counted in ``stats``."""
    if spec is None:
        fmt = detect_format(list(rows[0][1]), where) if data_args.formatting == "auto" else data_args.formatting
        spec = FormatSpec(fmt, margin_column=data_args.margin_column,
                          soft_label_column=data_args.soft_label_column, noise_column=data_args.noise_column)
    check_columns(list(rows[0][1]), spec, where)
    rated = spec.name == "rated"
    for row_where, row in rows:
        stats.read += 1
        stats.rated += rated
        try:
            pair = to_rated(row, spec, attributes, row_where) if rated else to_pair(row, spec, row_where)
        except SkipPair as skip:
            raise_or_count(stats, skip.reason, str(skip), data_args.strict_data)
            continue
        except KeyError as err:
            raise DataError(f"{row_where}: missing column {err}; columns in this row: {sorted(row)}.") from None
        yield row, pair


_WORKER: PairTokenizer | None = None


def _init_worker(pair_tokenizer: PairTokenizer) -> None:
    global _WORKER
    _WORKER = pair_tokenizer


def _tokenize_chunk(chunk: list[Pair]) -> tuple[list[dict], DataStats]:
    stats = DataStats()
    return [ex for pair in chunk if (ex := _WORKER(pair, stats)) is not None], stats


def tokenize_pairs(pairs: list[Pair], pair_tokenizer: PairTokenizer, stats: DataStats, workers: int | None):
    if workers and workers > 1 and len(pairs) > 256:
        chunks = [pairs[i : i + 128] for i in range(0, len(pairs), 128)]
        examples = []
        with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (pair_tokenizer,)) as pool:
            for part, part_stats in tqdm(pool.imap(_tokenize_chunk, chunks), total=len(chunks), desc="Tokenizing"):
                examples += part
                stats.dropped.update(part_stats.dropped)
                stats.truncated += part_stats.truncated
                stats.lengths += part_stats.lengths
                stats.pair_tokens += part_stats.pair_tokens
                stats.padded_tokens += part_stats.padded_tokens
        return examples
    bar = tqdm(pairs, desc="Tokenizing", disable=len(pairs) < 2000)
    return [ex for pair in bar if (ex := pair_tokenizer(pair, stats)) is not None]


def _cache_key(names: str, data_args: DataArguments, tokenizer, renderer: Renderer, eval_split: bool,
               attributes: tuple) -> str:
    parts = [CACHE_VERSION, names, str(eval_split), repr(attributes), renderer.name, str(data_args.cutoff_len),
             str(data_args.max_samples), data_args.formatting, data_args.margin_column, data_args.soft_label_column, data_args.noise_column,
             getattr(tokenizer, "name_or_path", ""), str(len(tokenizer)), str(renderer.chat_template)]
    for name in names.split(","):
        for path in (Path(name.strip()), Path(data_args.dataset_dir, name.strip())):
            if path.exists():
                stat = path.stat()
                parts.append(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    info = Path(data_args.dataset_dir, DATASET_INFO)
    if info.is_file():
        parts.append(info.read_bytes().hex())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def tokenized_dataset(
    names: str, data_args: DataArguments, tokenizer, renderer: Renderer, eval_split: bool = False,
    attributes: tuple = (),
) -> tuple[datasets.Dataset, DataStats]:
    """Read, convert and tokenize one comma-separated ``dataset`` value, with a disk cache. ``attributes``: the
    head's rated attributes (see ``data/ratings.py``); empty for heads that learn from pairs only."""
    from discorm.model.loading import cache_root

    cache = cache_root() / "datasets" / _cache_key(names, data_args, tokenizer, renderer, eval_split, attributes)
    if cache.is_dir() and not data_args.overwrite_cache and not data_args.strict_data:
        stats = pickle.loads((cache / "stats.pkl").read_bytes())
        return datasets.load_from_disk(str(cache)), stats
    stats = DataStats()
    pairs = load_pairs(names, data_args, stats, eval_split, attributes)
    pair_tokenizer = PairTokenizer(tokenizer, renderer, data_args.cutoff_len, data_args.strict_data)
    examples = tokenize_pairs(pairs, pair_tokenizer, stats, data_args.preprocessing_num_workers)
    if not examples:
        raise DataError(f"{names}: no usable pairs remain. {stats.summary(names)}")
    columns = dict.fromkeys(key for example in examples for key in example)  # from_list keeps the first row's only
    dataset = datasets.Dataset.from_list([{**columns, **example} for example in examples])
    tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")  # one per process: launchers start several
    dataset.save_to_disk(str(tmp))
    (tmp / "stats.pkl").write_bytes(pickle.dumps(stats))
    if cache.exists():
        shutil.rmtree(cache, ignore_errors=True)
    try:
        tmp.rename(cache)
    except OSError:  # another process placed the same data first
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(cache)), stats


def split_kinds(dataset: datasets.Dataset | None) -> tuple[datasets.Dataset | None, datasets.Dataset | None]:
    """A tokenized data set -> (its pairs, its rated responses), None where there are none."""
    if dataset is None:
        return None, None
    if "response_ids" not in dataset.column_names:
        return dataset, None
    rated = dataset.filter(lambda ex: ex["response_ids"] is not None)
    pairs = dataset.filter(lambda ex: ex["response_ids"] is None)
    return (pairs if len(pairs) else None), (rated if len(rated) else None)


def split_validation(dataset: datasets.Dataset, val_size: float, seed: int, key: str = "val_size"):
    """Seeded split: a share (0 < val_size < 1) or a count (val_size >= 1) of pairs held out."""
    count = int(val_size) if val_size >= 1 else max(1, round(val_size * len(dataset)))
    if count >= len(dataset):
        raise DataError(f"{key}={val_size} leaves no training pairs out of {len(dataset)}; lower it.")
    parts = dataset.train_test_split(test_size=count, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def _demo_test_split(names: str) -> str | None:
    """`demo,demo_rated` -> `demo_test,demo_rated_test`; None unless every entry is a built-in training set."""
    entries = [n.strip() for n in names.split(",") if n.strip()]
    if entries and all(n in demo.BUILTIN and not n.endswith("_test") for n in entries):
        return ",".join(f"{n}_test" for n in entries)
    return None


def build_datasets(data_args: DataArguments, tokenizer, seed: int = 42, need_train: bool = True,
                   attributes: tuple = ()):
    """-> (train dataset or None, eval dataset or None, summary lines). ``attributes``: the head's rated
    attributes, with which rated rows are read."""
    renderer = Renderer(tokenizer, data_args.template)
    summaries = []
    train = evaluation = None
    demo_test = _demo_test_split(data_args.dataset or "")
    if not need_train and not data_args.eval_dataset and not data_args.val_size:  # evaluate on `dataset`
        name = demo_test or data_args.dataset
        evaluation, stats = tokenized_dataset(name, data_args, tokenizer, renderer, True, attributes)
        logger.info(stats.summary(f"{name} (eval)"))
        return None, evaluation, [stats.summary(f"{name} (eval)")]
    if need_train or not data_args.eval_dataset:
        train, stats = tokenized_dataset(data_args.dataset, data_args, tokenizer, renderer, False, attributes)
        summaries.append(stats.summary(data_args.dataset))
    if data_args.eval_dataset:
        evaluation, stats = tokenized_dataset(data_args.eval_dataset, data_args, tokenizer, renderer, True,
                                              attributes)
        summaries.append(stats.summary(f"{data_args.eval_dataset} (eval)"))
    elif data_args.val_size:
        train, evaluation = split_validation(train, data_args.val_size, seed)
        summaries.append(f"validation split: {len(evaluation)} pairs held out, {len(train)} for training")
    elif demo_test:
        evaluation, stats = tokenized_dataset(demo_test, data_args, tokenizer, renderer, True, attributes)
        summaries.append(stats.summary(f"{demo_test} (eval)"))
    for line in summaries:
        logger.info(line)
    return train, evaluation, summaries
