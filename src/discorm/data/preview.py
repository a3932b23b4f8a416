"""`discorm data preview`: N examples (pairs, ranked lists or rated responses) exactly as the model sees them, with
token counts and the data summary. An example with images shows how many, and, where the tokenizer names its image
token (a vision-language model's), how many image tokens its prompt holds and how many the shared prompt saves:
a block of K responses computes the prompt once, not K times."""

from __future__ import annotations

import numpy
import pyarrow.compute

RULE = "=" * 78


def _responses(example: dict) -> int:
    """K, the responses that share the example's prompt."""
    if example.get("responses_ids") is not None:
        return len(example["responses_ids"])
    return 1 if example.get("response_ids") is not None else 2


def _images(example: dict, image_token: int | None) -> list[str]:
    """The example's image line, or none for a text example."""
    images = example.get("images")
    if not images:
        return []
    line = f"images: {len(images)} in the prompt"
    if image_token is None:
        return [line + " (the tokenizer has no image token: image tokens are not counted)"]
    tokens = example["prompt_ids"].count(image_token)
    saved = (_responses(example) - 1) * len(example["prompt_ids"])
    return [f"{line}, {tokens} image tokens; the shared prompt saves {saved} tokens ("
            f"{(_responses(example) - 1) * tokens} of them image tokens)"]


def image_summary(dataset, image_token: int | None) -> list[str]:
    """The images of a tokenized data set: how many, in how many examples, and (with an image token) the image
    tokens and the prompt tokens that sharing saves; [] for a text data set."""
    if "images" not in dataset.column_names:
        return []
    table = dataset.with_format("arrow")[:]
    counts = pyarrow.compute.list_value_length(table.column("images")).fill_null(0).to_numpy(zero_copy_only=False)
    line = f"images: {int(counts.sum())} in {int((counts > 0).sum())} of {len(counts)} examples"
    if image_token is None:
        return [line + " (the tokenizer has no image token: image tokens are not counted)"]
    prompts = table.column("prompt_ids").combine_chunks()
    rows = pyarrow.compute.list_parent_indices(prompts).to_numpy()
    hits = pyarrow.compute.equal(pyarrow.compute.list_flatten(prompts), image_token).to_numpy(zero_copy_only=False)
    tokens = numpy.bincount(rows[hits], minlength=len(counts))
    shares = numpy.full(len(counts), 1)  # K - 1 per example: pairs 1, rated 0, lists K - 1
    if "response_ids" in table.column_names:
        shares[table.column("response_ids").is_valid().to_numpy(zero_copy_only=False)] = 0
    if "responses_ids" in table.column_names:
        lists = table.column("responses_ids")
        sizes = pyarrow.compute.list_value_length(lists).to_numpy(zero_copy_only=False)
        valid = lists.is_valid().to_numpy(zero_copy_only=False)
        shares[valid] = sizes[valid] - 1
    return [f"{line}; image tokens: {int(tokens.sum())}, of which sharing each prompt across its responses saves "
            f"{int((shares * tokens).sum())}"]


def _pair(tokenizer, index: int, example: dict) -> list[str]:
    prompt, chosen, rejected = example["prompt_ids"], example["chosen_ids"], example["rejected_ids"]
    return [
        RULE,
        f"pair {index}: prompt {len(prompt)} tokens, chosen {len(chosen)}, rejected {len(rejected)} "
        f"(sequences of {len(prompt) + len(chosen)} and {len(prompt) + len(rejected)} tokens)",
        *_images(example, getattr(tokenizer, "image_token_id", None)),
        "--- prompt " + "-" * 67,
        tokenizer.decode(prompt),
        "--- chosen (the score is read at its last token) " + "-" * 28,
        tokenizer.decode(chosen),
        "--- rejected " + "-" * 65,
        tokenizer.decode(rejected),
    ]


def _rated(tokenizer, index: int, example: dict, names: list[str]) -> list[str]:
    prompt, response = example["prompt_ids"], example["response_ids"]
    scores = ", ".join(f"{n} {v:g}" for n, v in zip(names, example["scores"]) if v == v) or "none"
    return [
        RULE,
        f"rated response {index}: prompt {len(prompt)} tokens, response {len(response)}; ratings: {scores}",
        *_images(example, getattr(tokenizer, "image_token_id", None)),
        "--- prompt " + "-" * 67,
        tokenizer.decode(prompt),
        "--- response (the score is read at its last token) " + "-" * 26,
        tokenizer.decode(response),
    ]


def _ranked(tokenizer, index: int, example: dict) -> list[str]:
    prompt, responses = example["prompt_ids"], example["responses_ids"]
    levels = example.get("levels")
    lines = [RULE, f"list {index}: prompt {len(prompt)} tokens, {len(responses)} responses of "
             f"{', '.join(str(len(r)) for r in responses)} tokens (one block, the prompt computed once)",
             *_images(example, getattr(tokenizer, "image_token_id", None)),
             "--- prompt " + "-" * 60, tokenizer.decode(prompt)]
    for number, response in enumerate(responses):
        label = f"rank level {levels[number]}" if levels else "labelled by votes"
        lines += [f"--- response {number} ({label}) " + "-" * 40, tokenizer.decode(response)]
    return lines


def preview(tokenizer, dataset, n: int, attribute_names: list[str], summaries: list[str]) -> str:
    """The first ``n`` examples of a tokenized data set as text, then the data summary lines."""
    lines = []
    for index in range(min(n, len(dataset))):
        example = dataset[index]
        if example.get("response_ids") is not None:
            lines += _rated(tokenizer, index, example, attribute_names)
        elif example.get("responses_ids") is not None:
            lines += _ranked(tokenizer, index, example)
        else:
            lines += _pair(tokenizer, index, example)
    lines += [RULE, *summaries, *image_summary(dataset, getattr(tokenizer, "image_token_id", None))]
    return "\n".join(lines)
