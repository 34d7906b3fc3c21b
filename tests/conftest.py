"""Shared test settings: no telemetry, no network, GPU tests skipped without a GPU."""

import os
import tempfile

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from two threads, and on a shared 2-core machine OpenMP's
# spinning threads slow every small op down by up to 10x.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# pytest-xdist (the unit tier): each worker keeps its own numba cache for this run.
# librosa jit-compiles with cache=True into site-packages, and two workers compiling the
# same function at once left a cache there that crashed every later load (SIGSEGV, in a
# clean-clone run of `make test`).
if _worker := os.environ.get("PYTEST_XDIST_WORKER"):
    _run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "run")
    os.environ.setdefault(
        "NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"music-gen-numba-{_run}-{_worker}")
    )

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
