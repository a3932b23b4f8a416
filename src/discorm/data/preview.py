"""`discorm data preview`: N examples (pairs, ranked lists or rated responses) exactly as the model sees them, with
token counts and the data summary."""

from __future__ import annotations

RULE = "=" * 78


def _pair(tokenizer, index: int, example: dict) -> list[str]:
    prompt, chosen, rejected = example["prompt_ids"], example["chosen_ids"], example["rejected_ids"]
    return [
        RULE,
        f"pair {index}: prompt {len(prompt)} tokens, chosen {len(chosen)}, rejected {len(rejected)} "
        f"(sequences of {len(prompt) + len(chosen)} and {len(prompt) + len(rejected)} tokens)",
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
    lines += [RULE, *summaries]
    return "\n".join(lines)
