"""`discorm data preview`: N examples (pairs or rated responses) exactly as the model sees them, with token counts
and the data summary."""

from __future__ import annotations

from discorm.config import DataArguments, FinetuningArguments, ModelArguments
from discorm.data.loader import build_datasets
from discorm.model.heads import HEADS
from discorm.model.loading import load_tokenizer

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


def preview(model_args: ModelArguments, data_args: DataArguments, n: int = 3, seed: int = 42,
            finetuning_args: FinetuningArguments | None = None) -> str:
    tokenizer = load_tokenizer(model_args)
    finetuning_args = finetuning_args or FinetuningArguments()
    attributes = HEADS[finetuning_args.head].attributes_from(finetuning_args.head_options)
    train, evaluation, summaries = build_datasets(data_args, tokenizer, seed, attributes=attributes)
    dataset = train if train is not None else evaluation
    names = [a.name for a in attributes]
    lines = []
    for index in range(min(n, len(dataset))):
        example = dataset[index]
        rated = example.get("response_ids") is not None
        lines += _rated(tokenizer, index, example, names) if rated else _pair(tokenizer, index, example)
    lines += [RULE, *summaries]
    return "\n".join(lines)
