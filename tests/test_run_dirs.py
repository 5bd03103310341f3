"""No run is lost: default run directories carry a hash of the result-changing config, a fresh
run refuses to write over a finished run or a run of another config unless --overwrite, and
--resume needs a checkpoint."""

from __future__ import annotations

from pathlib import Path

from wash_sweeps.cli import main
from wash_sweeps.config import TrainConfig

TINY = ["--preset", "tiny", "--set", "epochs=1", "--set", "threads=1"]


def train(*args: str) -> int:
    return main(["train", *TINY, *args])


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_the_default_name_hashes_only_result_changing_fields():
    base = TrainConfig.from_preset("tiny")
    assert base.default_run_name.startswith("mnist1d-wash-N3-p0.01-s0-")
    assert base.replace(threads=3, out_dir="x", track="mlflow").default_run_name == (
        base.default_run_name
    )
    assert base.replace(lr=0.2).default_run_name != base.default_run_name


def test_two_configs_keep_two_run_directories(tmp_path, capsys):
    out = tmp_path / "runs"
    assert train("--set", "lr=0.05", "--set", f"out_dir={out}") == 0
    assert train("--set", "lr=0.2", "--set", f"out_dir={out}") == 0
    assert len(list(out.glob("*/summary.json"))) == 2


def test_writing_over_another_config_is_refused_unless_asked(tmp_path, capsys):
    run = tmp_path / "run"
    assert train("--set", "lr=0.05", "--workdir", str(run)) == 0
    before = (run / "summary.json").read_bytes()
    assert train("--set", "lr=0.2", "--workdir", str(run)) == 2
    line = one_line(capsys.readouterr().err)
    assert "another config" in line and "lr" in line and "--overwrite" in line
    assert (run / "summary.json").read_bytes() == before
    assert train("--set", "lr=0.2", "--workdir", str(run), "--overwrite") == 0
    assert '"lr": 0.2' in (run / "summary.json").read_text()


def test_a_finished_run_is_not_started_again(tmp_path, capsys):
    run = tmp_path / "run"
    assert train("--workdir", str(run)) == 0
    before = (run / "metrics.jsonl").read_bytes()
    assert train("--workdir", str(run)) == 2
    assert "a finished run" in one_line(capsys.readouterr().err)
    assert (run / "metrics.jsonl").read_bytes() == before
    assert main(["train", "--resume", str(run)]) == 0  # --resume reads it back
    assert (run / "metrics.jsonl").read_bytes() == before


def test_a_run_control_change_is_the_same_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert train("--workdir", str(run), "--set", "checkpoint_every=0") == 0
    (run / "summary.json").unlink()  # as if killed before the end
    assert train("--workdir", str(run), "--set", "progress=false") == 0


def test_resume_needs_a_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert train("--workdir", str(run)) == 0
    (run / "checkpoint.pt").unlink()
    assert main(["train", "--resume", str(run)]) == 2
    assert "no checkpoint.pt" in one_line(capsys.readouterr().err)
    assert main(["train", "--resume", str(Path(tmp_path / "nowhere"))]) == 2
    assert "no such directory" in one_line(capsys.readouterr().err)


def test_load_averaged_is_the_runs_averaged_model_ready_for_inference(tmp_path):
    import json
    import pickle

    import pytest
    import torch

    from wash_sweeps import ConfigError, load_averaged
    from wash_sweeps.data import load_data
    from wash_sweeps.metrics import accuracy, logits_of

    run_dir = tmp_path / "run"
    assert (
        train("--set", "method=papa_all", "--set", "papa_all_every=1", "--workdir", str(run_dir))
        == 0
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    model = load_averaged(run_dir)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    data = load_data(TrainConfig.from_dict(summary["config"]))
    assert accuracy(logits_of(model, data.x_test, 1000), data.y_test) == pytest.approx(
        summary["test/acc_avg"]
    )
    # a run written before config.json recorded the model's shape reads it off its dataset
    saved = json.loads((run_dir / "config.json").read_text())
    del saved["derived"]["in_shape"], saved["derived"]["n_classes"]
    (run_dir / "config.json").write_text(json.dumps(saved))
    again = load_averaged(run_dir).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())
    # weights_only: a planted pickle is refused in one line, nothing in it runs
    (run_dir / "averaged.pt").write_bytes(pickle.dumps(print, protocol=2))
    with pytest.raises(ConfigError, match="not an averaged model"):
        load_averaged(run_dir)
    with pytest.raises(ConfigError, match="not a finished run"):
        load_averaged(tmp_path)
