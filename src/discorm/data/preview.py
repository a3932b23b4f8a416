"""`discorm data preview`: N pairs exactly as the model sees them, with token counts and the data summary."""

from __future__ import annotations

from discorm.config import DataArguments, ModelArguments
from discorm.data.loader import build_datasets
from discorm.model.loading import load_tokenizer


def preview(model_args: ModelArguments, data_args: DataArguments, n: int = 3, seed: int = 42) -> str:
    tokenizer = load_tokenizer(model_args)
    train, evaluation, summaries = build_datasets(data_args, tokenizer, seed)
    dataset = train if train is not None else evaluation
    rule = "=" * 78
    lines = []
    for index in range(min(n, len(dataset))):
        example = dataset[index]
        prompt, chosen, rejected = example["prompt_ids"], example["chosen_ids"], example["rejected_ids"]
        lines += [
            rule,
            f"pair {index}: prompt {len(prompt)} tokens, chosen {len(chosen)}, rejected {len(rejected)} "
            f"(sequences of {len(prompt) + len(chosen)} and {len(prompt) + len(rejected)} tokens)",
            "--- prompt " + "-" * 67,
            tokenizer.decode(prompt),
            "--- chosen (the score is read at its last token) " + "-" * 28,
            tokenizer.decode(chosen),
            "--- rejected " + "-" * 65,
            tokenizer.decode(rejected),
        ]
    lines += [rule, *summaries]
    return "\n".join(lines)
