"""Ray start-up and cluster checks: the one place that starts or joins a Ray cluster.

``ensure_ray()`` joins exactly the cluster the user means:

- Ray already initialised in this process (a test's cluster, a Tune trial, a Ray Job's
  driver): that one;
- an ``address`` argument, else ``RAY_ADDRESS``: that cluster;
- else a local cluster of our own (``address="local"``), never some other ``ray start``
  cluster that happens to run on the machine. Token authentication is on for it, set
  explicitly so that Ray has nothing to warn about.

Quiet by default: our commands print their own progress and summaries, while Ray's
logs (its workers' output, Ray Data's execution plans, start-up notices) stay in Ray's
log folder (``/tmp/ray/session_latest/logs``). ``--verbose`` (``MUSIC_GEN_VERBOSE=1``)
lets them through. Worker processes then reach the driver's terminal only through
``LineRelay``: what rank 0 of a training run prints as progress.
"""

from __future__ import annotations

import logging
import os
import threading

from music_gen.errors import ConfigError, MusicGenError

VERBOSE_ENV = "MUSIC_GEN_VERBOSE"


def verbose() -> bool:
    """Whether Ray's and the libraries' own logs should reach the terminal."""
    return os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes")


def set_verbose(on: bool) -> None:
    os.environ[VERBOSE_ENV] = "1" if on else "0"


def quiet_libraries() -> None:
    """Library loggers at warnings only (unless verbose): transformers and Ray Data log
    loading and execution plans at INFO."""
    if verbose():
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    for name in ("ray", "ray.train", "ray.tune", "transformers", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Ray Data keeps every record in ray-data.log (its own file handler) and echoes them
    # on the console: its execution plans and notices stay in the file.
    import ray.data  # noqa: F401 (configures the "ray.data" logger)

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - a dependency
        pass


def ensure_ray(address: str | None = None, *, num_cpus: float | None = None) -> None:
    """Use the Ray of this process, join ``address`` / ``RAY_ADDRESS``, or start a local one."""
    import ray

    quiet_libraries()
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    loud = verbose()
    options = {
        "logging_level": logging.INFO if loud else logging.WARNING,
        # Workers' stdout and stderr stay in their log files (Ray's log folder).
        "log_to_driver": loud,
    }
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        probe_address(address)
        ray.init(address=address, **options)
    else:
        _token_auth_on()
        local_cluster_env()
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **options)
    import ray.data

    # Ray Data's progress bars would interleave with our own progress lines.
    ray.data.DataContext.get_current().enable_progress_bars = False
    if not loud:
        _native_stderr_to_log_folder()


def local_cluster_env() -> None:
    """Settings for a Ray cluster this process starts on its own machine (its workers inherit
    this process's environment), unless the user set them.

    Ray Train's preemption watcher polls the cluster for spot nodes being taken back; a
    machine's own cluster has none, and the watcher's actor costs every run a process start
    (about 3 s of a 20 s tiny run on two cores)."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def check_address(address: str | None = None) -> None:
    """Before any work: the cluster ``ensure_ray`` would join answers (``probe_address``).
    Nothing to check when Ray already runs in this process or no address is set."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        probe_address(address)


PROBE_TIMEOUT_S = 3.0
"""How long a cluster address may take to accept a TCP connection before we give up."""


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``ray://host:port``; None for ``auto``/``local``."""
    rest = address.split("://", 1)[1] if address.startswith("ray://") else address
    if "://" in rest or ":" not in rest:
        return None
    host, _, port = rest.rstrip("/").rpartition(":")
    if not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def probe_address(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Fail in one line, within seconds, when nothing listens at a ``host:port`` address.

    Ray itself retries for about 40 s and then raises an RPC error with a traceback.
    """
    target = _host_port(address)
    if target is None:
        return
    import socket

    try:
        with socket.create_connection(target, timeout=timeout_s):
            return
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
    source = "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") == address else "address"
    raise MusicGenError(
        f"no Ray cluster answers at {address} ({source}: {why}); start one there "
        "(`ray start --head`), fix the address, or unset RAY_ADDRESS to run locally"
    )


def _native_stderr_to_log_folder() -> None:
    """Ray's C++ core worker in this process writes notices straight to file descriptor 2
    (e.g. Ray Data's actors "have constructor arguments in the object store", which is
    how Ray Data itself starts them). Point descriptor 2 at a file in Ray's log folder,
    with Python's ``sys.stderr`` (our errors, progress bars) kept on the terminal."""
    import sys

    try:
        from ray._private.worker import _global_node

        logs = _global_node.get_logs_dir_path()  # None when joined through ray://
    except Exception:
        return
    if not logs or sys.stderr is None or not hasattr(sys.stderr, "fileno"):
        return
    try:
        if sys.stderr.fileno() != 2:
            return  # already moved (or not the process's own stderr)
    except (OSError, ValueError):
        return  # a captured stream (tests): nothing to move
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1, errors="backslashreplace")
    with open(os.path.join(logs, f"music-gen-driver-{os.getpid()}.err"), "ab") as log:
        os.dup2(log.fileno(), 2)
    sys.stderr = terminal


def _token_auth_on() -> None:
    """Token auth for our own local cluster (Ray's default), said explicitly so that Ray
    has nothing to warn about. Ray reads the mode into its config when imported: refresh
    it as Ray does when it turns the default on itself."""
    if "RAY_AUTH_MODE" in os.environ:
        return  # the user's choice
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import Config  # type: ignore[attr-defined]

    Config.initialize("")


def check_resources(
    num_workers: int, cpus_per_worker: float, use_gpu: bool = False, gpus_per_worker: float = 1.0
) -> None:
    """On a local cluster, a request it can never meet would wait forever: fail instead."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        return  # a real cluster may autoscale
    total = ray.cluster_resources()
    if use_gpu and total.get("GPU", 0) < gpus_per_worker * num_workers:
        raise ConfigError(
            f"train.use_gpu needs {gpus_per_worker * num_workers:g} GPUs, the cluster has "
            f"{total.get('GPU', 0):g}: set train.use_gpu=false"
        )
    if total.get("CPU", 0) < cpus_per_worker * num_workers:
        raise ConfigError(
            f"{num_workers} workers x train.cpus_per_worker={cpus_per_worker:g} exceed the "
            f"cluster's {total.get('CPU', 0):g} CPUs: lower train.cpus_per_worker (fractions work)"
        )


class _Lines:
    """A Ray actor holding lines written by workers until the driver reads them."""

    def __init__(self):
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)

    def read(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


class LineRelay:
    """Lines that workers write, printed by the driver: one copy, no ``(pid=...)`` prefix.

    The driver creates it and passes ``relay.actor`` to the workers, which call
    ``write_line(actor, text)``; ``with relay:`` prints what arrives from a thread
    until the block ends (then the rest).
    """

    def __init__(self, interval_s: float = 0.5):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # On the driver's node: a worker node that is lost mid-run must not take the
        # relay (and the progress lines of the restarted workers) with it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self.actor = ray.remote(num_cpus=0, scheduling_strategy=here)(_Lines).remote()
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)

    def __enter__(self) -> LineRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import ray

        self._stop.set()
        self._thread.join()
        try:
            self._print(ray.get(self.actor.read.remote()))
        finally:
            ray.kill(self.actor)

    def _pump(self) -> None:
        import ray

        while not self._stop.wait(self.interval_s):
            try:
                self._print(ray.get(self.actor.read.remote()))
            except Exception:  # the cluster is going away: the run's own error says why
                return

    @staticmethod
    def _print(lines: list[str]) -> None:
        for line in lines:
            print(line, flush=True)


def write_line(actor, text: str) -> None:
    """From a worker: one line for the driver to print (a no-op without a relay)."""
    if actor is None:
        print(text, flush=True)
        return
    actor.write.remote(text)
