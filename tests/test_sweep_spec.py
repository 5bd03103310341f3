"""Sweep files: shipped ones load; one file -> Optuna, W&B, DVC; bad files fail in one line."""

from __future__ import annotations

import glob
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from sweeps import schema_violations_from_proposed_config
from wash_sweeps.config import ConfigError, TrainConfig
from wash_sweeps.sweep_spec import dvc_grid, load_spec

# every sweep file in sweeps/ (showcase.yaml is the showcase's own file: tests/test_showcase.py)
SHIPPED = sorted(
    f
    for f in glob.glob(str(Path(__file__).parent.parent / "sweeps" / "*.yaml"))
    if Path(f).name != "showcase.yaml"
)

COND = textwrap.dedent(
    """
    preset: tiny
    method: random
    metric: {name: val/acc_avg, goal: maximize}
    parameters:
      method: {values: [independent, wash, papa]}
      p: {distribution: log_uniform_values, min: 0.001, max: 0.1}
      papa_rate: {values: [0.05, 0.1]}
      n_members: {min: 2, max: 4}
    conditions:
      p: {method: wash}
      papa_rate: {method: [papa]}
    """
)


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_sweep_files_load_and_are_valid_wandb_configs():
    assert len(SHIPPED) >= 4
    for f in SHIPPED:
        spec = load_spec(f)
        assert spec.base["preset"] in ("mnist1d-fast", "digits")  # the two CPU-scale tasks
        assert schema_violations_from_proposed_config(spec.wandb_config()) == []
        assert Path(f).read_text().startswith("#"), f"{f} needs a how-to-run header"
    multi = [load_spec(f) for f in SHIPPED if load_spec(f).multi_objective]
    assert multi and multi[0].directions == ["maximize", "minimize"]


def test_method_grid_expands_for_dvc():
    grid = dvc_grid(load_spec(Path(__file__).parent.parent / "sweeps" / "method_grid.yaml"))
    assert len(grid) == 30  # (5 baselines + WASH at 5 values of p) x 3 seeds
    seeds = (0, 1, 2)
    baselines = ("independent", "papa", "papa_all", "papa2", "dart")
    expected = {(m, None, s) for m in baselines for s in seeds}
    expected |= {("wash", p, s) for p in (0.001, 0.003, 0.01, 0.03, 0.1) for s in seeds}
    assert {(g["method"], g.get("p"), g["seed"]) for g in grid} == expected  # p only for WASH
    for g in grid:
        assert TrainConfig.from_dict(g).preset == "mnist1d-fast"


def test_conditions_drop_inactive_values_in_grid_and_resolve(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            """
            preset: tiny
            method: grid
            metric: {name: val/acc_avg, goal: maximize}
            parameters:
              method: {values: [independent, wash, papa]}
              p: {values: [0.01, 0.03]}
              papa_rate: {values: [0.1]}
            conditions:
              p: {method: wash}
              papa_rate: {method: papa}
            """,
        )
    )
    grid = spec.grid()
    assert grid == [
        {"method": "independent"},
        {"method": "wash", "p": 0.01},
        {"method": "wash", "p": 0.03},
        {"method": "papa", "papa_rate": 0.1},
    ]
    # W&B samples every parameter; the trial drops the ones that do not apply
    cfg = spec.resolve({"method": "independent", "p": 0.5, "papa_rate": 0.3})
    assert cfg.p == TrainConfig.from_preset("tiny").p
    assert cfg.papa_rate == TrainConfig.from_preset("tiny").papa_rate
    assert spec.resolve({"method": "wash", "p": 0.03}).p == 0.03


def test_optuna_define_by_run_follows_conditions(tmp_path):
    spec = load_spec(write(tmp_path, COND))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        params = spec.suggest(trial)
        assert ("p" in params) == (params["method"] == "wash")
        assert ("papa_rate" in params) == (params["method"] == "papa")
        assert 2 <= params["n_members"] <= 4 and isinstance(params["n_members"], int)
        if "p" in params:
            assert 0.001 <= params["p"] <= 0.1
        study.tell(trial, 0.0)
        spec.resolve(params)
    assert set(study.trials[0].distributions) >= {"method", "n_members"}


def test_set_overrides_fix_a_swept_field(tmp_path):
    spec = load_spec(write(tmp_path, COND), {"n_members": "3", "epochs": "1"})
    assert "n_members" not in {p.name for p in spec.params}
    assert spec.base["n_members"] == 3 and spec.base["epochs"] == 1
    assert spec.wandb_config()["parameters"]["n_members"] == {"value": 3}
    assert schema_violations_from_proposed_config(spec.wandb_config()) == []


def test_continuous_parameter_has_no_dvc_grid(tmp_path):
    with pytest.raises(ConfigError, match="continuous distribution"):
        dvc_grid(load_spec(write(tmp_path, COND)))


BASE = {
    "preset": "tiny",
    "method": "random",
    "metric": {"name": "val/acc_avg", "goal": "maximize"},
    "parameters": {"p": {"values": [0.01]}},
}


def with_(**changes):
    d = {**BASE, **changes}
    return {k: v for k, v in d.items() if v is not None}


def params(**p):
    return with_(parameters=p)


# (file content, a fragment the one-line message must contain)
INVALID = [
    ("- just\n- a list\n", "must be a mapping"),
    ("method: [grid\n", "not valid YAML"),
    (with_(method="hyperopt"), "method='hyperopt'"),
    (with_(method=None), "method=None"),
    (with_(parameters={}), "parameters: must be a non-empty"),
    (with_(parameters=None), "parameters: must be a non-empty"),
    (with_(colour="red"), "unknown top-level key 'colour'"),
    (with_(preset="cifar-huge"), "preset='cifar-huge'"),
    (params(preset={"values": ["tiny", "digits"]}), "parameter 'preset' must be a single value"),
    (params(lr_max={"values": [0.1]}), "parameter 'lr_max' is not a config field"),
    (params(p={"values": [0.01, 1.5]}), "p=1.5: must be <= 1.0"),
    (params(method={"values": ["wash", "swap"]}), "method='swap': allowed values"),
    (params(n_members={"values": [2, "many"]}), "n_members='many': expected int"),
    (params(p={"min": 0.1, "max": 0.01}), "min=0.1 must be less than max=0.01"),
    (
        params(p={"distribution": "log_uniform_values", "min": 0, "max": 0.1}),
        "log_uniform_values needs min > 0",
    ),
    (params(p={"distribution": "normal", "mu": 0, "sigma": 1}), "key 'mu' is not supported"),
    (
        params(p={"distribution": "beta", "min": 0, "max": 1}),
        "distribution 'beta' is not supported",
    ),
    (params(n_members={"distribution": "uniform", "min": 2, "max": 5}), "integer field"),
    (params(p={"distribution": "q_uniform", "min": 0, "max": 1}), "q_uniform needs q > 0"),
    (params(method={"min": 0, "max": 2}), "not numeric"),
    (params(p={"values": []}), "non-empty values"),
    (params(p=0.01), "must be a mapping"),
    (params(p={"distribution": "uniform", "min": "a", "max": 1}), "min and max must be numbers"),
    (with_(metric={"name": "accuracy", "goal": "maximize"}), "name='accuracy' is not a metric"),
    (with_(metric={"name": "val/acc_avg", "goal": "up"}), "goal='up'"),
    (with_(metric={"name": "test/acc_avg", "goal": "maximize"}), "tuning on the test split"),
    (with_(metric={"name": "member/2/test_acc", "goal": "maximize"}), "(member/2/val_acc)"),
    (
        with_(
            metric={"name": "comm/bytes_total", "goal": "minimize"},
            objectives=[
                {"name": "comm/bytes_total", "goal": "minimize"},
                {"name": "test/acc_ens", "goal": "maximize"},
            ],
        ),
        "objectives[1]: name='test/acc_ens': tuning on the test split is not allowed",
    ),
    (with_(metric=None), "metric: missing"),
    (with_(objectives=[{"name": "val/acc_avg", "goal": "maximize"}]), "at least two"),
    (
        with_(
            objectives=[
                {"name": "comm/bytes_total", "goal": "minimize"},
                {"name": "val/acc_avg", "goal": "maximize"},
            ]
        ),
        "must equal the first of objectives",
    ),
    (with_(conditions={"lr": {"method": "wash"}}), "'lr' is not a swept parameter"),
    (with_(conditions={"p": {"colour": "red"}}), "'colour' is not a config field"),
    (with_(conditions={"p": {"method": "swap"}}), "method='swap'"),
    (with_(early_terminate={"type": "asha", "min_iter": 1}), "only hyperband"),
    (with_(early_terminate={"type": "hyperband"}), "needs min_iter"),
    (with_(run_cap=0), "run_cap=0"),
    (with_(method="grid", parameters={"p": {"min": 0.001, "max": 0.1}}), "a grid needs values"),
    (params(n_members={"value": 1}, method={"value": "wash"}), "needs n_members >= 2"),
    (params(model={"value": "resnet18"}), "model='resnet18' does not take dataset='mnist1d'"),
]


@pytest.mark.parametrize(("content", "fragment"), INVALID, ids=[f for _, f in INVALID])
def test_invalid_sweep_file_is_rejected_in_one_line(tmp_path, content, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    msg = str(e.value)
    assert fragment in msg
    assert "\n" not in msg and msg.startswith(str(path))


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    good = write(tmp_path, COND)
    with pytest.raises(ConfigError, match="--set colour: unknown config field"):
        load_spec(good, {"colour": "red"})
    with pytest.raises(ConfigError, match="epochs='x': expected int"):
        load_spec(good, {"epochs": "x"})


def test_baselines_grid_conditions_the_merge_period_on_the_merging_methods():
    spec = load_spec(Path(__file__).parent.parent / "sweeps" / "baselines.yaml")
    grid = spec.grid()
    merging = ("papa_all", "papa2", "dart")
    for g in grid:
        assert ("papa_all_every" in g) == (g["method"] in merging)
        assert ("p" in g) == (g["method"] == "wash")
        spec.resolve(g)  # every combination is a valid config
    per_seed = {tuple(sorted((k, v) for k, v in g.items() if k != "seed")) for g in grid}
    assert len(grid) == 3 * len(per_seed) == 3 * (1 + 1 + 3 * 2 + 2)


def test_the_showcase_file_is_named_for_what_it_is():
    """`wash-sweeps study sweeps/showcase.yaml` says which command reads that file."""
    showcase = Path(__file__).parent.parent / "sweeps" / "showcase.yaml"
    with pytest.raises(ConfigError, match="a showcase file, not a sweep file: run `wash-sweeps"):
        load_spec(showcase)
