"""Training-data formats: one :class:`DataFormat` entry per format, holding everything that differs between them.

A source's format is named (config key ``formatting``, or ``formatting`` in a dataset_info.json entry) or detected
from its columns (``formatting: auto``): the first entry, in ``FORMATS`` order, whose ``detect`` columns the source
has all of. An entry gives the columns a source must have, its own column names and role tags where they differ
from the keys (LlamaFactory's), the kind of record its converter makes from a row (``pair``: a ``Pair``, see
``data/pairs.py``; ``list``: a ``Ranked`` list, ``data/listwise.py``; ``rated``: a ``Rated`` response,
``data/ratings.py``) and the help that the config and the errors show. The config's choices, its help, the
dataset_info.json check, detection and conversion read this table. Adding a format is one entry here and one
converter (for a pair format, the conversation handed to ``pairs.build_pair``); a plugin calls
:func:`register_format`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from discorm.data.annotations import from_argilla, from_label_studio
from discorm.data.listwise import Ranked, to_ranked, ultrafeedback
from discorm.data.media import attach_images
from discorm.data.pairs import (
    ALPACA_COLUMNS,
    HELPSTEER3_SCALE,
    RLAIF_V_COLUMNS,
    SHAREGPT_COLUMNS,
    SHAREGPT_TAGS,
    Pair,
    alpaca,
    explicit,
    helpsteer3,
    implicit,
    sharegpt,
)
from discorm.data.ratings import Rated, to_rated, to_rater_counts
from discorm.data.rows import FormatSpec, chat_options, describe, missing
from discorm.errors import DataError

KINDS = ("pair", "list", "rated")
MEDIA = {"videos": "videos", "video": "videos", "audios": "audio", "audio": "audio"}  # media columns not read
# (images are: data/media.py) -> what they carry


@dataclass(frozen=True)
class DataFormat:
    name: str
    kind: str  # one of KINDS: the record ``convert`` makes
    required: tuple[str, ...]  # the keys a source must have as columns (renamed by ``columns``)
    convert: Callable[[dict, FormatSpec, str], Pair | Ranked | Rated]  # (row, spec, where) -> record
    help: str  # the columns, as the config's help and the errors list them
    detect: tuple[str, ...] = ()  # auto-detected where a source has all these columns; (): only when named
    columns: dict = field(default_factory=dict)  # key -> this format's column name, where they differ
    tags: dict = field(default_factory=dict)  # role tags (sharegpt), as a dataset_info.json entry's `tags`
    strength_scale: float | None = None  # the strength scale when the config declares none

    def spec(self, columns: dict | None = None, tags: dict | None = None, strength_scale: float | None = None,
             **options) -> FormatSpec:
        """How to read one source of this format: a dataset_info.json entry's ``columns`` and ``tags`` over the
        format's own; ``options`` as FormatSpec's fields."""
        renamed = {key: column for key, column in (columns or {}).items() if column}
        return FormatSpec(self.name, {**self.columns, **renamed}, {**self.tags, **(tags or {})},
                          strength_scale=self.strength_scale if strength_scale is None else strength_scale, **options)


FORMATS: dict[str, DataFormat] = {fmt.name: fmt for fmt in (  # in the order detection tries them
    DataFormat("label_studio", "pair", ("data", "annotations"), from_label_studio,
               "a Label Studio export: data (prompt, response_a, response_b), annotations (votes)",
               detect=("data", "annotations")),
    DataFormat("argilla", "pair", ("fields", "responses"), from_argilla,  # before listwise: both have responses
               "an Argilla export: fields (prompt, response_a, response_b), responses.preference (votes)",
               detect=("fields", "responses")),
    DataFormat("listwise", "list", ("prompt", "responses"), to_ranked,
               "prompt, responses, and ranking, scores or votes", detect=("responses",)),
    DataFormat("ultrafeedback", "list", ("instruction", "completions"), ultrafeedback,
               "instruction, completions", detect=("instruction", "completions")),
    DataFormat("helpsteer3", "pair", ("context", "response1", "response2", "overall_preference"), helpsteer3,
               "context, response1, response2, overall_preference",
               detect=("response1", "response2", "overall_preference"), strength_scale=HELPSTEER3_SCALE),
    DataFormat("explicit", "pair", ("prompt", "chosen", "rejected"), explicit, "prompt, chosen, rejected[, system]",
               detect=("chosen", "rejected", "prompt")),
    DataFormat("alpaca", "pair", ("prompt", "chosen", "rejected"), alpaca,
               "LlamaFactory: instruction, input, chosen, rejected[, system, history]",
               detect=("chosen", "rejected", "instruction"), columns=ALPACA_COLUMNS),
    DataFormat("rlaif_v", "pair", ("prompt", "chosen", "rejected"), alpaca,
               "LlamaFactory's rlaif_v: question, chosen, rejected, image", detect=("chosen", "rejected", "question"),
               columns=RLAIF_V_COLUMNS),
    DataFormat("sharegpt", "pair", ("messages", "chosen", "rejected"), sharegpt,
               "LlamaFactory: conversations, chosen, rejected[, system], role names in `tags`",
               detect=("chosen", "rejected", "conversations"), columns=SHAREGPT_COLUMNS, tags=SHAREGPT_TAGS),
    DataFormat("implicit", "pair", ("chosen", "rejected"), implicit, "chosen, rejected as whole dialogues",
               detect=("chosen", "rejected")),
    DataFormat("per_rater", "rated", ("prompt", "response", "ratings"), to_rater_counts,
               "prompt, response, ratings: every rater's label or a histogram {level: count} over `levels`",
               detect=("response", "ratings")),
    DataFormat("rated", "rated", ("prompt", "response"), to_rated,
               "prompt, response, and a column per attribute or a `scores` object", detect=("response",)),
)}


def register_format(fmt: DataFormat) -> DataFormat:
    """Make a format available by its name (config key ``formatting``, dataset_info.json ``formatting``) and, where
    it has ``detect`` columns, to detection after the formats registered before it."""
    if fmt.kind not in KINDS:
        raise ValueError(f"format {fmt.name!r} has kind {fmt.kind!r}; kinds are {', '.join(KINDS)}")
    if fmt.name in FORMATS or fmt.name == "auto":
        raise ValueError(f"a data format named {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


class FormatNames(Sequence):
    """``auto``, then every registered format: the choices of ``formatting``, read from the registry at each use."""

    def __getitem__(self, index):
        return ("auto", *FORMATS)[index]

    def __len__(self) -> int:
        return 1 + len(FORMATS)


FORMATTING_CHOICES = FormatNames()


def describe_formats() -> str:
    """Every registered format with its columns, for help texts and errors."""
    return "; ".join(f"{fmt.name} ({fmt.help})" for fmt in FORMATS.values())


def detect_format(columns: list[str], where: str) -> str:
    present = set(columns)
    for fmt in FORMATS.values():
        if fmt.detect and set(fmt.detect) <= present:
            return fmt.name
    raise DataError(
        f"{where}: cannot tell the data format from the columns {sorted(present)}. Accepted formats: "
        f"{describe_formats()}. Rename the columns, or map them in a dataset_info.json entry."
    )


def check_columns(columns: list[str], spec: FormatSpec, where: str) -> None:
    missing_columns = [spec.column(key) for key in FORMATS[spec.name].required if spec.column(key) not in columns]
    if missing_columns:
        raise DataError(
            f"{where}: missing column(s) {missing_columns} for the {spec.name} format; columns found: "
            f"{sorted(columns)}. Accepted formats: {describe_formats()}."
        )


def _check_media(row: dict, spec: FormatSpec, fmt: DataFormat, where: str) -> None:
    """A video or audio column would leave the row to train without it: an error (images are read)."""
    read = {spec.column(key) for key in fmt.required}
    for key, media in MEDIA.items():
        column = spec.column(key)
        value = row.get(column)
        if column in read or missing(value) or (isinstance(value, (str, list, tuple, dict)) and not value):
            continue
        raise DataError(
            f"{where}: column {column!r} carries {media} ({describe(value)}), but videos and audio are not read "
            f"(images are): the row would train without them. Drop the column {column!r} (or the rows that carry "
            f"{media}) from the data."
        )


def convert(row: dict, spec: FormatSpec, where: str) -> Pair | Ranked | Rated:
    """One row -> its record, by its format's converter; raises DataError for bad input, SkipPair for a row that is
    well-formed but unusable."""
    fmt = FORMATS[spec.name]
    _check_media(row, spec, fmt, where)
    record = fmt.convert(row, spec, where)
    attach_images(record, row, spec, where)  # the row's images, checked, into meta["images"]
    record.meta["chat"] = chat_options(row, where, spec)  # the row's tools and chat_template_kwargs
    return record
