"""The command line as a user runs it: train, resume, fields, and one-line errors."""

import json
import subprocess
import sys

import pytest

from wash_sweeps.cli import main


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "wash_sweeps", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.slow
def test_train_then_resume_from_the_command_line(tmp_path):
    run_dir = tmp_path / "run"
    r = _cli(
        "train",
        "--preset",
        "tiny",
        "--set",
        "method=wash",
        "--set",
        "p=0.02",
        "--workdir",
        str(run_dir),
    )
    assert r.returncode == 0, r.stderr
    assert "test      averaged" in r.stdout and "val       averaged" in r.stdout
    assert "comm" in r.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["p"] == 0.02 and summary["config"]["method"] == "wash"
    again = _cli("train", "--resume", str(run_dir))
    assert again.returncode == 0, again.stderr
    assert (
        json.loads((run_dir / "summary.json").read_text())["val/acc_avg"] == summary["val/acc_avg"]
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "p=2"], "p=2.0: must be <= 1.0"),
        (["--set", "nmembers=3"], "unknown config field 'nmembers'; did you mean 'n_members'?"),
        (["--set", "zzz=3"], "unknown config field 'zzz'; (`wash-sweeps fields` lists every"),
        (["--preset", "nope"], "preset='nope': allowed presets are"),
        (["--preset", "tinny"], "preset='tinny': did you mean 'tiny'? allowed presets are"),
        (["--config", "/nonexistent.yaml"], "config file '/nonexistent.yaml' does not exist"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, capsys):
    assert main(["train", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert "papa_every" not in lines[0]  # the closest field, never the list of all of them


def test_version_names_the_package_and_its_commit(capsys):
    from wash_sweeps import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"wash-sweeps {__version__}") and "(git " in out


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def test_every_help_shows_defaults_and_an_example(capsys):
    from wash_sweeps.cli import COMMANDS, build_parser

    top = _help(capsys)
    assert "--version" in top and "examples:" in top
    for command, (_, _, example) in COMMANDS.items():
        assert f"example:\n  {example}" in _help(capsys, command), command
        assert example in top
        # an example is a command line that parses: its flags exist
        build_parser(command).parse_args(example.split("|")[0].split()[1:])
    study = _help(capsys, "study")
    assert "(default: 60)" in study and "(default: auto)" in study  # --grace, --pruner
    assert "(default: None)" not in study  # flags without a default say nothing
    assert "default: mnist1d-fast" in _help(capsys, "train")


def test_resume_of_a_non_run_directory(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no config.json there" in capsys.readouterr().err


def test_fields_lists_every_field_with_its_unit(capsys):
    assert main(["fields"]) == 0
    out = capsys.readouterr().out
    assert "per coordinate per shuffle" in out and "mnist1d-fast" in out
    assert "papa2 (pairwise averages" in out and "always on for method=dart" in out
    assert "align_at_end" in out
