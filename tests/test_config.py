import pytest

from discorm.config import load_args
from discorm.errors import ConfigError
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
