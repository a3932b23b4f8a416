"""Labelling tools at both ends of a selection: Label Studio tasks and Argilla v2 records out, their exports in.

Out (``discorm select --format``): each chosen pair becomes

- a Label Studio task, ``{"data": {"prompt", "response_a", "response_b", ["system",] "acquisition", "p_a",
  "p_a_std", ...the pool row's other keys}}`` (Label Studio's JSON import: a list of tasks);
- an Argilla v2 record, ``{"fields": {"prompt", "response_a", "response_b"[, "system"]}, "metadata":
  {"acquisition", "p_a", "p_a_std"}}`` (``rg.Record.from_dict`` reads it; the fields are the pool's values, text
  or chat messages as an Argilla ``ChatField`` shows them).

``p_a`` is the model's P(response_a > response_b) and ``p_a_std`` its posterior spread.

In (formats ``label_studio`` and ``argilla``, ``data/formats.py``): each annotator's answer is a vote; a pair's
votes train by their binomial likelihood (``Pair.votes``: response_a counts as chosen, response_b as rejected).

- Label Studio export (JSON): tasks with ``data`` and ``annotations``, each annotation's ``result`` holding a
  ``choices`` answer (``{"value": {"choices": ["A"]}}``, A / B / Tie) or a ``pairwise`` one (``{"value":
  {"selected": "left"}}``, left / right); cancelled annotations are skipped.
- Argilla export (``records.to_json``): records with ``fields`` and ``responses``, ``{"preference": [{"value":
  "A", "user_id": ...}, ...]}``; the values as for Label Studio, or a ranking (a list of the two field names,
  better first).

A task or record without an answer is skipped (``SkipPair``).
"""

from __future__ import annotations

from dataclasses import replace

from discorm.data.pairs import Pair, build_pair
from discorm.data.rows import FormatSpec, SkipPair, expect, read_messages, with_system
from discorm.errors import DataError
from discorm.files import write_json, write_jsonl

PAIR_FIELDS = ("prompt", "response_a", "response_b")
QUESTION = "preference"  # the question (Label Studio's Choices name, Argilla's question) the votes are read from
ANSWERS = {"a": 0, "left": 0, "response_a": 0, "tie": 1, "b": 2, "right": 2, "response_b": 2}  # -> (a, tie, b)


def _pair_values(row: dict) -> dict:
    """A selected pool row's prompt, two responses and system message (``response_a``/``response_b`` or the two
    ``responses``); lists of more than two responses are refused."""
    if "responses" in row:
        if len(row["responses"]) != 2:
            raise DataError(f"a selected item compares {len(row['responses'])} responses; Label Studio and Argilla "
                            "are written for pairs (two responses). Write lists as jsonl, or give the pool pairs.")
        values = {"prompt": row["prompt"], "response_a": row["responses"][0], "response_b": row["responses"][1]}
    else:
        values = {key: row[key] for key in PAIR_FIELDS}
    return {**values, **({"system": row["system"]} if row.get("system") is not None else {})}


def _model_view(row: dict) -> dict:
    (preference,) = row["preferences"]
    return {"acquisition": row["acquisition"], "p_a": preference["p"], "p_a_std": preference["p_std"]}


def label_studio_tasks(selected: list[dict]) -> list[dict]:
    """Selected pool rows (``model/selection.py``) -> Label Studio tasks, in the selection's order."""
    tasks = []
    for row in selected:
        rest = {k: v for k, v in row.items() if k not in ("responses", "preferences", "acquisition", *PAIR_FIELDS)}
        tasks.append({"data": {**rest, **_pair_values(row), **_model_view(row)}})
    return tasks


def argilla_records(selected: list[dict]) -> list[dict]:
    """Selected pool rows -> Argilla v2 records, in the selection's order."""
    return [{"fields": _pair_values(row), "metadata": _model_view(row)} for row in selected]


def _read_pair(values: dict, where: str, container: str) -> tuple[list, list, list]:
    missing = [key for key in PAIR_FIELDS if values.get(key) is None]
    if missing:
        raise DataError(f"{where}: {container} has no {', '.join(missing)}; a labelled pair needs prompt, "
                        "response_a and response_b (as `discorm select --format` writes them).")
    prompt = with_system(read_messages(values["prompt"], f"{container}.prompt", where, "user"), values.get("system"),
                         where)
    return (prompt, read_messages(values["response_a"], f"{container}.response_a", where, "assistant"),
            read_messages(values["response_b"], f"{container}.response_b", where, "assistant"))


def _vote(value, where: str, key: str) -> int:
    """One answer -> 0 (a better), 1 (a tie) or 2 (b better)."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (str, dict)) for v in value):
        best = value[0]["value"] if isinstance(value[0], dict) else value[0]  # a ranking, better first
        return _vote(best, where, key)
    if isinstance(value, list) and len(value) == 1:
        return _vote(value[0], where, key)
    if isinstance(value, str) and value.strip().lower() in ANSWERS:
        return ANSWERS[value.strip().lower()]
    raise DataError(f"{where}: {key} is {str(value)[:60]!r}; an answer is A, B or Tie (Label Studio choices), left "
                    "or right (Label Studio pairwise), or response_a / response_b first (a ranking).")


def _pair_with_votes(spec: FormatSpec, where: str, pair: tuple, counts: list[int]) -> Pair:
    if not sum(counts):
        raise SkipPair("unlabelled", f"{where}: no annotator answered")
    return replace(build_pair({}, spec, where, *pair), votes=tuple(float(c) for c in counts))


def from_label_studio(row: dict, spec: FormatSpec, where: str) -> Pair:
    """One task of a Label Studio JSON export -> a Pair with one vote per (non-cancelled) annotation."""
    pair = _read_pair(expect(row["data"], dict, "data", where), where, "data")
    counts = [0, 0, 0]
    for number, annotation in enumerate(expect(row["annotations"], list, "annotations", where)):
        expect(annotation, dict, f"annotations[{number}]", where)
        if annotation.get("was_cancelled"):
            continue
        for result in expect(annotation.get("result") or [], list, f"annotations[{number}].result", where):
            value = expect(result, dict, f"annotations[{number}].result[]", where).get("value") or {}
            answer = value.get("choices", value.get("selected"))
            if answer is not None and result.get("from_name", QUESTION) in (QUESTION, "pairwise", "pw"):
                counts[_vote(answer, where, f"annotations[{number}].result.value")] += 1
    return _pair_with_votes(spec, where, pair, counts)


def from_argilla(row: dict, spec: FormatSpec, where: str) -> Pair:
    """One record of an Argilla export -> a Pair with one vote per response to the ``preference`` question."""
    pair = _read_pair(expect(row["fields"], dict, "fields", where), where, "fields")
    responses = expect(row["responses"] or {}, dict, "responses", where)
    counts = [0, 0, 0]
    for number, response in enumerate(expect(responses.get(QUESTION) or [], list, f"responses.{QUESTION}", where)):
        key = f"responses.{QUESTION}[{number}]"
        value = expect(response, dict, key, where).get("value")
        if value is not None:
            counts[_vote(value, where, f"{key}.value")] += 1
    return _pair_with_votes(spec, where, pair, counts)


WRITERS = {  # ``discorm select --format``: how a selection is written
    "jsonl": write_jsonl,
    "label-studio": lambda path, selected: write_json(path, label_studio_tasks(selected)),
    "argilla": lambda path, selected: write_json(path, argilla_records(selected)),
}
