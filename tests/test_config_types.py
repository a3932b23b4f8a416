"""Every config key is checked against its field's type before any argument dataclass sees it: a wrong type is
one ConfigError naming the key, the value and the type expected, never a Python traceback."""

from pathlib import Path

import pytest
import yaml

from discorm.cli import main
from discorm.config import SWITCHES, _head_option_names, _known_keys, _matches, load_args
from discorm.errors import ConfigError


@pytest.mark.parametrize("yaml_text, words", [
    ("learning_rate: true", ["learning_rate=True", "a boolean", "takes a number"]),
    ("cutoff_len: [1, 2]", ["cutoff_len=[1, 2]", "a list", "takes an integer"]),
    ("head_options: 5", ["head_options=5", "an integer", "takes a mapping"]),
    ("max_samples: 2.7", ["max_samples=2.7", "a decimal number", "takes an integer or null"]),
    ("dataset: [demo, demo_test]", ["dataset=['demo', 'demo_test']", "a list", "takes a string", "joined by commas"]),
    ("num_train_epochs: true", ["num_train_epochs=True", "a boolean", "takes a number"]),  # transformers' keys
    ("report_to: 5", ["report_to=5", "an integer", "a list of strings"]),
    ("lr_scheduler_kwargs: [1]", ["lr_scheduler_kwargs=[1]", "a list", "a mapping (key: value)"]),
])
def test_a_yaml_value_of_the_wrong_type_names_key_value_and_type(tmp_path, yaml_text, words):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text + "\n")
    with pytest.raises(ConfigError) as err:
        load_args(str(config))
    for word in words:
        assert word in str(err.value)


def test_values_of_the_right_type_pass():
    model_args, data_args, training_args, ft = load_args({
        "learning_rate": 1, "max_samples": None, "dataset": "demo,demo_test", "report_to": ["none"],
        "lr_scheduler_kwargs": {"power": 2.0}, "fsdp": False, "head_options": {}, "num_train_epochs": 2})
    assert training_args.learning_rate == 1.0 and isinstance(training_args.learning_rate, float)
    assert data_args.dataset == "demo,demo_test" and data_args.max_samples is None
    assert training_args.num_train_epochs == 2 and ft.head_options["bias"] is False
    assert load_args({"output_dir": Path("runs") / "a"})[2].output_dir == str(Path("runs") / "a")  # Python callers


def _wrong_value(annotation):
    """A YAML value the field's type does not admit."""
    return next(v for v in ([[1]], {"a": [1]}, 1.5, True) if not _matches(v, annotation))


def test_every_key_of_every_argument_dataclass_is_typed_checked():
    """No key lets a value of the wrong type through to a dataclass (which would fail with a raw Python error, or
    not at all)."""
    keys = {key: annotation for key, annotation in _known_keys().items() if key not in _head_option_names()}
    assert {"learning_rate", "cutoff_len", "head_options", "dataset", "deepspeed", "fsdp_config"} <= set(keys)
    for key, annotation in keys.items():
        value = _wrong_value(annotation | bool if key in SWITCHES else annotation)
        with pytest.raises(ConfigError) as err:
            load_args({key: value})
        assert str(err.value).startswith(f"{key}={value!r} is "), (key, str(err.value))
        assert " takes " in str(err.value), key


def test_the_command_line_prints_one_line_without_a_traceback(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "dataset": ["demo", "demo_test"]}))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "dataset=['demo', 'demo_test'] is a list" in err
