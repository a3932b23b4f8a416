"""``discorm export``: a DiscoRM run as a standard ``*ForSequenceClassification`` checkpoint (the format TRL, vLLM,
OpenRLHF and RewardBench load) with the tokenizer and chat template it was trained with.

The contract: label 0 is the head's mean reward (``logits[0] - config.discorm_reward_shift``, the normalisation
folded in; ``config.value_head_prefix``, ``config.mean`` and ``config.std`` as OpenRLHF's reward model class reads
them, so its normalised reward is DiscoRM's); extra labels (``--num-labels`` with ``--multi-label``) are the
head's own (a Gaussian's variance logit, per-attribute means), every label named in ``config.discorm_labels`` and
``id2label``; constants the bias-free score layer cannot hold live in ``config.discorm_*``; the pad token never
occurs in rendered conversations, and the exported chat template ends a whole conversation at its final
end-of-turn token, so a consumer that renders with it and pads reads the score where DiscoRM does.
docs/using/rl.md says which consumer reads which label; docs/using/scoring.md ("The label contract")
lists every field. A vision-language reward model is refused (no such class loads one with its images): it is
served instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification

from discorm.data.templates import BUILTIN_TEMPLATES
from discorm.errors import DestinationError, ModelError
from discorm.files import check_destination, replacing_folder
from discorm.model.reward_model import RewardModel

logger = logging.getLogger(__name__)
_PROBE = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def choose_pad_token(tokenizer) -> tuple[int, bool]:
    """A special token id that rendered conversations never contain -> (id, whether a token was added)."""
    try:
        probe = set(tokenizer.apply_chat_template(_PROBE, tokenize=True, add_generation_prompt=False))
    except (ValueError, TypeError):
        probe = set()
    probe |= {tokenizer.eos_token_id, tokenizer.bos_token_id} - {None}
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in probe:
        return tokenizer.pad_token_id, False
    for token_id in [tokenizer.unk_token_id, *tokenizer.all_special_ids]:
        if token_id is not None and token_id not in probe:
            return token_id, False
    tokenizer.add_special_tokens({"pad_token": "<|discorm_pad|>"})
    return tokenizer.pad_token_id, True


def _normalized(spec, rm_config) -> tuple[torch.Tensor, dict]:
    """The score weight with the reward normalisation folded into its first row, and the config entries that
    recover DiscoRM's reward from the first logit (see the module docstring)."""
    weight, shift, extra = spec.weight.clone(), -spec.offset, {}
    if rm_config.normalized_on is not None:
        weight[0] = weight[0] / rm_config.reward_std
        shift = (rm_config.reward_mean - spec.offset) / rm_config.reward_std
        extra["discorm_reward_normalization"] = {"mean": rm_config.reward_mean, "std": rm_config.reward_std,
                                                 "reference": rm_config.normalized_on}
    if shift or extra:
        extra["discorm_reward_shift"] = shift
    extra["mean"], extra["std"] = shift, 1.0  # OpenRLHF: (logit - mean) / std is DiscoRM's reward
    return weight, extra


def scoring_template(template: str) -> str:
    """``template`` with the whitespace after a whole conversation's last token dropped (ChatML's ``\n`` after
    ``<|im_end|>``), as DiscoRM renders it: consumers read the score at the last token of what the template gives.
    A prompt rendered with the generation prompt keeps its trailing whitespace."""
    return ("{%- set discorm_rendered %}" + template + "{% endset -%}"
            "{{ discorm_rendered if add_generation_prompt else discorm_rendered.rstrip() }}")


EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
                "model.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json", "tokenizer*",
                "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.*",
                "merges.txt", "spiece.model", "discorm_*.safetensors")  # what an export writes: --force replaces these


def check_export_destination(run_dir: str, out: str, force: bool) -> None:
    """The export never writes into its source, nor holds it; it writes a folder, into one with files only with
    ``force`` (see ``files.check_destination``)."""
    source, target = Path(run_dir).resolve(), Path(out).resolve()
    if target == source or source in target.parents or target in source.parents:
        raise DestinationError(f"--out {out} is {'inside ' if target != source else ''}the run directory {run_dir} "
                               f"{'(or holds it) ' if target in source.parents else ''}being exported, whose files "
                               "the export would replace; write it to another folder.")
    check_destination(out, force, folder=True, option=f"--out {out}")


def export_sequence_classification(run_dir: str, out: str, merge_lora: bool = False, dtype: str | None = None,
                                   num_labels: int = 1, force: bool = False, multi_label: bool = False) -> Path:
    """Write ``run_dir`` as a sequence-classification checkpoint in ``out`` (built in a temporary folder next to
    it, then moved into place; into a folder with files only with ``force``, which replaces the files an export
    writes, ``EXPORT_FILES``, and nothing else). ``num_labels`` above 1 needs ``multi_label``: consumers that read
    the last label (verl, vLLM) or the top one (RewardBench's pipeline) would take another label for the
    reward."""
    if num_labels > 1 and not multi_label:
        raise ModelError(f"--num-labels {num_labels} writes a checkpoint that RL consumers misread by default: TRL "
                         "and OpenRLHF read label 0 (the reward), but verl and vLLM read the last label and "
                         "RewardBench's pipeline the largest one. Pass --multi-label to write it anyway, or export "
                         "--num-labels 1 for RL.")
    check_export_destination(run_dir, out, force)
    model = RewardModel.from_pretrained(run_dir, quantized=False)  # a QLoRA adapter merges into full weights
    if model.vision is not None:
        raise ModelError(f"{run_dir} is a vision-language reward model ({type(model.backbone).__name__}); "
                         "transformers has no sequence-classification class that loads it with its vision tower "
                         "and image processor, so TRL, OpenRLHF, RewardBench and vLLM could not read an export. "
                         "Serve it with `discorm serve` (TRL's reward_function takes its URL; verl reads /classify "
                         "or /v1/embeddings), or score with `discorm score` / RewardModel.from_pretrained.")
    if model.is_lora:
        if not merge_lora:
            raise ModelError(
                f"{run_dir} is a LoRA run: a standalone sequence-classification checkpoint needs the adapters "
                "merged into the weights. Pass --merge-lora."
            )
        model.backbone = model.backbone.merge_and_unload()
    head = model.head
    if num_labels not in head.export_labels:
        forms = f"num_labels in {list(head.export_labels)}" if head.export_labels else "no sequence-classification form"
        raise ModelError(f"a {head.kind} head has {forms}, so it cannot be exported with num_labels={num_labels}; "
                         "serve it with `discorm serve` instead, or export a head that has one.")
    spec = head.export_spec(num_labels)
    weight, extra = _normalized(spec, model.rm_config)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ModelError(f"{run_dir} has no tokenizer to export with the model.")
    template = model.rm_config.template
    if template in BUILTIN_TEMPLATES and BUILTIN_TEMPLATES[template]:
        tokenizer.chat_template = BUILTIN_TEMPLATES[template]
    if isinstance(tokenizer.chat_template, str) and model.rm_config.score_at == "end_of_turn":
        tokenizer.chat_template = scoring_template(tokenizer.chat_template)
    imported_pad = model.rm_config.pad_token_id if model.rm_config.score_at == "last_non_pad" else None
    pad_id, added = (imported_pad, False) if imported_pad is not None else choose_pad_token(tokenizer)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    backbone = model.backbone
    if added:  # a new pad token: one more embedding row, never used by real text
        backbone.resize_token_embeddings(len(tokenizer))

    config = backbone.config.__class__.from_dict(backbone.config.to_dict())
    config.num_labels = num_labels
    config.pad_token_id = pad_id
    config.architectures = None
    config.discorm_head = head.kind
    config.discorm_reward_mode = "mean"
    config.discorm_labels = list(spec.labels)
    config.id2label = dict(enumerate(spec.labels))
    config.label2id = {label: i for i, label in enumerate(spec.labels)}
    config.value_head_prefix = "score"  # OpenRLHF: the name of the value head's linear layer
    classifier = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    inner = getattr(classifier, classifier.base_model_prefix)
    inner.load_state_dict(backbone.state_dict())
    classifier.score.weight.data.copy_(weight)
    for key, value in {**spec.config, **extra}.items():
        setattr(classifier.config, key, value)
    if dtype:
        classifier = classifier.to(getattr(torch, dtype))
    out_dir = Path(out)
    with replacing_folder(out_dir, EXPORT_FILES) as staged:
        classifier.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        for name, tensors in spec.files.items():
            save_file(tensors, staged / name, metadata={"head": head.kind})
    logger.info("exported %s -> %s (%s head, pad token %r)", run_dir, out_dir, head.kind, tokenizer.pad_token)
    return out_dir
