"""Optuna studies from a sweep file: `wash-sweeps study` and `wash-sweeps study-report`.

    wash-sweeps study sweeps/wash_p.yaml --n-trials 30 --workers 2      # runs/studies/wash-p/
    wash-sweeps study sweeps/wash_p.yaml --n-trials 30                  # same command: continues
    wash-sweeps study sweeps/acc_vs_bytes.yaml --n-trials 40 --track mlflow,wandb
    wash-sweeps study sweeps/wash_p.yaml --n-trials 8 --nproc-per-trial 4  # each trial: torchrun
    wash-sweeps study sweeps/wash_p.yaml --n-trials 40 --workers 8 --gpus auto   # 2 per GPU on 4
    wash-sweeps study sweeps/wash_p.yaml --n-trials 100 \\
        --storage postgresql+psycopg2://USER@HOST:5432/DB             # one per machine, shared DB
    PGPASSWORD=... wash-sweeps study ...      # the password from the environment, never argv
    WASH_SWEEPS_STORAGE=postgresql+psycopg2://USER:PW@HOST/DB wash-sweeps study ...   # or so
    wash-sweeps study-report --out runs/studies/wash-p                  # PNG figures
    optuna-dashboard --host 127.0.0.1 runs/studies/wash-p/optuna-journal.log

Storage: by default Optuna's journal file `<out>/optuna-journal.log` (safe for several local
processes); `--storage` (or the environment variable WASH_SWEEPS_STORAGE) takes an SQLite or
PostgreSQL URL, or another journal file path. The study is created once before any worker starts
(workers racing on a fresh schema crash). The URL reaches the worker processes through their
environment, never their command line, and is printed with its password as `***`.

Each trial is `train_and_evaluate` in `<out>/trials/trial-<number>`; it reports the sweep's
metric every epoch and may be pruned (single objective); several objectives use NSGA-II with no
pruning. With `--nproc-per-trial K` a trial is a torchrun job of K processes: its evaluations are
read from its metrics.jsonl as they are written, reported and pruned the same way (a pruned job
is stopped).

The modules, in the order a study runs:
    cli.py       the flags, the command from sweep file to study_summary.json
    storage.py   storage URL, sampler, pruner, the study created once, the slot lock
    workers.py   the loop each worker runs (the --n-trials cap), the worker processes
    trial.py     one trial: train, report, prune, tell the study how it ended
    recovery.py  heartbeats, stale trials failed and retried
    summary.py   study_summary.json, the console lines, the parent run's params
    report.py    `study-report`: the figures
"""

from .cli import add_arguments, run
from .recovery import used_slots
from .storage import JOURNAL_NAME, make_sampler, open_storage, sampler_seed, shared_study

__all__ = [
    "JOURNAL_NAME",
    "add_arguments",
    "make_sampler",
    "open_storage",
    "run",
    "sampler_seed",
    "shared_study",
    "used_slots",
]
