import json

import pytest

from jaxbiqa import cli
from jaxbiqa.config import Config, ConfigError, apply_override, from_dict, load_config, to_dict


def test_override_parses_by_declared_type():
    config = Config()
    config = apply_override(config, "seed=7")
    config = apply_override(config, "rewards.score_threshold=0.3")
    config = apply_override(config, "rewards.format_strict=false")
    config = apply_override(config, "rewards.reasoning_fields=description,bad_aspect")
    config = apply_override(config, "rewards.score_kind=gaussian")
    assert config.seed == 7 and isinstance(config.seed, int)
    assert config.rewards.score_threshold == 0.3
    assert config.rewards.format_strict is False
    assert config.rewards.reasoning_fields == ("description", "bad_aspect")
    assert config.rewards.score_kind == "gaussian"
    assert Config().rewards.score_threshold == 0.35  # the original is untouched (frozen)


def test_override_dict_entry_keeps_other_entries():
    config = apply_override(Config(), "rewards.weights.format=0.5")
    assert config.rewards.weights["format"] == 0.5
    assert config.rewards.weights["score"] == 1.0
    with pytest.raises(ConfigError, match="rewards.weights.score"):
        apply_override(Config(), "rewards.weights.score=abc")


@pytest.mark.parametrize("assignment, message", [
    ("rewards.score_treshold=0.3", "did you mean 'rewards.score_threshold'"),
    ("sead=1", "did you mean 'seed'"),
    ("seed=1.5", "not an integer"),
    ("rewards.format_strict=maybe", "not a boolean"),
    ("rewards.score_kind=linear", "not one of"),
    ("rewards=1", "cannot be set"),
    ("seed", "key.path=value"),
    ("seed.x=1", "is a value, not a section"),
])
def test_bad_override_is_a_clear_error(assignment, message):
    with pytest.raises(ConfigError, match=message):
        apply_override(Config(), assignment)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        apply_override(Config(), "rewards.score_kindd=cosine")
    assert "rewards.score_kind" in str(info.value) and "rewards.format_value" in str(info.value)


def test_dict_round_trip_is_validated():
    config = apply_override(Config(), "rewards.reasoning_floor=0.01")
    assert from_dict(Config, to_dict(config)) == config
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        from_dict(Config, {"rewards": {"bogus": 1}})


def test_recipe_file_loads_by_name_and_path(tmp_path):
    assert load_config("humaniqa").name == "humaniqa"
    path = tmp_path / "mine.py"
    path.write_text("from jaxbiqa.config import Config\n\ndef get_config():\n    return Config(name='mine', seed=3)\n")
    assert load_config(str(path), ["seed=4"]).seed == 4
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_recipe")
    bad = tmp_path / "bad.py"
    bad.write_text("X = 1\n")
    with pytest.raises(ConfigError, match="must define get_config"):
        load_config(str(bad))


def test_config_command_prints_resolved_json(capsys):
    assert cli.main(["config", "--config", "humaniqa", "--set", "seed=5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["seed"] == 5 and printed["name"] == "humaniqa"
    assert cli.main(["config", "--set", "nope=1"]) == 2
    assert "unknown config key 'nope'" in capsys.readouterr().err
