"""The ``Demo``: runs the stages in order, records each one that finishes
(``stages/<name>.json``), reuses those a second run finds complete, and stops everything
it started (the Serve app, Serve, the Ray cluster) however the run ends."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from music_gen import outputs
from music_gen.errors import MusicGenError, UsageError
from music_gen.pipelines.demo import serving, stages
from music_gen.pipelines.demo.client import in_use
from music_gen.pipelines.demo.progress import StageOutput, Ticker
from music_gen.pipelines.demo.sizes import APP_NAME, DEFAULT, QUICK, STAGES, THREADS, Sizes
from music_gen.pipelines.demo.summary import stage_line, summarize

RUNS = {
    "synth": stages.synth_stage, "codec": stages.codec_stage,
    "tokenize": stages.tokenize_stage, "train": stages.train_stage,
    "tune": stages.tune_stage, "evaluate": stages.evaluate_stage,
    "registry": stages.registry_stage, "serve": serving.serve_stage,
}  # fmt: skip
"""What each stage runs, in ``STAGES`` order."""


class DemoInterrupted(MusicGenError):
    """Ctrl-C in a stage: everything the demo started is stopped; re-running goes on."""

    exit_code = 130


class Paths:
    """Where each stage writes, under the work directory."""

    def __init__(self, root: Path):
        self.root = root
        self.audio, self.codec, self.tokens = root / "audio", root / "codec", root / "tokens"
        self.runs, self.codec_runs, self.tune = root / "runs", root / "codec-runs", root / "tune"
        self.evaluation, self.served = root / "evaluation", root / "served"
        self.stages, self.logs, self.store = root / "stages", root / "logs", root / "mlflow.db"


class Demo:
    """The stages, their records and the cleanup; ``run()`` runs them all."""

    def __init__(
        self,
        workdir: str | Path,
        sizes: Sizes = DEFAULT,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        keep_serving: bool = False,
        codec: str | None = None,
        progress: bool = True,
        say: Callable[[str], None] = print,
    ):
        if codec not in (None, "train", "calibrate"):
            raise UsageError(f"codec must be 'train' or 'calibrate', got {codec!r}")
        self.paths = Paths(outputs.check_dir(workdir, "--workdir").resolve())
        self.sizes, self.host, self.port = sizes, host, port
        self.codec_method = codec or sizes.codec
        self.keep_serving, self.say = keep_serving, say
        # Bars only on a terminal (a log or a test's capture would get every redraw).
        self.progress = progress and sys.stderr is not None and sys.stderr.isatty()
        self.tracking_uri = f"sqlite:///{self.paths.store}"
        self.results: dict[str, dict] = {}
        self.reused: list[str] = []
        # Once a stage has run in this invocation, the stages after it run too, afresh.
        self.fresh = False
        self.fresh_downstream = False  # for the stage running now: an earlier one ran
        # What to stop at the end: Ray (connected by the demo; a local cluster of its own
        # unless RAY_ADDRESS named one), Serve (started by the demo), the app (deployed).
        self.connected = self.own_cluster = self.started_serve = self.deployed = False

    # -- the whole run -------------------------------------------------------------------------

    def run(self) -> dict:
        """Every stage (reusing finished ones), then the summary; returns the summary."""
        from music_gen.pipelines.train import TrainingInterrupted

        started = time.perf_counter()
        self._check_records()
        self._check_port()
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.say(
            f"music-gen demo ({self.sizes.name} sizes) in {self.paths.root}: "
            f"{len(STAGES)} stages, offline"
        )
        with self._environment(), self._stop_on_sigterm(), torch_threads(THREADS):
            try:
                for index, name in enumerate(STAGES, 1):
                    try:
                        self._stage(index, name)
                    except (KeyboardInterrupt, TrainingInterrupted) as exc:
                        raise DemoInterrupted(
                            f"interrupted in stage {index} ({name}); everything the demo "
                            "started is stopped: run the same command again to go on (the "
                            "finished stages are reused)"
                        ) from exc
                summary = self.summary(time.perf_counter() - started)
                for line in summary["lines"]:
                    self.say(line)
                outputs.write_text(
                    self.paths.root / "summary.json", json.dumps(summary, indent=1) + "\n"
                )
                if self.keep_serving:
                    serving.hold(self)
                return summary
            finally:
                self._shutdown()

    def _stage(self, index: int, name: str) -> None:
        label = f"[{index}/{len(STAGES)}] {name:<9}"
        record = self._record(name)
        if record is not None and not self.fresh and not (name == "serve" and self.keep_serving):
            self.results[name] = record["result"]
            self.reused.append(name)
            self.say(f"{label} reused (done before in {record['seconds']:.0f} s): {record['line']}")
            return
        self.fresh_downstream, self.fresh = self.fresh, True
        started = time.perf_counter()
        with self._progress(label, name) as bar:
            result = RUNS[name](self, bar)
        seconds = time.perf_counter() - started
        line = stage_line(self, name, result)
        self.results[name] = result
        record = {"sizes": self.sizes.name, "seconds": seconds, "line": line, "result": result}
        self.paths.stages.mkdir(parents=True, exist_ok=True)
        outputs.write_text(self.paths.stages / f"{name}.json", json.dumps(record, indent=1) + "\n")
        self.say(f"{label} {seconds:5.0f} s  {line}")

    @contextlib.contextmanager
    def _progress(self, label: str, name: str) -> Iterator:
        """A transient bar on stderr, with the stage's own prints in ``logs/<name>.log``."""
        from tqdm import tqdm

        self.paths.logs.mkdir(parents=True, exist_ok=True)
        bar = tqdm(
            desc=label, total=None, leave=False, disable=not self.progress, file=sys.stderr,
            dynamic_ncols=True, bar_format="{desc} {bar} {n_fmt}/{total_fmt} {elapsed}{postfix}"
            if name in ("codec", "train", "tune") else "{desc} {elapsed}{postfix}",
        )  # fmt: skip
        saved = sys.stdout
        with open(self.paths.logs / f"{name}.log", "a") as log:
            sys.stdout = StageOutput(log, bar)
            try:
                with Ticker(bar) if self.progress else contextlib.nullcontext():
                    yield bar
            finally:
                sys.stdout = saved
                bar.close()

    def _record(self, name: str) -> dict | None:
        """The stage's record when it finished and its outputs are still there."""
        path = self.paths.stages / f"{name}.json"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if record.get("sizes") != self.sizes.name:
            return None
        if name == "codec" and record.get("result", {}).get("method") != self.codec_method:
            return None  # --codec asks for the other kind of codec
        paths = record.get("result", {}).get("outputs", [])
        return record if all(Path(p).exists() for p in paths) else None

    def _check_records(self) -> None:
        """A work dir made at other sizes is refused before anything runs."""
        for path in sorted(self.paths.stages.glob("*.json")):
            try:
                sizes = json.loads(path.read_text()).get("sizes")
            except (OSError, ValueError):
                continue
            if sizes and sizes != self.sizes.name:
                flag = "--quick" if sizes == "quick" else "no --quick"
                raise UsageError(
                    f"{self.paths.root} holds a demo made at {sizes} sizes ({flag}): use "
                    "another --workdir, or delete that one to start afresh"
                )

    def _check_port(self) -> None:
        """A busy port is refused before the stages, not after them (when the demo will
        start Serve itself: on a cluster of its own)."""
        import ray

        will_serve = self.keep_serving or self._record("serve") is None
        own = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
        if will_serve and own and in_use(self.host, self.port):
            raise UsageError(f"port {self.port} on {self.host} is in use: pass --port")

    @contextlib.contextmanager
    def _environment(self) -> Iterator[None]:
        """The demo's own MLflow store and work dir for every command it runs."""
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri, "MUSIC_GEN_WORK_DIR": str(self.paths.root)}
        # The sweep's local `mlflow server` would also start MLflow's job runner (nine
        # processes, about 30 CPU seconds on 2 cores) that nothing here uses.
        quiet_server = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        names = (*env, *quiet_server, "MLFLOW_REGISTRY_URI")
        saved = {name: os.environ.get(name) for name in names}
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
        os.environ.update(env)
        for name, setting in quiet_server.items():
            os.environ.setdefault(name, setting)
        try:
            yield
        finally:
            for name, old in saved.items():
                if old is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old
            with contextlib.suppress(ImportError):
                from music_gen.platform import tracking

                tracking._restore_global(saved["MLFLOW_TRACKING_URI"])

    @contextlib.contextmanager
    def _stop_on_sigterm(self) -> Iterator[None]:
        """A supervisor's stop (SIGTERM) cleans up as Ctrl-C does."""
        import signal

        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum, frame):
            raise KeyboardInterrupt

        saved = signal.signal(signal.SIGTERM, stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, saved)

    def ensure_ray(self) -> None:
        """Ray for a stage that needs it: this process's, else ``RAY_ADDRESS``'s, else a
        local cluster of the demo's own (stopped in ``_shutdown``)."""
        import ray

        from music_gen.platform import cluster

        if not ray.is_initialized():
            cluster.ensure_ray()
            self.connected, self.own_cluster = True, not os.environ.get("RAY_ADDRESS")
        cluster.quiet_libraries()

    def _shutdown(self) -> None:
        """The Serve app, Serve (when the demo started it) and Ray (likewise) are stopped."""
        import ray

        if not ray.is_initialized():
            return
        from ray import serve

        from music_gen.serve.board import drop_board

        with contextlib.suppress(Exception):
            if self.deployed:
                serve.delete(APP_NAME)
                drop_board(APP_NAME)
            if self.started_serve and not self.own_cluster:  # else Ray's shutdown ends it
                serve.shutdown()
        if self.connected:  # our local cluster ends; a joined one is only left
            ray.shutdown()

    def summary(self, seconds: float) -> dict:
        """What ran, the figures, where the files are and how to look at them."""
        return summarize(self, seconds)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def run_demo(
    workdir: str | Path, *, quick: bool = False, host: str = "127.0.0.1", port: int = 8000,
    keep_serving: bool = False, codec: str | None = None, progress: bool = True,
) -> dict:  # fmt: skip
    """Run the demo (see the module doc); returns its summary."""
    sizes = QUICK if quick else DEFAULT
    demo = Demo(
        workdir, sizes, host=host, port=port, keep_serving=keep_serving, codec=codec,
        progress=progress,
    )  # fmt: skip
    return demo.run()
