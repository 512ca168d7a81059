"""Bad configs fail before compilation with messages that name the field and what is allowed."""

import pytest

from scaling.config import ConfigError, ModelConfig, RunConfig, describe_fields, load_config

from .conftest import run_cli


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["train.lrr=1"], r"unknown field train\.lrr; allowed fields of train: .*\blr\b"),
        (["model.d_model=abc"], r"model\.d_model: expected an integer, got 'abc'"),
        (["model.d_model=100", "model.n_heads=3"], r"model\.d_model=100 must be divisible by model\.n_heads=3"),
        (["train.tokens=0"], r"train\.tokens must be > 0, got 0"),
        (["data.source=/nonexistent/corpus"], r"data\.source: '/nonexistent/corpus' does not exist \(allowed: 'synthetic', 'stdlib', an existing path or a glob of shards\)"),
        (["train.schedule=linear"], r"train\.schedule: 'linear' is not allowed; allowed values: 'cosine', 'wsd', 'constant'"),
        (["model.moe.top_k=9"], r"model\.moe\.top_k=9 must be <= model\.moe\.n_experts=8"),
        (["model.preset=huge"], r"model\.preset: 'huge' is not allowed; allowed values: 10k, 100k"),
        (["train.tokens=100"], r"train\.tokens=100 is less than one step"),
        (["log.wandb=maybe"], r"log\.wandb: 'maybe' is not allowed"),
        (["bogus.x=1"], r"unknown field bogus; allowed fields: "),
    ],
)
def test_bad_config_names_the_field(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, overrides)


def test_defaults_fill_missing_fields(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: {d_model: 64, n_heads: 2}\ntrain: {lr: 3e-4}\n")
    cfg = load_config(p)
    assert cfg.model.d_model == 64 and cfg.model.n_layers == ModelConfig().n_layers
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)  # YAML reads 3e-4 as a string
    assert isinstance(cfg, RunConfig)
    with pytest.raises(Exception):
        cfg.train.lr = 1.0  # frozen


def test_preset_and_target_params_expand(tmp_path):
    cfg = load_config(None, ["model.preset=1m", "model.n_layers=3"])
    assert cfg.model.d_model == 128 and cfg.model.n_layers == 3
    cfg = load_config(None, ["model.target_params=1e5"])
    from scaling.model.accounting import count_params

    assert 6e4 < count_params(cfg.model).total < 1.6e5


def test_every_field_is_documented_in_train_help():
    p = run_cli("train", "--help")
    for name, _typ, doc in describe_fields():
        assert doc, f"{name} has no doc"
        assert name in p.stdout


def test_cli_bad_config_exits_2_without_training(tmp_path):
    p = run_cli("train", "--set", "model.d_model=30", "--set", "model.n_heads=4", "--out", str(tmp_path / "r"), check=False)
    assert p.returncode == 2
    assert "model.d_model=30 must be divisible by model.n_heads=4" in p.stderr
    assert not (tmp_path / "r").exists()


def test_example_config_loads():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "sweeps" / "example_run.yaml")
    assert cfg.data.source == "stdlib"
