"""``discorm score``: a file of pairs (any format the data layer reads), of ranked lists or of single responses ->
JSONL of rewards, each conversation encoded as training encodes it (``model/inference.py`` does the scoring).
With a policy tokenizer, texts rendered by the policy's chat template are re-templated (``data/retemplate.py``).
A row's images (an ``images`` column, or image parts in its prompt) go with its prompt; relative paths are read
from the input file's folder."""

from __future__ import annotations

from pathlib import Path

from discorm.data.formats import FORMATS, convert, detect_format
from discorm.data.images import ImagePolicy
from discorm.data.loader import read_path
from discorm.data.retemplate import Retemplater
from discorm.data.rows import SkipPair, chat_options, conversation_images, to_conversation
from discorm.data.tokenize import Encoder
from discorm.errors import DataError
from discorm.files import check_destination, write_jsonl
from discorm.model.inference import describe, score_groups, score_pairs, score_sequences
from discorm.model.loading import load_policy_tokenizer
from discorm.model.reward_model import RewardModel
from discorm.model.rm_config import check_reward_options


def _score_lists(model, encoder: Encoder, rows: list, batch_size: int, options: dict) -> list[dict]:
    """Rows with ``prompt`` and ``responses`` (a label column is not needed) -> per list the records of its
    responses, each list one block with its prompt computed once."""
    groups = []
    for where, row in rows:
        responses = row["responses"]
        if not isinstance(responses, list) or not responses:
            raise DataError(f"{where}: 'responses' should be a non-empty list of responses to score, found "
                            f"{str(responses)[:60]!r}.")
        item = {"prompt": row.get("prompt", ""), "images": row.get("images")}
        conversations = [to_conversation({**item, "response": r}, where) for r in responses]
        prompt = conversations[0][0]
        images = [encoder.image_reference(ref, place) for ref, place in conversation_images(item, prompt, where)]
        encoded = encoder.encode(prompt, [response for _, response in conversations], where,
                                 chat_options(row, where), images)
        groups.append({"prompt_ids": encoded.prompt_ids, "responses_ids": encoded.response_ids,
                       "images": images or None, "source": where})
    params = score_groups(model, groups, batch_size, show_progress=True)
    return [{"index": i, "responses": describe(model, p, **options)} for i, p in enumerate(params)]


PAIRS, LISTS, RESPONSES = "pairs", "ranked lists", "single responses"


def row_kind(row: dict) -> str | None:
    """What a row to score is: a pair, a ranked list or a single response (None: none of them)."""
    if {"chosen", "rejected"} <= set(row):
        return PAIRS
    if "responses" in row:
        return LISTS
    if {"text", "messages", "completion"} & set(row) or {"prompt", "response"} <= set(row):
        return RESPONSES
    return None


def file_kind(rows: list) -> str:
    """The one kind of every row of a file to score; a row of no kind, or of another kind than the first row's,
    raises a DataError naming it."""
    first_where, first = rows[0][0], row_kind(rows[0][1])
    for where, row in rows:
        kind = row_kind(row)
        if kind is None:
            raise DataError(f"{where}: expected 'text', 'messages', 'prompt'+'response', 'prompt'+'completion' "
                            f"(a single response), 'chosen'+'rejected' (a pair) or 'responses' (a ranked list) "
                            f"columns, found {sorted(row)}.")
        if kind != first:
            raise DataError(f"{where}: this row holds {kind} ({sorted(row)}), but the file's first row "
                            f"({first_where}) holds {first}; a file to score holds one kind of row. Split it into "
                            "one file per kind.")
    return first


def score_file(model_dir: str, input_path: str, output_path: str, batch_size: int = 8,
               reward_mode: str | None = None, reward_alpha: float | None = None,
               reward_k: float | None = None, policy_tokenizer: str | None = None, force: bool = False) -> int:
    """Score a file of pairs, of ranked lists (prompt + responses: one record per list) or of single responses
    (text, messages, prompt + response, TRL's prompt + completion); writes JSONL to ``output_path``, which must
    not be the input, and replaces an existing file only with ``force``."""
    path = Path(input_path)
    if not path.exists():
        raise DataError(f"{input_path} does not exist; pass a .jsonl/.json/.parquet/.csv file of rows to score.")
    check_destination(output_path, force, reads=[input_path], option=f"--output {output_path}")
    rows = read_path(path)
    kind = file_kind(rows)
    policy = load_policy_tokenizer(policy_tokenizer)
    model = RewardModel.from_pretrained(model_dir).eval()
    check_reward_options(reward_mode, reward_alpha, reward_k, model.head)
    encoder = Encoder.for_model(model)
    encoder.image_policy = ImagePolicy(base_dir=str(path.resolve().parent))
    options = {"reward_mode": reward_mode, "reward_alpha": reward_alpha, "reward_k": reward_k}
    if kind == PAIRS:
        spec = FORMATS[detect_format(list(rows[0][1]), input_path)].spec(base_dir=str(path.resolve().parent))
        examples = []
        for where, row in rows:
            try:
                pair = convert(row, spec, where)
            except SkipPair as skip:
                raise DataError(f"{skip}; a pair to score needs two different, non-empty responses.") from None
            encoded = encoder.encode(pair.prompt, [pair.chosen, pair.rejected], where, pair.meta.get("chat"),
                                     pair.meta.get("images"))
            examples.append({"prompt_ids": encoded.prompt_ids, "chosen_ids": encoded.response_ids[0],
                             "rejected_ids": encoded.response_ids[1], "images": pair.meta.get("images")})
        params = score_pairs(model, examples, batch_size, show_progress=True)
        chosen, rejected = describe(model, params[:, 0], **options), describe(model, params[:, 1], **options)
        prob = model.head.prob_pair(params[:, 0], params[:, 1], model.rm_config.temperature).tolist()
        records = [{"index": i, "chosen": c, "rejected": r, "p_chosen": p}
                   for i, (c, r, p) in enumerate(zip(chosen, rejected, prob))]
    elif kind == LISTS:
        records = _score_lists(model, encoder, rows, batch_size, options)
    else:
        reader, sequences = Retemplater(encoder, policy), []
        for where, row in rows:
            if "text" in row:
                sequences.append(reader.encode_item(row["text"], where))
            elif "messages" in row or ("prompt" in row and "response" in row):
                sequences.append(reader.encode_item(row, where))
            else:
                sequences.append(reader.encode_joined(row.get("prompt"), row["completion"], where, row))
        params = score_sequences(model, sequences, batch_size, show_progress=True)
        records = [{"index": i, **record} for i, record in enumerate(describe(model, params, **options))]
    write_jsonl(output_path, records)
    return len(records)
