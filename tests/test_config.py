import dataclasses
import json
from typing import Literal

import pytest

from jaxbiqa import cli
from jaxbiqa.config import Config, ConfigError, apply_override, from_dict, load_config, to_dict
from jaxbiqa.rewards import reward_specs


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = 1e-6
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    names: tuple[str, ...] = ("x",)
    pair: tuple[int, float] = (1, 2.0)
    limit: int | None = None


@dataclasses.dataclass(frozen=True)
class Outer:
    steps: int = 10
    inner: Inner = Inner()
    table: dict[str, float] = dataclasses.field(default_factory=lambda: {"a": 1.0})


def test_override_parses_by_declared_type():
    config = Outer()
    for assignment in ["steps=7", "inner.rate=3e-4", "inner.mode=b", "inner.flag=true", "inner.names=p,q",
                       "inner.pair=[3, 0.5]", "inner.limit=5", "table.b=2"]:
        config = apply_override(config, assignment)
    assert config == Outer(steps=7, inner=Inner(3e-4, "b", True, ("p", "q"), (3, 0.5), 5), table={"a": 1.0, "b": 2})
    assert isinstance(config.steps, int) and isinstance(config.inner.rate, float)
    assert apply_override(config, "inner.limit=none").inner.limit is None
    assert Outer().steps == 10  # the original is untouched (frozen)


@pytest.mark.parametrize("assignment, message", [
    ("stepz=1", "did you mean 'steps'"),
    ("inner.rat=1", "did you mean 'inner.rate'"),
    ("steps=1.5", "not an integer"),
    ("steps=ten", "not a int"),
    ("inner.flag=maybe", "not a boolean"),
    ("inner.mode=c", "not one of"),
    ("inner.pair=[1]", "expected 2 items"),
    ("inner=1", "cannot be set"),
    ("steps", "key.path=value"),
    ("steps.x=1", "is a value, not a section"),
])
def test_bad_override_is_a_clear_error(assignment, message):
    with pytest.raises(ConfigError, match=message):
        apply_override(Outer(), assignment)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        apply_override(Outer(), "inner.mod=a")
    assert "inner.mode" in str(info.value) and "inner.rate" in str(info.value)


def test_dict_round_trip_is_validated():
    config = apply_override(Config(), "rewards.params.reasoning.floor=0.01")
    assert from_dict(Config, to_dict(config)) == config
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        from_dict(Config, {"rewards": {"bogus": 1}})


def test_reward_terms_are_checked_against_the_registry():
    config = apply_override(Config(), "rewards.params.score.threshold=0.3")
    config = apply_override(config, "rewards.weights.format=0.5")
    specs = {s.name: s for s in reward_specs(config.rewards)}
    assert specs["score"].kwargs["threshold"] == 0.3 and specs["format"].weight == 0.5
    assert "format" not in {s.name for s in reward_specs(Config().rewards)}  # weight 0: off
    for assignment, message in [("rewards.params.score.threshold=abc", "is not a float"),
                                ("rewards.params.score.tresh=1", "did you mean 'threshold'"),
                                ("rewards.weights.scor=1", "did you mean 'score'"),
                                ("rewards.params.reasoning.measure=rouge", "not one of")]:
        with pytest.raises(ConfigError, match=message):
            reward_specs(apply_override(Config(), assignment).rewards)


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


def test_section_validation_becomes_a_config_error():
    with pytest.raises(ConfigError, match="data.global_batch_size.*must be >= 1"):
        apply_override(Config(), "data.global_batch_size=0")
    assert apply_override(Config(), "data.train=koniq:/x,synthetic:y").data.train == ("koniq:/x", "synthetic:y")


def test_partial_dict_keeps_the_section_defaults():
    config = from_dict(Config, {"rollout": {"pass1": {"top_k": 50}}})
    assert config.rollout.pass1.top_k == 50
    assert config.rollout.pass1.num_samples == Config().rollout.pass1.num_samples == 4
    assert config.rollout.pass1.stop_strings == ("</answer>",)


@pytest.mark.parametrize("assignment", [
    "sft.optim.learning_rate=nan", "optim.learning_rate=inf", "optim.learning_rate=-inf", "grpo.beta=nan",
    "grpo.clip_epsilon=nan", "rewards.weights.score=nan", "rewards.params.score.threshold=NaN", "eval.top_p=nan",
    "model.lora_alpha=inf", "runtime.compilation_cache_min_compile_secs=nan",
    "rewards.params.score.valid_range=[1, NaN]",
])
def test_non_finite_numbers_are_refused_at_config_time(assignment, capsys):
    """The probe: `--set sft.optim.learning_rate=nan` trained an all-NaN policy with exit code 0."""
    with pytest.raises(ConfigError, match="must be a finite number"):
        apply_override(Config(), assignment)
    assert cli.main(["config", "--set", assignment]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "finite" in err


def test_config_file_values_are_type_checked_like_set_values(tmp_path):
    with pytest.raises(ConfigError, match="Config.seed='abc': expected int"):
        Config(seed="abc")
    with pytest.raises(ConfigError, match="Config.output_dir=5: expected str"):
        Config(output_dir=5)
    with pytest.raises(ConfigError, match="OptimSection.learning_rate=nan: must be a finite number"):
        dataclasses.replace(Config().optim, learning_rate=float("nan"))
    config = Config(data=dataclasses.replace(Config().data, train=["synthetic:a"], max_pixels=200_704))
    assert config.data.train == ("synthetic:a",)  # a list in a file is the tuple --set gives
    assert "NaN" not in json.dumps(to_dict(config))
    path = tmp_path / "typed.py"
    path.write_text("from jaxbiqa.config import Config\n\n\ndef get_config():\n"
                    "    return Config(seed='abc', output_dir=5)\n")
    with pytest.raises(ConfigError, match=rf"{path}:5: ConfigError: Config.seed='abc'"):
        load_config(str(path))


def test_numeric_ranges_are_checked_where_declared():
    for assignment, message in [("model.lora_dropout=1.5", "lora_dropout"), ("eval.temperature=0", "temperature"),
                                ("data.max_pixels=100000000000", "max_pixels"), ("eval.top_p=2", "top_p"),
                                ("train.max_consecutive_skipped_updates=-1", "max_consecutive_skipped_updates")]:
        with pytest.raises(ConfigError, match=message):
            apply_override(Config(), assignment)


def test_config_file_errors_name_the_file_and_line(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("from jaxbiqa.config import Config\n\ndef get_config(:\n    return Config()\n")
    with pytest.raises(ConfigError, match=rf"{broken}:3: syntax error"):
        load_config(str(broken))
    raising = tmp_path / "raising.py"
    raising.write_text("from jaxbiqa.config import Config\n\n\ndef get_config():\n    return Config(nope=1)\n")
    with pytest.raises(ConfigError, match=rf"{raising}:5: TypeError: .*unexpected keyword argument 'nope'"):
        load_config(str(raising))
    assert cli.main(["config", "--config", str(raising)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{raising}:5" in err and "Traceback" not in err
    with pytest.raises(ConfigError):  # --debug shows the traceback: the error propagates
        cli.main(["config", "--config", str(raising), "--debug"])


def test_a_config_path_that_does_not_exist_is_an_error(tmp_path, monkeypatch):
    """The probe: `--config /some/dir/demo_cpu.py` (no such file) silently loaded configs/demo_cpu.py."""
    with pytest.raises(ConfigError, match=rf"config file {tmp_path}/demo_cpu.py not found .*--config demo_cpu"):
        load_config(str(tmp_path / "demo_cpu.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="config file demo_cpu.py not found"):
        load_config("demo_cpu.py")
    assert load_config("demo_cpu").name == "demo_cpu"  # a bare name is a recipe of configs/
