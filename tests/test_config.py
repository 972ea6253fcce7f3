"""Config: defaults, unknown keys with suggestions, cross-field rules, overrides, shipped YAMLs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from star_gate.config import (
    ConfigError,
    RunConfig,
    apply_override,
    config_to_yaml,
    load_config,
    read_config_tree,
)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_defaults_follow_the_paper():
    config = load_config(None)
    assert config.iterations == 3
    assert config.simulate.max_turns == 3
    assert config.simulate.conversations_per_pair == 10
    assert config.select.top_k == 1
    assert config.regularize.mode == "policy"
    assert config.train.learning_rate == 2e-5
    assert config.roles.questioner.temperature == 0.9 and config.roles.questioner.top_p == 0.9
    assert config.eval_max_turns == 3


def test_config_is_frozen():
    config = load_config(None)
    with pytest.raises(ValueError):
        config.seed = 3


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path):
    config = load_config(path)
    assert isinstance(config, RunConfig)


def test_configs_folder_is_not_empty():
    assert any(p.name == "tiny.yaml" for p in CONFIGS)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["simulate.max_turn=2"], "did you mean 'simulate.max_turns'?"),
        (["iteration=2"], "did you mean 'iterations'?"),
        (["roles.questioner.temprature=0.5"], "did you mean 'roles.questioner.temperature'?"),
        (["train.learnig_rate=1e-4"], "did you mean 'train.learning_rate'?"),
    ],
)
def test_unknown_key_names_closest_valid_key(overrides, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides)
    assert "unknown key" in str(caught.value)
    assert expected in str(caught.value)


def test_unknown_key_in_file_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("simulate:\n  conversations_per_pai: 4\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert "'simulate.conversations_per_pai'" in message
    assert "did you mean 'simulate.conversations_per_pair'?" in message


def test_unknown_key_without_close_match_has_no_suggestion():
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["zzzzqqqq=1"])
    assert "unknown key 'zzzzqqqq'" in str(caught.value)
    assert "did you mean" not in str(caught.value)


def test_top_k_above_n_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"select\.top_k \(3\) cannot exceed simulate\.conversations_per_pair \(2\)",
    ):
        load_config(None, ["select.top_k=3", "simulate.conversations_per_pair=2"])
    assert (
        load_config(None, ["select.top_k=2", "simulate.conversations_per_pair=2"]).select.top_k == 2
    )


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("simulate.max_turns=0", "simulate.max_turns"),
        ("iterations=0", "iterations"),
        ("roles.questioner.top_p=0", "roles.questioner.top_p"),
        ("roles.roleplayer.temperature=-1", "roles.roleplayer.temperature"),
        ("train.warmup_ratio=1", "train.warmup_ratio"),
        ("regularize.mode=sometimes", "regularize.mode"),
        ("roles.questioner.backend=vllm9", "roles.questioner.backend"),
        ("roles.questioner.prompt=no_such_prompt", "roles.questioner"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_field(override, field):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert str(caught.value).startswith(f"overrides: {field}")


def test_unknown_prompt_lists_choices():
    with pytest.raises(ConfigError, match="questioner_fewshot"):
        load_config(None, ["roles.questioner.prompt=no_such_prompt"])


def test_override_values_are_parsed_as_yaml():
    config = load_config(
        None,
        [
            "seed=7",
            "train.learning_rate=1e-4",
            "train.bf16=false",
            "data.max_tasks=null",
            "data.train_splits=[B, A]",
            "run_dir=runs/x=y",  # only the first '=' separates key and value
            "roles.questioner.model=some/model",
        ],
    )
    assert config.seed == 7
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert config.train.bf16 is False
    assert config.data.max_tasks is None
    assert config.data.train_splits == ("B", "A")
    assert config.run_dir == "runs/x=y"
    assert config.roles.questioner.model == "some/model"


def test_overrides_win_over_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\nsimulate: {max_turns: 2, conversations_per_pair: 4}\n")
    config = load_config(path, ["simulate.max_turns=5"])
    assert config.seed == 1
    assert config.simulate.max_turns == 5
    assert config.simulate.conversations_per_pair == 4


def test_partly_given_role_keeps_its_own_defaults():
    defaults = load_config(None).roles
    config = load_config(
        None, ["roles.roleplayer.mode=facts", "roles.judge.model=x", "roles.oracle.top_p=0.5"]
    )
    assert config.roles.roleplayer.mode == "facts"
    assert config.roles.roleplayer.temperature == defaults.roleplayer.temperature == 0.7
    assert config.roles.judge.model == "x"
    assert config.roles.judge.temperature == 0.0 and config.roles.judge.max_new_tokens == 4
    assert config.roles.oracle.top_p == 0.5
    assert config.roles.oracle.prompt == "oracle" and config.roles.oracle.max_new_tokens == 200
    assert config.roles.questioner == defaults.questioner


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_keep_unset_role_defaults(path):
    given = read_config_tree(path).get("roles", {})  # after following `base:`
    loaded, defaults = load_config(path).roles, RunConfig().roles
    for role in type(defaults).model_fields:
        kept = getattr(loaded, role)
        for field, default in getattr(defaults, role).model_dump().items():
            # (a role served by another backend has that backend's fields instead)
            if field not in given.get(role, {}) and field in type(kept).model_fields:
                assert getattr(getattr(loaded, role), field) == default, f"roles.{role}.{field}"


def test_a_config_can_start_from_a_base(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "seed: 3\nsimulate: {max_turns: 2, conversations_per_pair: 5}\n"
    )
    (tmp_path / "child.yaml").write_text("base: base.yaml\nsimulate: {max_turns: 4}\n")
    config = load_config(tmp_path / "child.yaml", ["seed=4"])
    assert (config.seed, config.simulate.max_turns, config.simulate.conversations_per_pair) == (
        4,
        4,
        5,
    )
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml: config file not found"):
        load_config(tmp_path / "orphan.yaml")


def test_apply_override_in_place():
    tree = {"a": {"b": 1}}
    apply_override(tree, "a.c.d=x")
    apply_override(tree, " a.b =2")
    assert tree == {"a": {"b": 2, "c": {"d": "x"}}}


def test_override_without_equals_is_refused():
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(None, ["seed"])


def test_override_through_a_value_is_refused():
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        load_config(None, ["seed=1", "seed.x=2"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == RunConfig()


def test_yaml_roundtrip(tmp_path):
    config = load_config(
        None, ["seed=3", "data.train_splits=[B, A]", "train.bf16=true", "evaluate.max_turns=2"]
    )
    path = tmp_path / "saved.yaml"
    path.write_text(config_to_yaml(config))
    assert load_config(path) == config
    assert yaml.safe_load(path.read_text())["data"]["train_splits"] == ["B", "A"]


def test_eval_max_turns_defaults_to_simulate():
    assert load_config(None, ["simulate.max_turns=2"]).eval_max_turns == 2
    assert load_config(None, ["simulate.max_turns=2", "evaluate.max_turns=4"]).eval_max_turns == 4


def test_model_validate_accepts_a_dict():
    config = RunConfig.model_validate({"iterations": 1, "simulate": {"max_turns": 2}})
    assert config.iterations == 1 and config.simulate.max_turns == 2


def test_paper_config_holds_the_papers_settings():
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "paper.yaml")
    train, distributed = config.train, config.train.distributed
    assert config.iterations == 3 and config.simulate.conversations_per_pair == 10
    assert (
        config.simulate.max_turns == 3
        and config.select.top_k == 1
        and config.regularize.mode == "policy"
    )
    assert (train.learning_rate, train.epochs, train.scheduler, train.warmup_ratio) == (
        2e-5,
        1,
        "cosine",
        0.1,
    )
    assert (train.max_length, train.validation_fraction, train.bf16, train.lora.enabled) == (
        1024,
        0.05,
        True,
        False,
    )
    assert train.batch_size * train.gradient_accumulation * distributed.num_processes == 256
    assert (config.roles.questioner.temperature, config.roles.questioner.top_p) == (0.9, 0.9)
    assert (
        "Mistral-7B" in config.roles.questioner.model
        and "Mixtral-8x7B" in config.roles.roleplayer.model
    )
    assert config.roles.oracle.model == config.roles.judge.model == "gpt-4-0613"
    assert (
        config.evaluate.judged_conversations_per_pair == 1
        and config.evaluate.judge_order == "random"
    )
    assert config.evaluate.conversations_per_pair == 10 and config.evaluate.random_persona


# -- typed roles ------------------------------------------------------------------------------------


def test_each_backend_has_its_own_role_fields():
    from star_gate.config import OpenAIRole, OtherRole, TransformersRole, TransformersRoleplayer

    config = load_config(
        None, ["roles.judge.backend=openai", "roles.judge.base_url=http://127.0.0.1:8080/v1"]
    )
    assert isinstance(config.roles.judge, OpenAIRole)
    assert config.roles.judge.temperature == 0.0 and config.roles.judge.prompt == "judge"  # kept
    assert isinstance(config.roles.questioner, TransformersRole)
    assert isinstance(config.roles.roleplayer, TransformersRoleplayer)
    fake = load_config(None, ["roles.roleplayer.backend=fake", "roles.roleplayer.mode=facts"])
    assert isinstance(fake.roles.roleplayer, OtherRole) and fake.roles.roleplayer.mode == "facts"
    assert not hasattr(fake.roles.roleplayer, "device")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["roles.judge.base_url=http://x"],
            "'roles.judge.base_url' is a field of backend openai only",
        ),
        (
            ["roles.questioner.backend=fake", "roles.questioner.device=cpu"],
            "'roles.questioner.device' is a field of backend transformers only",
        ),
        (
            ["roles.judge.backend=openai", "roles.judge.tensor_parallel_size=2"],
            "'roles.judge.tensor_parallel_size' is a field of backend vllm only",
        ),
        (
            ["roles.judge.bas_url=1"],
            "unknown key 'roles.judge.bas_url'; did you mean 'roles.judge.base_url'?",
        ),
    ],
)
def test_a_field_of_another_backend_is_refused_naming_its_backend(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_a_config_saved_before_roles_were_typed_still_loads_as_the_same_config():
    """Saved configs listed every backend's fields for every role, at their defaults."""
    old_fields = {
        "device": "auto", "dtype": "auto", "sample_dtype": "", "batch_size": 16,
        "tensor_parallel_size": 1, "gpu_memory_utilization": 0.85, "base_url": "",
        "api_key_env": "OPENAI_API_KEY", "max_concurrency": 4, "request_timeout": 60.0,
        "max_retries": 6, "logprobs": "auto", "chat_template": "",
    }  # fmt: skip
    tree = yaml.safe_load(config_to_yaml(load_config(None, [])))
    for role in tree["roles"].values():
        role.update(old_fields)
    assert RunConfig.model_validate(tree) == load_config(None, [])
    tree["roles"]["judge"]["base_url"] = "http://elsewhere"  # not a default: not silently dropped
    with pytest.raises(ValueError, match="base_url"):
        RunConfig.model_validate(tree)
