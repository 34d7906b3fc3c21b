"""One local Ray cluster for the whole integration session, sized for a 2-core machine.

Every integration test that needs Ray takes the ``ray_cluster`` fixture. It reuses a
cluster that is already initialised in this process (and then leaves it running),
otherwise starts a fresh local one (``address="local"``: never a cluster that
``RAY_ADDRESS`` points at) and shuts it down when the session ends.
"""

import logging
import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

NUM_CPUS = 2


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from music_gen.platform.cluster import local_cluster_env

    started = False
    if not ray.is_initialized():
        local_cluster_env()  # as `music-gen` starts a local cluster
        ray.init(
            address="local",
            num_cpus=NUM_CPUS,
            num_gpus=0,
            include_dashboard=False,
            logging_level=logging.WARNING,
            # As the CLI runs it: workers' output stays in Ray's log folder, so one
            # test's lingering actors (Ray Train's PlacementGroupCleaner) cannot print
            # into the next test's captured stderr.
            log_to_driver=False,
            # Small object store: the tests move little data and /dev/shm may be small.
            object_store_memory=512 * 1024**2,
        )
        started = True
    # Ray Data's progress bars only clutter test logs.
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()
