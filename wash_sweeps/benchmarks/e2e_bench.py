"""Section `e2e`: whole runs through `train_and_evaluate`, and the wall time of the default demo.

- samples/s of a full short run (training samples over training time, as the run reports it,
  and over the whole wall time including data generation, evaluation and checkpoints), and the
  share of the run's wall time spent evaluating (6 epochs of mnist1d-fast, WASH, N = 5);
- the default demo (`wash-sweeps demo`: independent, papa, wash at their demo settings on the
  `demo` preset, digits, 15 epochs, two runs side by side). In --full mode it is run once and
  timed. Otherwise each method is warmed up once, then run for e1 and e2 epochs in interleaved
  rounds, and each run's time is extrapolated linearly from the medians, t(E) = t(e1) + (E - e1)
  (t(e2) - t(e1)) / (e2 - e1): every epoch costs the same (train + evaluate + checkpoint), the
  rest is a fixed set-up cost. Their sum is the demo's time one run at a time: an upper bound
  (the demo runs two at a time).
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from pathlib import Path
from typing import Any

from wash_sweeps.config import TrainConfig
from wash_sweeps.demo import SETTINGS
from wash_sweeps.train import train_and_evaluate

DEMO_METHODS = ("independent", "papa", "wash")
DEMO_EPOCHS = TrainConfig.from_preset("demo").epochs


def timed_run(cfg: TrainConfig, workdir: Path) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    summary = train_and_evaluate(cfg, workdir)
    return time.perf_counter() - start, summary


# --tiny: the tiny preset on synthetic data of MNIST-1D's shape (no dataset generation)
_TINY = {"dataset": "synthetic", "synthetic_shape": "1x40"}


def bench_run(preset: str, epochs: int, workdir: Path, **overrides: Any) -> dict[str, Any]:
    cfg = TrainConfig.from_preset(
        preset, epochs=epochs, progress=False, out_dir=str(workdir), **overrides
    )
    wall, s = timed_run(cfg, workdir / f"run-{preset}")
    samples = s["derived"]["steps_per_epoch"] * cfg.epochs * cfg.batch_size * cfg.n_members
    return {
        "preset": preset,
        "method": cfg.method,
        "n_members": cfg.n_members,
        "epochs": epochs,
        "wall_s": wall,
        "train_s": s["time/train_s"],
        "eval_s": s["time/eval_s"],
        # the run's own wall time (from its start to its end, as summary.json reports it)
        "eval_share": s["time/eval_s"] / s["time/wall_s"],
        "train_samples_per_s": s["time/samples_per_s"],
        "wall_samples_per_s": samples / wall,
    }


def demo_extrapolated(
    preset: str, e1: int, e2: int, target: int, workdir: Path, repeats: int = 3, **overrides: Any
) -> dict[str, Any]:
    """Each method once untimed (first-call costs: imports, cached shuffle tables), then `repeats`
    interleaved rounds of (e1, e2) epochs; the slope and the times are medians over the rounds."""

    def run(method: str, epochs: int, tag: str) -> float:
        cfg = TrainConfig.from_preset(
            preset, **SETTINGS[method], method=method, epochs=epochs, progress=False,
            out_dir=str(workdir), **overrides,
        )  # fmt: skip
        return timed_run(cfg, workdir / f"demo-{method}-{epochs}-{tag}")[0]

    for method in DEMO_METHODS:
        run(method, e1, "warmup")
    times: dict[str, dict[int, list[float]]] = {m: {e1: [], e2: []} for m in DEMO_METHODS}
    for r in range(repeats):
        for method in DEMO_METHODS:
            for e in (e1, e2):
                times[method][e].append(run(method, e, str(r)))
    per_method = {}
    for method, t in times.items():
        slopes = [(b - a) / (e2 - e1) for a, b in zip(t[e1], t[e2], strict=True)]
        per_epoch = statistics.median(slopes)
        t1 = statistics.median(t[e1])
        per_method[method] = {
            "epoch_s": per_epoch,
            "fixed_s": t1 - e1 * per_epoch,
            "estimate_s": t1 + (target - e1) * per_epoch,
        }
    return {
        "how": f"extrapolated from {e1} and {e2} epochs of {preset} to {target} "
        f"(medians of {repeats} interleaved rounds after a warm-up)",
        "preset": preset,
        "epochs": target,
        "per_method": per_method,
        "wall_s": sum(m["estimate_s"] for m in per_method.values()),
    }


def demo_measured(workdir: Path) -> dict[str, Any]:
    from wash_sweeps.cli import main

    start = time.perf_counter()
    # its table and progress bars are not the benchmark's output
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["demo", "--out-dir", str(workdir / "demo")])
    if rc:
        raise RuntimeError(f"wash-sweeps demo exited with {rc}")
    return {
        "how": "measured once: wash-sweeps demo",
        "preset": "demo",
        "epochs": TrainConfig.from_preset("demo").epochs,
        "wall_s": time.perf_counter() - start,
    }


def bench_e2e(tiny: bool, full: bool, workdir: Path, device: str = "cpu") -> dict[str, Any]:
    if tiny:
        return {
            "run": bench_run("tiny", 2, workdir, device=device, **_TINY),
            "demo": demo_extrapolated("tiny", 1, 4, DEMO_EPOCHS, workdir, device=device, **_TINY),
        }
    return {
        "run": bench_run("mnist1d-fast", 6, workdir, device=device),  # issue 15's run
        "demo": demo_measured(workdir)
        if full
        else demo_extrapolated("demo", 1, 3, DEMO_EPOCHS, workdir, device=device),
    }
