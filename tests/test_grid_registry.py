"""A grid kind is one file: a kind registered from outside the package is validated, planned (overrides, recipe,
whole steps, stable run ids) and shown by `sweep plan` like the built-in kinds, with no other change."""

from pathlib import Path

import pytest
import yaml

from scaling.config import ConfigError
from scaling.sweep.grids import PointGrid, grid_kinds, register_grid, unregister_grid
from scaling.sweep.schema import size_dict
from scaling.sweep.spec import parse_sweep, plan_sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def paired_kind():
    @register_grid("paired")
    class Paired(PointGrid):
        """Each size trains once, on its own token count: sizes[i] at tokens[i] (a Kaplan-style ladder)."""

        uses = frozenset({"tokens"})

        def validate(self, spec):
            g = spec.grid
            if not g.sizes or len(g.sizes) != len(g.tokens):
                raise ConfigError(f"grid.tokens: a paired grid needs one token count per size, got {len(g.tokens)} for {len(g.sizes)} sizes")

        def points(self, spec, base, added):
            return [(i, size_dict(s, i), (None, float(D), None)) for i, (s, D) in enumerate(zip(spec.grid.sizes, spec.grid.tokens))]

    yield Paired
    unregister_grid("paired")


def _raw(**grid):
    raw = yaml.safe_load((ROOT / "sweeps" / "tiny_isoflop.yaml").read_text())
    raw["base"]["log"] = {"wandb": "disabled"}
    raw["grid"] = grid
    raw["overrides"] = [{"match": {"size": 1}, "set": {"train.lr": 0.004}}]
    return raw


def test_a_grid_kind_registered_outside_the_package_plans_like_a_built_in_one(paired_kind, tmp_path, capsys):
    sizes, tokens = [1e4, 3e4, 1e5], [2e5, 5e5, 1e6]
    spec = parse_sweep(_raw(kind="paired", sizes=sizes, tokens=tokens))
    plan = plan_sweep(spec, n_devices=1)
    assert [r.size_index for r in plan] == [0, 1, 2]
    tps = [r.config.model.seq_len * r.config.train.batch_size for r in plan]
    # D is the pair's token count rounded to whole steps: within half a step of it
    assert all(abs(r.tokens - D) <= t / 2 for r, D, t in zip(plan, tokens, tps))
    assert plan[0].n_params < plan[1].n_params < plan[2].n_params
    # the recipe set every lr from N, and the override won where it matched (size 1)
    assert plan[1].config.train.lr == 0.004 and plan[0].config.train.lr > plan[2].config.train.lr != 0.004
    # the same points under the built-in explicit kind are the same runs when the grid is one size per token count
    explicit = plan_sweep(parse_sweep(_raw(kind="explicit", sizes=[sizes[0]], tokens=[tokens[0]])), n_devices=1)
    assert explicit[0].run_id == plan[0].run_id
    # its own refusal, the shared one for a field it does not read, and `sweep plan` from the command line
    with pytest.raises(ConfigError, match="one token count per size"):
        parse_sweep(_raw(kind="paired", sizes=sizes, tokens=tokens[:2]))
    with pytest.raises(ConfigError, match=r"grid\.budgets is not used by grid\.kind='paired'"):
        parse_sweep(_raw(kind="paired", sizes=sizes, tokens=tokens, budgets=[1e12]))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(_raw(kind="paired", sizes=sizes, tokens=tokens)))
    from scaling.cli import main

    assert main(["sweep", "plan", str(tmp_path / "sweep.yaml")]) == 0
    out = capsys.readouterr().out
    assert all(r.run_id in out for r in plan)


def test_an_unknown_kind_lists_the_registered_ones(paired_kind):
    assert list(grid_kinds())[:4] == ["isoflop", "explicit", "tokens_per_param", "wsd_branches"]
    with pytest.raises(ConfigError, match=r"grid\.kind: 'zipped' is not allowed; allowed values: 'isoflop', 'explicit', 'tokens_per_param', 'wsd_branches', 'paired'"):
        parse_sweep(_raw(kind="zipped", sizes=[1e4], tokens=[1e6]))
