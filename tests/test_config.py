"""The config: presets as deltas, construction from dict / YAML / CLI, loud one-line errors."""

import pytest

from wash_sweeps.config import ConfigError, TrainConfig, field_names
from wash_sweeps.presets import PRESETS, preset


def test_every_preset_builds_and_is_a_delta_over_the_default():
    default = TrainConfig()
    for name, delta in PRESETS.items():
        cfg = preset(name)
        assert cfg.preset == name
        for field in field_names():
            if field not in delta and field != "preset":
                assert getattr(cfg, field) == getattr(default, field), (name, field)


def test_cifar_presets_follow_papas_protocol():
    c = preset("cifar10-resnet18")
    assert (c.model, c.lr, c.momentum, c.weight_decay, c.batch_size, c.epochs, c.n_members) == (
        "resnet18",
        0.1,
        0.9,
        1e-4,
        64,
        300,
        5,
    )
    assert preset("cifar100-resnet18").weight_decay == 5e-4


def test_from_dict_coerces_strings_and_keeps_base():
    cfg = TrainConfig.from_dict(
        {
            "preset": "digits",
            "p": "3e-3",
            "n_members": "4",
            "shuffle_buffers": "true",
            "epochs": 2.0,
        }
    )
    assert cfg.dataset == "digits" and cfg.p == 0.003 and cfg.n_members == 4
    assert cfg.shuffle_buffers is True and cfg.epochs == 2


def test_from_yaml_and_cli(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: mnist1d-fast\nmethod: papa\npapa_rate: 0.05\n")
    cfg = TrainConfig.from_yaml(f)
    assert cfg.method == "papa" and cfg.papa_rate == 0.05 and cfg.epochs == 40
    cli = TrainConfig.from_cli(["--config", str(f), "--set", "seed=3"])
    assert cli.seed == 3 and cli.method == "papa"
    assert TrainConfig.from_cli(["--preset", "digits", "--set", "p=0.1"]).p == 0.1


def test_round_trip_through_dict():
    cfg = preset("cifar10-short").replace(seed=7)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_frozen():
    with pytest.raises(AttributeError):
        TrainConfig().p = 0.5


@pytest.mark.parametrize(
    "values,message",
    [
        ({"p": 1.5}, "p=1.5: must be <= 1.0"),
        ({"p": -0.1}, "p=-0.1: must be >= 0.0"),
        ({"lr": -1.0}, "lr=-1.0: must be > 0.0"),
        ({"n_members": 1}, "n_members=1: method 'wash' needs n_members >= 2"),
        (
            {"method": "soup"},
            "method='soup': allowed values are independent, wash, papa, papa_all, papa2, dart",
        ),
        ({"p_rob": 0.1}, "unknown config field 'p_rob'"),
        ({"epochs": "ten"}, "epochs='ten': expected int"),
        ({"shuffle_buffers": "maybe"}, "shuffle_buffers='maybe': expected a boolean"),
        ({"batch_size": 0}, "batch_size=0: must be >= 1"),
        ({"preset": "huge"}, "preset='huge': allowed presets are"),
        ({"model": "resnet18"}, "model='resnet18' does not take dataset='mnist1d'"),
        ({"lr": float("nan")}, "lr=nan: must be a finite number"),
        ({"track": "tensorboard"}, "track='tensorboard': allowed trackers are wandb, mlflow"),
        ({"device": "tpu"}, "device='tpu': allowed values are"),
        ({"synthetic_shape": "3by32"}, "synthetic_shape='3by32'"),
        ({"run_name": "a/b"}, "run_name='a/b': must be a plain directory name"),
        ({"layer_schedule": "cubic"}, "layer_schedule='cubic': allowed values are linear, uniform"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_field(values, message):
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict(values)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_independent_allows_a_single_member():
    assert TrainConfig(method="independent", n_members=1).n_members == 1


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("p: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainConfig.from_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        TrainConfig.from_yaml(lst)
    with pytest.raises(ConfigError, match="expected FIELD=VALUE"):
        TrainConfig.from_cli(["--set", "p"])
