"""`wash-sweeps showcase`: the shipped sweeps/showcase.yaml, bad showcase files (one line, exit 2),
and tune -> plan -> grid end to end on a tiny spec (real Optuna studies in subprocesses, the
journal storage read back, the planned runs trained).

    .venv/bin/python -m pytest -q tests/test_showcase.py                 # ~45 s on 2 cores
    .venv/bin/python -m pytest -q tests/test_showcase.py -m "not slow"   # ~4 s
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from wash_sweeps.cli import main
from wash_sweeps.config import ConfigError
from wash_sweeps.grid import grid_configs
from wash_sweeps.showcase import tune as tune_mod
from wash_sweeps.showcase.spec import load_showcase, parse_showcase
from wash_sweeps.showcase.tune import study_dir, sweep_of
from wash_sweeps.sweep_spec import load_spec

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "sweeps" / "showcase.yaml"

# a showcase that trains in seconds: tiny MNIST-1D, 512 samples, one epoch
TINY = {
    "metric": "val/acc_avg",
    "n_members": 3,
    "tuning_seed": 100,
    "seeds": [0, 1],
    "workers": 1,
    "jobs": 1,
    "methods": {
        "independent": {},
        "wash": {"p": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.1}},
        "papa": {"papa_rate": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.5}},
    },
    "tasks": {
        "mini": {
            "preset": "tiny",
            "trials": 2,
            "set": {"n_train": 512, "epochs": 1},
            "fronts": {"wash": {"p": [0.001, 0.1]}},
            "map": {"p": [0.001, 0.1], "epochs": [1], "n_members": [2]},
        }
    },
}
TUNED = ("wash", "papa")  # the methods of TINY with knobs


def write_spec(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def journal(where: Path):
    backend = JournalFileBackend(str(where / "optuna-journal.log"))
    return optuna.storages.JournalStorage(backend)


# --- the shipped file ---------------------------------------------------------------------------


def test_shipped_showcase_loads_and_its_studies_are_fair(tmp_path):
    spec = load_showcase(SHIPPED)
    assert spec.tasks and spec.methods
    assert spec.tuning_seed not in spec.seeds  # reported seeds are fresh
    assert spec.metric.startswith("val/")
    for task in spec.tasks.values():
        for method, knobs in spec.methods.items():
            if not knobs:
                continue
            # each study is an ordinary sweep file over the method's own knobs, on the tuning seed
            path = tmp_path / f"{task.name}-{method}.yaml"
            path.write_text(yaml.safe_dump(sweep_of(spec, task, method), sort_keys=False))
            sweep = load_spec(path)
            assert sweep.metric == spec.metric and sweep.metric.startswith("val/")
            assert sweep.goal == "maximize"
            assert {p.name for p in sweep.params} == set(knobs)
            assert sweep.base["seed"] == spec.tuning_seed
            assert sweep.base["method"] == method
            assert sweep.base["n_members"] == spec.n_members
            assert sweep.base["preset"] == task.preset


def test_shipped_tune_gives_every_method_the_task_budget(tmp_path, monkeypatch):
    """The same number of trials for every method of a task, every study on the tuning seed;
    the studies are recorded (not run) by replacing the subprocess call."""
    spec = load_showcase(SHIPPED)
    calls: list[list[str]] = []

    def fake_run(cmd, *a, **kw):
        calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(tune_mod.subprocess, "run", fake_run)
    assert main(["showcase", "tune", str(SHIPPED), "--out", str(tmp_path)]) == 0
    tuned = [m for m, k in spec.methods.items() if k]
    assert len(calls) == len(spec.tasks) * len(tuned)

    def flag(cmd: list[str], name: str) -> str:
        return cmd[cmd.index(name) + 1]

    for task in spec.tasks.values():
        mine = [c for c in calls if Path(c[c.index("study") + 1]).parts[-4] == task.name]
        assert len(mine) == len(tuned)
        budgets = {int(flag(c, "--n-trials")) for c in mine}
        assert budgets == {task.trials}  # the budget is per task, not per method
        for cmd in mine:
            assert int(flag(cmd, "--seed")) == spec.tuning_seed
            sweep_file = Path(cmd[cmd.index("study") + 1])
            method = sweep_file.parent.name
            assert sweep_file.parent == study_dir(tmp_path, task.name, method)
            assert Path(flag(cmd, "--out")) == sweep_file.parent
            assert load_spec(sweep_file).base["seed"] == spec.tuning_seed
        assert not study_dir(tmp_path, task.name, "independent").exists()


# --- bad showcase files ---------------------------------------------------------------------------


def _edit(where: str, value):
    """TINY with `where` (dotted path) set to `value`."""
    raw = copy.deepcopy(TINY)
    *parents, last = where.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return raw


BAD = {
    "unknown top-level key": (_edit("bogus", 1), "bogus"),
    "unknown task key": (_edit("tasks.mini.bogus", 1), "tasks.mini.bogus"),
    "bad preset": (_edit("tasks.mini.preset", "no-such-preset"), "tasks.mini.preset"),
    "no preset": (_edit("tasks.mini.preset", None), "tasks.mini.preset"),
    "zero trials": (_edit("tasks.mini.trials", 0), "tasks.mini.trials"),
    "bool trials": (_edit("tasks.mini.trials", True), "tasks.mini.trials"),
    "tuning seed among seeds": (_edit("tuning_seed", 1), "tuning_seed"),
    "front axis of another method": (
        _edit("tasks.mini.fronts", {"wash": {"papa_every": [1]}}),
        "tasks.mini.fronts.wash.papa_every",
    ),
    "front of an unlisted method": (
        _edit("tasks.mini.fronts", {"papa_all": {"papa_all_every": [1]}}),
        "tasks.mini.fronts.papa_all",
    ),
    "front axis without values": (
        _edit("tasks.mini.fronts", {"wash": {"p": []}}),
        "tasks.mini.fronts.wash",
    ),
    "bad front value": (_edit("tasks.mini.fronts", {"wash": {"p": [-1.0]}}), "fronts.wash.p"),
    "map field not a config field": (_edit("tasks.mini.map.bogus", [1]), "tasks.mini.map.bogus"),
    "map value not a list": (_edit("tasks.mini.map.p", 0.01), "tasks.mini.map.p"),
    "bad map value": (_edit("tasks.mini.map.n_members", [0]), "tasks.mini.map.n_members"),
    "set field not a config field": (_edit("tasks.mini.set.bogus", 1), "tasks.mini.set.bogus"),
    "bad set value": (_edit("tasks.mini.set.epochs", 0), "tasks.mini.set.epochs"),
    "metric on the test split": (_edit("metric", "test/acc_avg"), "metric"),
    "metric not emitted": (_edit("metric", "val/nope"), "metric"),
    "unknown method": (_edit("methods.sgd", {}), "methods.sgd"),
    "no methods": (_edit("methods", {}), "methods"),
    "empty seeds": (_edit("seeds", []), "seeds"),
    "negative seed": (_edit("seeds", [0, -1]), "seeds"),
    "n_members 1": (_edit("n_members", 1), "n_members"),
    "no tasks": (_edit("tasks", {}), "tasks"),
    "bad task name": (_edit("tasks", {"a/b": TINY["tasks"]["mini"]}), "tasks"),
    "bad knob": (_edit("methods.wash", {"bogus": {"values": [1]}}), "methods.wash.bogus"),
    "bad knob range": (
        _edit("methods.wash", {"p": {"distribution": "log_uniform_values", "min": 0, "max": 1}}),
        "methods.wash.p",
    ),
}


@pytest.mark.parametrize("raw, named", BAD.values(), ids=list(BAD))
def test_bad_showcase_is_a_config_error_naming_the_field(raw, named, tmp_path):
    path = write_spec(tmp_path / "showcase.yaml", raw)
    with pytest.raises(ConfigError) as e:
        load_showcase(path)
    assert named in str(e.value)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("step", ["plan", "tune"])
@pytest.mark.parametrize("raw, named", list(BAD.values())[:8], ids=list(BAD)[:8])
def test_bad_showcase_on_the_command_line_is_one_line_exit_2(raw, named, step, tmp_path, capsys):
    path = write_spec(tmp_path / "showcase.yaml", raw)
    out = tmp_path / "out"
    assert main(["showcase", step, str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wash-sweeps: error:") and err.count("\n") == 1, err
    assert named in err
    assert not out.exists()  # nothing tuned or planned


def test_the_tiny_spec_is_valid():
    """The bad cases above differ from TINY in one field only."""
    spec = parse_showcase(copy.deepcopy(TINY), Path("tiny.yaml"))
    assert spec.tasks["mini"].trials == 2 and list(spec.methods) == ["independent", *TUNED]


@pytest.mark.parametrize(
    "argv, named",
    [
        (["showcase", "plan", "{tmp}/missing.yaml"], "missing.yaml"),
        (["showcase", "tune", "{tmp}/missing.yaml"], "missing.yaml"),
        (["showcase", "tune", "{spec}", "--task", "nope"], "--task 'nope'"),
        (["showcase", "plan", "{spec}"], "showcase tune"),  # nothing tuned yet
        (["showcase", "plan", "{notyaml}"], "not valid YAML"),
    ],
    ids=["plan missing file", "tune missing file", "unknown task", "plan before tune", "yaml"],
)
def test_bad_command_line_exit_2(argv, named, tmp_path, capsys):
    spec = write_spec(tmp_path / "showcase.yaml", TINY)
    notyaml = tmp_path / "bad.yaml"
    notyaml.write_text("tasks: [unclosed\n")
    fill = {"tmp": str(tmp_path), "spec": str(spec), "notyaml": str(notyaml)}
    argv = [a.format(**fill) for a in argv] + ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("wash-sweeps: error:") and err.count("\n") == 1, err
    assert named in err
    assert not (tmp_path / "out" / "grid.yaml").exists()


# --- end to end on the tiny spec ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """TINY tuned once for this module: (spec path, output directory)."""
    root = tmp_path_factory.mktemp("showcase")
    path = write_spec(root / "showcase.yaml", TINY)
    out = root / "out"
    assert main(["showcase", "tune", str(path), "--out", str(out)]) == 0
    return path, out


def _study(out: Path, method: str):
    where = study_dir(out, "mini", method)
    return optuna.load_study(study_name=f"mini-{method}", storage=journal(where))


@pytest.mark.slow
def test_tune_then_plan_then_grid(tuned):
    path, out = tuned
    assert not study_dir(out, "mini", "independent").exists()  # nothing to tune
    best: dict[str, dict] = {}
    for method in TUNED:
        where = study_dir(out, "mini", method)
        summary = json.loads((where / "study_summary.json").read_text())
        study = _study(out, method)
        trials = study.get_trials()
        assert len(trials) == summary["n_trials"] == 2
        assert any(t.state == TrialState.COMPLETE for t in trials)
        for t in trials:  # every trial on the tuning seed, never a reported one
            run_dir = Path(t.user_attrs["run_dir"])
            config = json.loads((run_dir / "config.json").read_text())["config"]
            assert config["seed"] == 100
            assert config["method"] == method and config["n_members"] == 3
            assert config["n_train"] == 512 and config["epochs"] == 1
        best[method] = study.best_trial.params
        assert set(best[method]) == set(TINY["methods"][method])
        assert summary["best_trial"]["params"] == best[method]

    assert main(["showcase", "plan", str(path), "--out", str(out)]) == 0
    grid_yaml = out / "grid.yaml"
    params = yaml.safe_load(grid_yaml.read_text())
    roles = json.loads((out / "roles.json").read_text())
    runs = params["runs"]
    names = [cfg.run_dir().name for cfg in grid_configs(params, out / "runs")]
    assert len(set(names)) == len(names)  # a run wanted twice is listed once
    assert set(roles) == set(names)
    by_name = dict(zip(names, runs, strict=True))
    for name, run in by_name.items():
        assert roles[name]["task"] == "mini" and roles[name]["method"] == run["method"]
        assert run["preset"] == "tiny" and run["n_train"] == 512
        assert run["seed"] in (0, 1)  # never the tuning seed

    report = {n: r for n, r in by_name.items() if "report" in roles[n]["roles"]}
    for method in ("independent", *TUNED):
        mine = [r for r in report.values() if r["method"] == method]
        assert sorted(r["seed"] for r in mine) == [0, 1]
        for r in mine:  # the chosen setting: the best trial's knob values, as they are
            assert {k: r[k] for k in best.get(method, {})} == best.get(method, {})
            assert r["n_members"] == 3 and r["epochs"] == 1
    # the seed-0 report runs are also the map's points at the task's own schedule
    for name, run in report.items():
        if run["seed"] == 0:
            assert set(roles[name]["roles"]) == {"report", "map"}, (name, roles[name])
        else:
            assert roles[name]["roles"] == ["report"]
    # WASH's front along p, at the map's p values too (seed 0, tuned knobs otherwise)
    fronts = {n: r for n, r in by_name.items() if "front" in roles[n]["roles"]}
    assert sorted(r["p"] for r in fronts.values()) == [0.001, 0.1]
    for name, run in fronts.items():
        assert run["method"] == "wash" and run["seed"] == 0
        assert set(roles[name]["roles"]) == {"front", "map"}
    # over N: WASH, naive averaging and PAPA at N=2 (seed 0, chosen knobs)
    small = {r["method"]: r for n, r in by_name.items() if r["n_members"] == 2}
    assert set(small) == {"wash", "independent", "papa"}
    for method, run in small.items():
        assert run["seed"] == 0
        assert {k: run[k] for k in best.get(method, {})} == best.get(method, {})
    # 6 report runs, 2 front/map runs of WASH, 3 at N=2: the rest coincide with them
    assert len(names) == 11

    # the planned grid trains (11 runs of one epoch on 512 samples: ~10 s on 2 cores)
    runs_dir = out / "runs"
    assert main(["grid", str(grid_yaml), "--out", str(runs_dir), "--jobs", "1"]) == 0
    assert set(json.loads((runs_dir / "grid.json").read_text())["runs"]) == set(roles)
    for name in names:
        summary = json.loads((runs_dir / name / "summary.json").read_text())
        assert summary["train/epoch"] == 1
        assert 0.0 <= summary["test/acc_avg"] <= 1.0


@pytest.mark.slow
def test_tune_again_adds_no_trials(tuned):
    path, out = tuned
    before = {m: len(_study(out, m).get_trials()) for m in TUNED}
    assert before == {"wash": 2, "papa": 2}
    assert main(["showcase", "tune", str(path), "--out", str(out), "--task", "mini"]) == 0
    for method in TUNED:
        assert len(_study(out, method).get_trials()) == 2
        summary = json.loads((study_dir(out, "mini", method) / "study_summary.json").read_text())
        assert summary["n_trials"] == 2
