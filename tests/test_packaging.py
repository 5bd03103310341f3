"""Pins, lock file and conda environment agree with each other and with what is installed."""

import tomllib
from importlib import metadata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    pins = {}
    for r in reqs:
        assert "==" in r, f"dependency {r!r} is not pinned with =="
        name, version = r.split("==")
        pins[name.strip()] = version.strip()
    return pins


def test_every_dependency_is_pinned_and_installed_at_its_pin():
    for name, version in _pins().items():
        assert metadata.version(name) == version, name


def test_lock_file_agrees_with_the_pins():
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==")
            lock[name.lower().replace("_", "-")] = version
    for name, version in _pins().items():
        assert lock[name.lower().replace("_", "-")] == version, name


def test_environment_yml_is_python_311_and_installs_this_package():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip_section == ['-e ".[dev]"']
