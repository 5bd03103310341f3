"""A table of bad inputs (CLI flags, config YAML, sweep files, run-directory files, storage URLs):
each exits 2 with one line naming the field or file, no traceback, and leaves an earlier finished
run exactly as it was. In-process (cheap); nothing here trains."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from wash_sweeps.cli import main

GOOD_SWEEP = """
name: ok
preset: tiny
method: random
run_cap: 2
metric: {name: val/acc_avg, goal: maximize}
parameters:
  lr: {min: 0.01, max: 0.1}
"""

# --set FIELD=VALUE on `train`: (value, what the line must name)
SET_CASES = [
    ("epochs=0", "epochs"),
    ("epochs=-3", "epochs"),
    ("epochs=1.5", "epochs"),
    ("epochs=1.5e0", "epochs"),
    ("epochs=1e400", "epochs"),
    ("epochs=abc", "epochs"),
    ("epochs=nan", "epochs"),
    ("lr=0", "lr"),
    ("lr=-1", "lr"),
    ("lr=inf", "lr"),
    ("lr=nan", "lr"),
    ("p=1.5", "p="),
    ("p=-0.1", "p="),
    ("momentum=1.0", "momentum"),
    ("method=sgd", "method"),
    ("method=wash,papa", "method"),
    ("n_members=1", "n_members"),
    ("n_members=0", "n_members"),
    ("n_members=100000", "n_members"),
    ("batch_size=0", "batch_size"),
    ("dataset=imagenet", "dataset"),
    ("model=resnet18", "model"),
    ("model=transformer", "model"),
    ("device=cudafoo", "device"),
    ("device=gpu", "device"),
    ("device=cuda:x", "device"),
    ("track=tensorboard", "track"),
    ("track=wandb,foo", "track"),
    ("run_name=a/b", "run_name"),
    ("run_name=..", "run_name"),
    ("nosuchfield=1", "nosuchfield"),
    ("augment=maybe", "augment"),
    ("progress=2", "progress"),
    ("val_fraction=0.9", "val_fraction"),
    ("shuffle_every=0", "shuffle_every"),
    ("synthetic_shape=1x0", "synthetic_shape"),
    ("synthetic_shape=abc", "synthetic_shape"),
    ("layer_schedule=cubic", "layer_schedule"),
    ("optimizer=lbfgs", "optimizer"),
    ("wandb_mode=sometimes", "wandb_mode"),
    ("mlflow_uri=http://u:secret@h:5000", "mlflow_uri"),
    ("barrier_points=1", "barrier_points"),
    ("seed=-1", "seed"),
    ("epochs", "--set"),
]

# whole `train` / `study` command lines
ARG_CASES = [
    (["train", "--preset", "nosuch"], "preset"),
    (["train", "--config", "/nonexistent.yaml"], "nonexistent.yaml"),
    (["train", "--resume", "/nonexistent-run"], "--resume"),
    (["study", "/nonexistent-sweep.yaml"], "nonexistent-sweep.yaml"),
    (["study", "{sweep}", "--workers", "0"], "--workers"),
    (["study", "{sweep}", "--n-trials", "0"], "--n-trials"),
    (["study", "{sweep}", "--heartbeat", "0"], "--heartbeat"),
    (["study", "{sweep}", "--heartbeat", "-5"], "--heartbeat"),
    (["study", "{sweep}", "--heartbeat", "10", "--grace", "5"], "--grace"),
    (["study", "{sweep}", "--heartbeat", "10", "--grace", "10"], "--grace"),
    (["study", "{sweep}", "--max-retry", "-1"], "--max-retry"),
    (["study", "{sweep}", "--study-name", "../../escape"], "--study-name"),
    (["study", "{sweep}", "--study-name", "a/b"], "--study-name"),
    (["study", "{sweep}", "--study-name=-rf"], "--study-name"),
    (["study", "{sweep}", "--set", "epochs=0"], "epochs"),
    (["study", "{sweep}", "--set", "nosuch=1"], "nosuch"),
    (["study", "{sweep}", "--track", "foo"], "track"),
    (["study", "{sweep}", "--storage", "postgresql+psycopg2://u:pw@127.0.0.1:1/db"], "--storage"),
    (["study", "{sweep}", "--storage", "nosuchdialect://x/y"], "--storage"),
    (["study", "{sweep}", "--storage", "sqlite:////nonexistent-dir/x/y.db"], "--storage"),
    (["study-report"], "--out"),
    (["study-report", "--out", "/nonexistent-study"], "does not exist"),
]

# sweep files: (body, what the line must name)
SWEEP_CASES = [
    ("[1, 2]", "mapping"),
    ("method: grid", "parameters"),
    ("method: annealing\nparameters: {lr: {values: [0.1]}}", "method"),
    ("method: random\nmetric: {name: val/acc_avg}\nparameters: {}", "parameters"),
    (
        "method: random\nmetric: {name: val/nosuch, goal: maximize}\n"
        "parameters: {lr: {min: 0.01, max: 0.1}}",
        "val/nosuch",
    ),
    (
        "method: random\nmetric: {name: test/acc_avg, goal: maximize}\n"
        "parameters: {lr: {min: 0.01, max: 0.1}}",
        "test/acc_avg",
    ),
    (
        "method: random\nmetric: {name: val/acc_avg, goal: up}\n"
        "parameters: {lr: {min: 0.01, max: 0.1}}",
        "goal",
    ),
    ("method: random\nmetric: val/acc_avg\nparameters: {lr: {min: 0.01, max: 0.1}}", "metric"),
    (
        "method: random\nmetric: {name: val/acc_avg, goal: maximize}\n"
        "parameters: {nosuch: {values: [1]}}",
        "nosuch",
    ),
    (
        "method: random\nmetric: {name: val/acc_avg, goal: maximize}\n"
        "parameters: {lr: {min: 0.1, max: 0.01}}",
        "lr",
    ),
    (
        "method: random\nmetric: {name: val/acc_avg, goal: maximize}\n"
        "parameters: {n_members: {distribution: q_uniform, min: 2, max: 6, q: 1.5}}",
        "n_members",
    ),
    (
        "method: random\nmetric: {name: val/acc_avg, goal: maximize}\n"
        "parameters: {lr: {distribution: q_uniform, min: 0.1, max: 0.5, q: 0}}",
        "q",
    ),
    (
        "method: random\nmetric: {name: val/acc_avg, goal: maximize}\n"
        "parameters: {lr: {distribution: log_uniform_values, min: 0, max: 0.5}}",
        "lr",
    ),
    (
        "method: random\nmetric: {name: val/acc_avg, goal: maximize}\n"
        "parameters: {epochs: {min: 1.5, max: 3.5, distribution: uniform}}",
        "epochs",
    ),
    (
        "method: random\nmetric: {name: val/acc_avg, goal: maximize}\n"
        "parameters: {method: {values: [sgd]}}",
        "method",
    ),
    (
        "method: grid\nmetric: {name: val/acc_avg, goal: maximize}\n"
        "parameters: {lr: {min: 0.01, max: 0.1}}",
        "lr",
    ),
    (
        "method: random\nmetric: {name: val/acc_avg, goal: maximize}\nearly_terminate: 3\n"
        "parameters: {lr: {min: 0.01, max: 0.1}}",
        "early_terminate",
    ),
    (
        "method: random\nmetric: {name: val/acc_avg, goal: maximize}\n"
        "early_terminate: {type: median}\nparameters: {lr: {min: 0.01, max: 0.1}}",
        "early_terminate",
    ),
    (
        "name: ../../escape\nmethod: random\nmetric: {name: val/acc_avg, goal: maximize}\n"
        "parameters: {lr: {min: 0.01, max: 0.1}}",
        "name",
    ),
    (
        "name: a/b\nmethod: random\nmetric: {name: val/acc_avg, goal: maximize}\n"
        "parameters: {lr: {min: 0.01, max: 0.1}}",
        "name",
    ),
    (
        "method: random\nmetric: {name: val/acc_avg, goal: maximize}\nrun_cap: -1\n"
        "parameters: {lr: {min: 0.01, max: 0.1}}",
        "run_cap",
    ),
    (
        "method: random\nmetric: {name: val/acc_avg, goal: maximize}\nnosuchkey: 1\n"
        "parameters: {lr: {min: 0.01, max: 0.1}}",
        "nosuchkey",
    ),
    (
        "method: random\nmetric: {name: val/acc_avg, goal: maximize}\npreset: nosuch\n"
        "parameters: {lr: {min: 0.01, max: 0.1}}",
        "preset",
    ),
    (
        "method: random\nmetric: {name: val/acc_avg, goal: maximize}\n"
        "parameters: {lr: {min: 0.01, max: 0.1}}\nconditions: {p: {method: wash}}",
        "conditions",
    ),
    ("method: [random", "YAML"),
]

# config YAML for `train --config`: (bytes, what the line must name)
YAML_CASES = [
    (b"epochs: 0\n", "epochs"),
    (b"- 1\n- 2\n", "mapping"),
    (b"epochs: [1\n", "YAML"),
    (b"\xff\xfeepochs: 1\n", "UTF-8"),
    (b"1: 2\nepochs: 1\n", "config key"),
    (b"nosuch: 1\n", "nosuch"),
    (b"epochs: 1.5\n", "epochs"),
    (b"preset: nosuch\n", "preset"),
    (b"mlflow_uri: postgresql://u:pw@h/db\n", "mlflow_uri"),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """An earlier finished run: no bad input may change it."""
    run = tmp_path_factory.mktemp("earlier") / "run"
    args = ["train", "--preset", "tiny", "--set", "epochs=1", "--set", "threads=1"]
    assert main([*args, "--workdir", str(run)]) == 0
    return run


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def expect_one_line(argv: list[str], named: str, finished: Path, capsys) -> None:
    before = digest(finished)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("wash-sweeps: error: ")
    assert named in lines[0], lines[0]
    assert digest(finished) == before


@pytest.mark.parametrize("item, named", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_bad_set_value(item, named, finished, capsys, tmp_path):
    argv = ["train", "--preset", "tiny", "--set", item, "--workdir", str(tmp_path / "r")]
    expect_one_line(argv, named, finished, capsys)


@pytest.mark.parametrize("argv, named", ARG_CASES, ids=[" ".join(c[0]) for c in ARG_CASES])
def test_bad_command_line(argv, named, finished, capsys, tmp_path):
    sweep = tmp_path / "ok.yaml"
    sweep.write_text(textwrap.dedent(GOOD_SWEEP))
    argv = [a.replace("{sweep}", str(sweep)) for a in argv]
    if argv[0] == "study":
        argv += ["--out", str(tmp_path / "study")]
    expect_one_line(argv, named, finished, capsys)


@pytest.mark.parametrize(
    "body, named", SWEEP_CASES, ids=[f"sweep{i}" for i in range(len(SWEEP_CASES))]
)
def test_bad_sweep_file(body, named, finished, capsys, tmp_path):
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(body + "\n")
    expect_one_line(["study", str(sweep), "--out", str(tmp_path / "o")], named, finished, capsys)


@pytest.mark.parametrize(
    "data, named", YAML_CASES, ids=[f"yaml{i}" for i in range(len(YAML_CASES))]
)
def test_bad_config_yaml(data, named, finished, capsys, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(data)
    argv = ["train", "--config", str(path), "--workdir", str(tmp_path / "r")]
    expect_one_line(argv, named, finished, capsys)


def _copy(finished: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(finished, dest)
    return dest


RUN_DIR_CASES = [
    ("config.json", b"{not json", "config.json"),
    ("config.json", b'{"config": [1, 2]}', "config.json"),
    ("config.json", json.dumps({"config": {"epochs": 0}}).encode(), "epochs"),
    ("config.json", json.dumps({"config": {"nosuch": 1}}).encode(), "nosuch"),
    ("checkpoint.pt", b"garbage", "checkpoint.pt"),
    ("metrics.jsonl", None, "metrics.jsonl"),
]


@pytest.mark.parametrize(
    "name, data, named", RUN_DIR_CASES, ids=[f"rundir{i}" for i in range(len(RUN_DIR_CASES))]
)
def test_bad_run_directory_file(name, data, named, finished, capsys, tmp_path):
    run = _copy(finished, tmp_path / "copy")
    if data is None:  # a torn last line
        with (run / name).open("a") as f:
            f.write('{"step": 9, "epo')
    else:
        (run / name).write_bytes(data)
    (run / "summary.json").unlink()  # not finished: the resume must read the files
    expect_one_line(["train", "--resume", str(run)], named, finished, capsys)


def test_workdir_that_is_a_file(finished, capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    argv = ["train", "--preset", "tiny", "--workdir", str(tmp_path / "f")]
    expect_one_line(argv, "--workdir", finished, capsys)


def test_overwrite_refusal(finished, capsys):
    argv = ["train", "--preset", "tiny", "--set", "lr=0.3", "--workdir", str(finished)]
    expect_one_line(argv, "another config", finished, capsys)


def test_the_table_has_at_least_80_inputs():
    n = len(SET_CASES) + len(ARG_CASES) + len(SWEEP_CASES) + len(YAML_CASES) + len(RUN_DIR_CASES)
    assert n + 2 >= 80


# every command that reads a user's YAML file, through the one shared reader (`yaml_file`)
YAML_COMMANDS = {
    "config": ["train", "--config", "{file}", "--workdir", "{tmp}/r"],
    "sweep": ["study", "{file}", "--out", "{tmp}/o"],
    "showcase": ["showcase", "plan", "{file}", "--out", "{tmp}/o"],
    "params": ["grid", "{file}", "--out", "{tmp}/o"],
    "params (dvc-params)": ["dvc-params", "--params", "{file}", "--check"],
}
BAD_FILES = [
    ("latin-1", b"name: caf\xe9\n", "not UTF-8"),
    ("utf-16", "epochs: 1\n".encode("utf-16"), "not UTF-8"),
    ("broken", b"a: [1\n", "not valid YAML"),
    ("directory", None, "does not exist"),
]


@pytest.mark.parametrize("what", list(YAML_COMMANDS))
@pytest.mark.parametrize("kind, data, named", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_every_yaml_file_is_read_in_one_line(what, kind, data, named, finished, capsys, tmp_path):
    path = tmp_path / "in.yaml"
    if data is None:
        path.mkdir()
    else:
        path.write_bytes(data)
    argv = [a.format(file=path, tmp=tmp_path) for a in YAML_COMMANDS[what]]
    expect_one_line(argv, named, finished, capsys)
    assert main(argv) == 2
    assert str(path) in capsys.readouterr().err  # the line names the file
