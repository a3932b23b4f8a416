"""Evaluation sets: named sources -> items encoded by the model's own encoder (the tokens training saw).

An item is a prompt with K responses, the correct ones first: a preference pair is (chosen, rejected); a
RewardBench 2 row is its chosen answers then its rejected ones. Formats (``eval/formats.py``: detection, credit
rule, summaries), detected from the rows:

- ``pairs``: any pair format DiscoRM reads (``data/formats.py``), optionally with a ``subset`` column;
- ``rewardbench``: RewardBench v1 rows (``prompt``, ``chosen``, ``rejected``, ``subset`` naming RewardBench
  subsets or prior sets, optional ``id``): ties count as wrong and the section scores are computed;
- ``rewardbench2``: ``prompt``, ``chosen`` and ``rejected`` as lists of texts, ``subset``, ``id``;
- ``rated``: rated responses (``data/ratings.py``) for a head that predicts attributes; an item is one response
  with its ratings, evaluated by how well the predicted attributes follow them (``eval/rated.py``);
- ``listwise``: ranked lists (``data/listwise.py``); an item is the list, best level first, with its rank levels
  (a list labelled by votes: levels by net wins), scored by best-of-K accuracy, Kendall tau and Spearman with the
  reference ranking, and on tied responses by tie accuracy and the calibration of P(tie). A set of pairs with
  ties is read as lists of two (a tie: both at level 0; its accuracy leaves the ties out).

A source is anything ``dataset`` accepts (file, folder, dataset_info.json name, Hub id ``id:split``), or
``hub_id:*``: every split of a Hub data set, each split's name becoming the ``subset`` (how RewardBench reads its
prior sets, ``allenai/pref-test-sets:*``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import yaml

from discorm.data.listwise import Ranked
from discorm.data.loader import ReadOptions, pairs_from_rows, read_source
from discorm.data.ratings import Rated
from discorm.data.rows import Message, chat_options, to_conversation
from discorm.data.tokenize import DataStats, Encoder
from discorm.errors import ConfigError, DataError
from discorm.eval.formats import LISTWISE, RATED, EvalFormat, detect_format


@dataclass
class EvalItem:
    prompt_ids: list[int]
    response_ids: list[list[int]]  # the correct responses first
    num_correct: int
    prompt: list[Message]
    responses: list[list[Message]]
    subset: str | None = None
    item_id: str | None = None
    target: float = 1.0  # P(chosen preferred): 1, or the soft label of a pair
    noise: float | None = None
    ratings: list[float] | None = None  # a rated response: one per attribute, NaN where not rated
    levels: list[int] | None = None  # a ranked list: each response's rank level, 0 best (in item order)
    images: list | None = None  # the prompt's image sources (data/images.py), scored with it

    @property
    def key(self) -> str:
        """A content hash: the same pair in another evaluation has the same key (for paired comparisons)."""
        content = [self.prompt, self.responses, self.num_correct] + ([self.images] if self.images else [])
        text = json.dumps(content, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class EvalSet:
    name: str
    source: str
    format: EvalFormat  # written as its name
    items: list[EvalItem]
    read: int = 0
    dropped: Counter = field(default_factory=Counter)
    truncated: int = 0

    @property
    def subsets(self) -> list[str]:
        return sorted({item.subset for item in self.items if item.subset is not None})


def parse_set_specs(specs: list[str]) -> dict[str, str]:
    """``--data`` values -> {name: source}. Each is ``name=source``, a source alone (named after its file), or a
    YAML file holding a list of {name, path} entries or a {name: path} mapping."""
    sets: dict[str, str] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        if sep:
            entries = [(name.strip(), source.strip())]
        elif Path(spec).suffix in (".yaml", ".yml") and Path(spec).is_file():
            entries = _yaml_sets(Path(spec))
        else:
            entries = [(Path(spec.split(":")[0]).stem or spec, spec)]
        for name, source in entries:
            if not name or not source:
                raise ConfigError(f"--data {spec!r}: give name=path (e.g. --data hh=hh-test.jsonl).")
            if name in sets:
                raise ConfigError(f"--data: the set name {name!r} is used twice; give each set its own name=path.")
            sets[name] = source
    return sets


def _yaml_sets(path: Path) -> list[tuple[str, str]]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({err}); expected a list of {{name, path}} entries.") from None
    if isinstance(data, dict):
        return [(str(k), str(v)) for k, v in data.items()]
    if isinstance(data, list) and all(isinstance(e, dict) and {"name", "path"} <= set(e) for e in data):
        return [(str(e["name"]), str(e["path"])) for e in data]
    raise ConfigError(f"{path}: expected a list of {{name: ..., path: ...}} entries or a {{name: path}} mapping.")


def _read_all_splits(hub_id: str) -> list[tuple[str, dict]]:
    try:
        splits = datasets.load_dataset(hub_id)
    except Exception as err:  # noqa: BLE001 - the hub raises many kinds; all mean "could not load"
        raise DataError(f"could not load every split of {hub_id!r} from the Hugging Face Hub "
                        f"({type(err).__name__}: {str(err)[:200]}).") from None
    rows = []
    for split, table in splits.items():
        for index, row in enumerate(table):
            row = dict(row)
            if "subset" in row:
                row["subsubset"] = row.pop("subset")
            rows.append((f"{hub_id}[{split}] row {index}", {**row, "subset": split}))
    return rows


def _text_list(row: dict, column: str, where: str) -> list[str]:
    value = row.get(column)
    if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
        raise DataError(f"{where}: RewardBench 2 rows need {column!r} as a non-empty list of texts, found "
                        f"{str(value)[:60]!r}. Fix the row or drop it.")
    return value


def _text_list_items(rows, encoder: Encoder, stats: DataStats) -> list[EvalItem]:
    items = []
    for where, row in rows:
        stats.read += 1
        if "prompt" not in row:
            raise DataError(f"{where}: RewardBench 2 rows need a 'prompt' column; columns: {sorted(row)}.")
        chosen, rejected = _text_list(row, "chosen", where), _text_list(row, "rejected", where)
        conversations = [to_conversation({"prompt": row["prompt"], "response": text}, where)
                         for text in chosen + rejected]
        prompt = conversations[0][0]
        responses = [response for _, response in conversations]
        items.append(_encode(encoder, prompt, responses, len(chosen), row, where, stats))
    return items


def _encode(encoder: Encoder, prompt, responses, num_correct: int, row: dict, where: str, stats: DataStats,
            target: float | None = None, noise: float | None = None, images: list | None = None) -> EvalItem:
    encoded = encoder.encode(prompt, responses, where, chat_options(row, where), images)
    stats.truncated += encoded.truncated
    subset, item_id = row.get("subset"), row.get("id")
    return EvalItem(encoded.prompt_ids, encoded.response_ids, num_correct, prompt, responses,
                    None if subset is None else str(subset), None if item_id is None else str(item_id),
                    1.0 if target is None else target, noise, images=images or None)


def levels_from_votes(votes: list[list[float]], size: int) -> list[int]:
    """Rank levels from annotator votes: by net wins (wins - losses over every comparison), equal nets tied."""
    net = [0.0] * size
    for i, j, wins, _, losses in votes:
        net[int(i)] += wins - losses
        net[int(j)] += losses - wins
    distinct = sorted(set(net), reverse=True)
    return [distinct.index(value) for value in net]


def load_eval_set(name: str, source: str, encoder: Encoder, read: ReadOptions, attributes: tuple = (),
                  only_rows: set[str] | None = None) -> EvalSet:
    """Read, detect, convert and encode one named set (rated rows with the model's ``attributes``); with
    ``only_rows``, only the rows read at those places (file:line labels)."""
    if source.endswith(":*"):
        rows, spec = _read_all_splits(source[:-2]), None
    else:
        rows, spec = read_source(source, read, eval_split=True)
    if read.max_samples:
        rows = rows[: read.max_samples]
    if only_rows is not None:
        rows = [(where, row) for where, row in rows if where in only_rows]
    fmt = detect_format(rows)
    stats = DataStats()
    if fmt.text_lists:
        items = _text_list_items(rows, encoder, stats)
    else:
        items = []
        for row, pair in pairs_from_rows(rows, spec, source, read, stats, attributes):
            if isinstance(pair, Rated):
                fmt = RATED
                item = _encode(encoder, pair.prompt, [pair.response], 1, row, pair.meta["source"], stats,
                               images=pair.meta.get("images"))
                item.ratings = pair.scores
            elif isinstance(pair, Ranked):
                fmt = LISTWISE
                levels = pair.levels or levels_from_votes(pair.votes, len(pair.responses))
                order = sorted(range(len(levels)), key=levels.__getitem__)  # best level first
                item = _encode(encoder, pair.prompt, [pair.responses[i] for i in order], levels.count(0), row,
                               pair.meta["source"], stats, images=pair.meta.get("images"))
                item.levels = [levels[i] for i in order]
            else:
                item = _encode(encoder, pair.prompt, [pair.chosen, pair.rejected], 1, row, pair.meta["source"],
                               stats, pair.soft_label, pair.noise, pair.meta.get("images"))
                if pair.tie:  # neither is better: both best-ranked
                    item.num_correct, item.levels = 2, [0, 0]
            items.append(item)
        if any(item.levels == [0, 0] for item in items) and fmt is not LISTWISE:
            fmt = LISTWISE  # pairs with ties: ranked lists of two, so that the ties are evaluated as ties
            for item in items:
                item.levels = item.levels or [0, 1]
    if not items:
        raise DataError(f"{source}: no usable items remain for the evaluation set {name!r}. "
                        f"{stats.summary(name)}")
    return EvalSet(name, source, fmt, items, stats.read, stats.dropped, stats.truncated)
