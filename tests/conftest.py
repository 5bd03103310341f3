import os
import tempfile

import pytest
import torch

# no telemetry, no network lookups, nothing in the home directory
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# mnist1d imports matplotlib.pyplot, whose font cache would otherwise land in ~/.cache
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="wash-sweeps-mpl-"))
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)  # tests are many small runs: threads only fight over 2 cores
# ... and the runs' `threads = 0` (auto) keeps to that (runtime.auto_threads), here and in the
# subprocesses tests start; a test of the policy itself clears it
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def dataset_cache(tmp_path_factory):
    """Generated datasets are cached in a directory of this test session, never the home
    directory (subprocesses inherit it through the environment); tests of the cache itself set
    their own."""
    from wash_sweeps.cache import CACHE_ENV

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("dataset-cache")))
        yield


@pytest.fixture
def tiny_cfg(tmp_path):
    from wash_sweeps.config import TrainConfig

    def make(**kw):
        return TrainConfig.from_preset("tiny", out_dir=str(tmp_path / "runs"), **kw)

    return make
