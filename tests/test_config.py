import json
import logging

import pytest

from discorm.config import TrainingArguments, check_output_dir, load_args
from discorm.errors import ConfigError
from discorm.model.reward_model import RewardModel
from discorm.train.workflow import run_rm
from tests.conftest import REPO


def test_yaml_then_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: some/model\nfinetuning_type: lora\nlearning_rate: 1e-5\nlora_rank: 4\n")
    model_args, data_args, training_args, ft = load_args(str(config), ["lora_rank=16", "cutoff_len=64", "bf16=false"])
    assert model_args.model_name_or_path == "some/model"
    assert ft.finetuning_type == "lora" and ft.lora_rank == 16 and ft.lora_alpha == 32
    assert training_args.learning_rate == pytest.approx(1e-5)  # YAML reads `1e-5` as a string; coerced
    assert data_args.cutoff_len == 64 and training_args.bf16 is False
    assert training_args.remove_unused_columns is False and training_args.report_to in ("none", ["none"], [])


def test_defaults_are_overridden_by_yaml(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("do_train: false\n")
    assert load_args(str(config), [], defaults={"do_train": True})[2].do_train is False


def test_unknown_key_suggests_closest(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rat: 1e-5\n")
    with pytest.raises(ConfigError, match=r"'learning_rat' \(did you mean 'learning_rate'"):
        load_args(str(config))
    with pytest.raises(ConfigError, match=r"'finetune_type' \(did you mean 'finetuning_type'"):
        load_args({}, ["finetune_type=lora"])


@pytest.mark.parametrize(
    "key, value, allowed",
    [("finetuning_type", "partial", "full, lora, freeze"), ("head", "beta", "scalar, gaussian, categorical"),
     ("pooling", "max", "last, first, mean"), ("dtype", "fp8", "auto, float32, bfloat16, float16")],
)
def test_bad_enum_value_names_key_value_and_choices(key, value, allowed):
    with pytest.raises(ConfigError) as err:
        load_args({key: value})
    assert key in str(err.value) and repr(value) in str(err.value) and allowed in str(err.value)


def test_bad_number_and_yaml_syntax(tmp_path):
    with pytest.raises(ConfigError, match="lora_rank='many' is not a valid int"):
        load_args({}, ["lora_rank=many"])
    config = tmp_path / "bad.yaml"
    config.write_text("a: 1\nb: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_args(str(config))
    with pytest.raises(ConfigError, match="does not exist"):
        load_args(str(tmp_path / "missing.yaml"))


def test_disco_shorthand_selects_gaussian():
    assert load_args({"disco": True})[3].head == "gaussian"
    assert load_args({"disco": True, "head": "gaussian"})[3].head == "gaussian"
    assert load_args({})[3].head == "scalar"


@pytest.mark.parametrize("head", ["categorical", "scalar", "regression"])
def test_disco_with_another_head_is_refused_naming_both(head):
    with pytest.raises(ConfigError, match=rf"disco: true is shorthand for head: gaussian, and head='{head}'"):
        load_args({}, ["disco=true", f"head={head}"])


@pytest.mark.parametrize("extra, words", [
    ({"temperature_scaling": True}, "temperature_scaling"),
    ({"ranking_loss": "plackett_luce"}, "ranking_loss=plackett_luce"),
    ({"num_atoms": 5}, "num_atoms does not apply to the gaussian head"),
    ({"combination": "learned"}, "combination=learned"),
])
def test_what_disco_implies_is_named_when_it_contradicts_another_key(extra, words):
    """disco: true means head: gaussian, so every key the gaussian head refuses names disco too."""
    with pytest.raises(ConfigError) as err:
        load_args({"disco": True, **extra})
    assert words in str(err.value) and "disco: true is shorthand for head: gaussian" in str(err.value)


def test_freeze_trainable_layers_applies_only_to_freeze_finetuning():
    for kind in ("lora", "full"):
        with pytest.raises(ConfigError, match=rf"freeze_trainable_layers=4 applies to finetuning_type: freeze, "
                                              rf"and finetuning_type='{kind}'"):
            load_args({"finetuning_type": kind, "freeze_trainable_layers": 4})
    assert load_args({"finetuning_type": "freeze"})[3].finetuning().freeze_trainable_layers == 2
    assert load_args({"finetuning_type": "freeze", "freeze_trainable_layers": 0})[3].finetuning() \
        .freeze_trainable_layers == 0



def test_a_command_line_finetuning_type_drops_the_files_freeze_layers_with_a_warning(tmp_path, caplog):
    """`discorm train quickstart.yaml finetuning_type=lora` (a freeze config) trains LoRA, saying what it drops;
    the same two keys given together in one place are still refused."""
    config = tmp_path / "freeze.yaml"
    config.write_text("finetuning_type: freeze\nfreeze_trainable_layers: 4\n")
    with caplog.at_level("WARNING", logger="discorm.config"):
        finetuning = load_args(str(config), ["finetuning_type=lora"])[3]
    assert (finetuning.finetuning_type, finetuning.freeze_trainable_layers) == ("lora", None)
    assert "freeze_trainable_layers=4" in caplog.text and "dropped" in caplog.text
    assert load_args(str(config), ["freeze_trainable_layers=1"])[3].freeze_trainable_layers == 1
    with pytest.raises(ConfigError, match="freeze_trainable_layers=2 applies to finetuning_type: freeze"):
        load_args(str(config), ["finetuning_type=lora", "freeze_trainable_layers=2"])

def test_a_key_given_twice_in_yaml_is_refused_with_its_lines(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-5\ncutoff_len: 64\nlearning_rate: 2e-5\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3: the key 'learning_rate' is given twice \(lines 1 and 3\)"):
        load_args(str(config))
    config.write_text("head: categorical\nhead_options:\n  num_atoms: 3\n  num_atoms: 5\n")
    with pytest.raises(ConfigError, match=r"c.yaml:4: the key 'num_atoms' is given twice \(lines 3 and 4\)"):
        load_args(str(config))


def test_an_output_dir_that_is_a_file_is_refused_before_training(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    for out in (file, file / "run"):
        with pytest.raises(ConfigError, match=rf"'{file}' is a file, and training writes a folder there"):
            check_output_dir(TrainingArguments(output_dir=str(out)))
    assert file.read_text() == "mine"


def test_a_cutoff_len_beyond_the_backbone_is_lowered_for_training_and_the_saved_model(tiny_bert, tmp_path, caplog):
    rows = [{"prompt": "q " * 700, "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(4)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = load_args({"model_name_or_path": str(tiny_bert), "dataset": str(tmp_path / "d.jsonl"),
                      "cutoff_len": 4096, "pooling": "first", "packing": False, "finetuning_type": "full",
                      "max_steps": 1, "output_dir": str(tmp_path / "run"), "use_cpu": True, "save_strategy": "no",
                      "disable_tqdm": True, "report_to": "none"})
    with caplog.at_level(logging.WARNING, logger="discorm"):
        run_rm(*args)
    assert "cutoff_len=4096 is beyond the backbone's max_position_embeddings=512" in caplog.text
    assert RewardModel.from_pretrained(tmp_path / "run").rm_config.cutoff_len == 512
    assert args[1].cutoff_len == 4096  # the caller's arguments are left as they were


def test_trainer_engine_keys_from_yaml(tmp_path):
    """fsdp / fsdp_config and deepspeed come from the YAML file as in LlamaFactory."""
    import importlib.util

    config = tmp_path / "c.yaml"
    config.write_text("fsdp: true\nfsdp_config:\n  version: 2\n  state_dict_type: FULL_STATE_DICT\n")
    training_args = load_args(str(config))[2]
    assert training_args.fsdp_plugin_args["fsdp_version"] == 2
    assert training_args.fsdp_plugin_args["state_dict_type"] == "FULL_STATE_DICT"
    assert load_args({}, ["fsdp=true"])[2].fsdp_plugin_args is not None
    if importlib.util.find_spec("deepspeed") is not None:
        config.write_text(f"deepspeed: {REPO / 'examples' / 'deepspeed' / 'ds_z3.json'}\nuse_cpu: true\n")
        assert load_args(str(config))[2].hf_deepspeed_config.is_zero3()
