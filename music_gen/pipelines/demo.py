"""``music-gen demo``: the whole platform end to end, offline, in stages.

Each stage calls the platform's own API, the one its command calls:

=====  ==========  ==================================================================
stage  name        what runs (the command that does the same)
=====  ==========  ==================================================================
1      synth       captioned synthetic music (``data synth``)
2      codec       k-means calibration (``codec calibrate``), or with ``codec="train"``
                   an EnCodec codec trained with Ray Train (``codec train``)
3      tokenize    the audio to Parquet shards of codes with Ray Data (``data tokenize``)
4      train       a small language model with Ray Train and MLflow (``train``)
5      tune        a 2-trial Ray Tune sweep fine-tuning it over the learning rate (``tune``)
6      evaluate    validation loss, prompt adherence and FAD of the trained model and of
                   the sweep's best (``evaluate``)
7      registry    both registered, the better one promoted to ``production`` behind the
                   registry's gate (``registry register``, ``registry promote``)
8      serve       Ray Serve from ``models:/music-gen@production`` (``serve``), prompts
                   sent over HTTP on the loopback, each answer's audio and spectrogram
                   written, the answers classified by ear (the audio classifier)
=====  ==========  ==================================================================

Everything lives in the work directory (default ``work/demo``): the data, the codec,
the runs, MLflow's sqlite store (``mlflow.db``) and what the server answered. A stage
that finished writes ``stages/<name>.json`` (its figures and outputs); a second run
skips every stage whose record and outputs are there, saying so, and re-runs the rest
(a stage after one that ran again starts afresh). ``--keep-serving`` leaves the server
up until Ctrl-C. Ctrl-C at any point stops what runs: the Serve app, and the Ray
cluster when the demo started it, are shut down.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from music_gen import outputs
from music_gen.errors import MusicGenError, UsageError

MODEL_NAME = "music-gen"
"""The registered model (as ``configs/serve/local.yaml`` serves it)."""
APP_NAME = "music-gen-demo"
EXPERIMENT = "music-gen-demo"
STAGES = ("synth", "codec", "tokenize", "train", "tune", "evaluate", "registry", "serve")
THREADS = 1
"""Torch threads of every worker and of the demo's own process. On a busy 2-core machine
two threads contend for the cores: measured here under load, a step of the quick model
took 1.7 s with two threads and 0.03 s with one; a codec step 8.9 s and 0.48 s."""
WORKER_CPUS = 1.5
"""CPUs a training worker reserves: one worker (two DDP workers on 2 busy cores waited for
data 40% of the time and stepped slower than one), half a core left to Ray Data."""
CLASSES = ("sine_pad", "saw_bass", "bell", "noise_drums")
"""Four synth classes far apart in timbre and register (as ``benchmarks/learn.py``)."""


@dataclass(frozen=True)
class Sizes:
    """How big each stage is. ``DEFAULT`` fits about 10 minutes on 2 cores."""

    name: str
    clips: int
    """Synth clips (the classes cycle)."""
    seconds: float
    """Length of each clip (and of each tokenized segment)."""
    codec: str
    """``calibrate`` (k-means codebooks, random decoder) or ``train`` (Ray Train). Both
    sizes calibrate: at the demo's sizes a trained codec is not worth its minutes (300
    steps on 2 busy cores took 5.4 of the run's 13.6 minutes and reached -2.25 dB
    held-out SI-SNR, its reconstructions classified by ear no better than chance);
    ``--codec train`` trains one anyway."""
    codec_steps: int
    """Steps of ``--codec train``."""
    codec_batch: int
    cardinality: int
    """Codes per codebook (4 codebooks)."""
    model: tuple[str, ...]
    """Dotted overrides of the language model's size."""
    train_steps: int
    train_batch: int
    train_lr: float
    train_samples: int
    """Audio samples generated and logged to MLflow at the end of training."""
    tune_steps: int
    """Fine-tuning steps of each of the sweep's 2 trials."""
    eval_per_class: int
    """Generations per class for prompt adherence."""
    eval_seconds: float
    fad_clips: int
    serve_seconds: float
    """Length of each clip asked of the server."""
    serve_per_class: int
    """Prompts sent per class."""


SYNTH_MODEL = (
    "model.dim=128", "model.num_layers=4", "model.num_heads=4", "model.max_frames=200",
    "model.text.dim=256", "model.text.num_layers=2", "model.text.num_heads=4",
)  # fmt: skip
"""configs/model/synth.yaml: the model that learns the synth classes (benchmarks/learn.py)."""

DEFAULT = Sizes(
    name="default", clips=160, seconds=4.0, codec="calibrate", codec_steps=300, codec_batch=16,
    cardinality=128, model=SYNTH_MODEL, train_steps=400, train_batch=16, train_lr=2e-3,
    train_samples=2, tune_steps=20, eval_per_class=4, eval_seconds=2.0, fad_clips=16,
    serve_seconds=3.0, serve_per_class=1,
)  # fmt: skip
QUICK = Sizes(
    name="quick", clips=24, seconds=2.0, codec="calibrate", codec_steps=30, codec_batch=8,
    cardinality=64,
    model=(
        "model.dim=64", "model.num_layers=2", "model.num_heads=4", "model.max_frames=100",
        "model.text.dim=64", "model.text.num_layers=1", "model.text.num_heads=4",
    ),
    train_steps=40, train_batch=8, train_lr=3e-3, train_samples=0, tune_steps=4,
    eval_per_class=2, eval_seconds=1.0, fad_clips=8, serve_seconds=1.0, serve_per_class=1,
)  # fmt: skip
SIZES = {"default": DEFAULT, "quick": QUICK}


class DemoInterrupted(MusicGenError):
    """Ctrl-C in a stage: everything the demo started is stopped; re-running goes on."""

    exit_code = 130


# --- progress on the terminal ---------------------------------------------------------------


STEP_LINE = re.compile(r"^\[(train|codec)\] step (\d+)/(\d+)")
VAL_LINE = re.compile(r"^\[(train|codec)\] step \d+ (val_loss [\d.]+|held-out SI-SNR [-\d.]+ dB)")


class StageOutput(io.TextIOBase):
    """Stands in for ``sys.stdout`` while a stage runs: what the platform prints (Ray
    Train's rank-0 lines, notices) goes to the stage's log file, and ``[train] step N/M``
    lines move a progress bar instead."""

    def __init__(self, log, bar):
        super().__init__()
        self.log, self.bar, self.pending = log, bar, ""

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._line(line.strip())
        return len(text)

    def _line(self, line: str) -> None:
        if match := STEP_LINE.match(line):
            done, total = int(match[2]), int(match[3])
            self.bar.total = total
            self.bar.update(done - self.bar.n)
        elif match := VAL_LINE.match(line):
            self.bar.set_postfix_str(match[2])

    def flush(self) -> None:
        self.log.flush()


def _tune_progress_callback(bar, count: int, steps: int):
    """A Ray Tune callback that moves ``bar`` with the steps ``count`` trials report."""
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self):
            self.bar, self.steps = bar, {}

        def __getstate__(self) -> dict:
            return {"bar": None, "steps": {}}  # Tune saves its callbacks: not the terminal's bar

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.steps[trial.trial_id] = int(result.get("step") or 0)
            if self.bar is None:
                return
            self.bar.update(min(sum(self.steps.values()), self.bar.total) - self.bar.n)
            if result.get("val_loss") is not None:
                self.bar.set_postfix_str(
                    f"trial {trial.trial_id} val_loss {result['val_loss']:.4f}"
                )

    bar.total = count * steps
    bar.refresh()
    return Progress()


class Ticker:
    """A bar without a total that shows the elapsed time of a stage with no steps to count."""

    def __init__(self, bar, every_s: float = 0.5):
        self.bar, self.every_s = bar, every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.bar.refresh()

    def __enter__(self) -> Ticker:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


# --- the demo -------------------------------------------------------------------------------


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
        with self._environment(), self._stop_on_sigterm(), _torch_threads(THREADS):
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
                    self._hold()
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
            result = getattr(self, f"_{name}")(bar)
        seconds = time.perf_counter() - started
        line = self._line(name, result)
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

        serving = self.keep_serving or self._record("serve") is None
        own = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
        if serving and own and _in_use(self.host, self.port):
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

    def _ray(self) -> None:
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

    # -- the stages ----------------------------------------------------------------------------

    def _config(self, *overrides: str):
        from music_gen.config import load_config

        cfg = load_config(overrides=overrides)
        cfg.codec.source = str(self.paths.codec)
        cfg.data.output = str(self.paths.tokens)
        return cfg

    def _synth(self, bar) -> dict:
        from music_gen.pipelines.synth import write_synth_dataset

        s = self.sizes
        paths = write_synth_dataset(self.paths.audio, s.clips, s.seconds, seed=0, classes=CLASSES)
        return {"clips": len(paths), "seconds": s.seconds, "classes": list(CLASSES),
                "outputs": [str(self.paths.audio)]}  # fmt: skip

    def _codec(self, bar) -> dict:
        s = self.sizes
        overrides = ["codec.num_codebooks=4", f"codec.cardinality={s.cardinality}"]
        if self.codec_method == "calibrate":
            from music_gen.config import load_config
            from music_gen.pipelines.calibrate import calibrate

            cfg = load_config(overrides=overrides)
            info = calibrate(str(self.paths.audio), str(self.paths.codec), cfg.codec, 300.0)
            return {"method": "calibrate", "files": info["files"],
                    "outputs": [str(self.paths.codec)]}  # fmt: skip
        from music_gen.pipelines.codec.driver import train_codec

        self._ray()
        # configs/codec/offline.yaml's codec and losses, for fewer steps on one worker.
        cfg = self._config(
            *overrides, f"codec.train.steps={s.codec_steps}", "codec.train.lr=3.0e-3",
            f"codec.train.batch_size={s.codec_batch}", "codec.train.segment_seconds=0.5",
            "codec.train.si_snr_weight=4.0", "codec.train.warmup_steps=20",
            "codec.train.num_workers=1", f"codec.train.cpus_per_worker={WORKER_CPUS}",
            f"codec.train.torch_threads={THREADS}",
            f"codec.train.log_every={max(1, s.codec_steps // 20)}",
            f"codec.train.checkpoint_every={s.codec_steps}", "codec.train.keep_checkpoints=1",
            "codec.train.name=demo-codec", "codec.train.val_fraction=0.1",
        )  # fmt: skip
        cfg.codec.source = None
        cfg.codec.train.storage = str(self.paths.codec_runs)
        cfg.codec.train.tracking_uri = self.tracking_uri
        if self.fresh_downstream and (self.paths.codec_runs / "demo-codec").exists():
            shutil.rmtree(self.paths.codec_runs / "demo-codec")
        summary = train_codec(cfg, str(self.paths.audio), str(self.paths.codec))
        return {
            "method": "train", "steps": summary["end_step"], "val_si_snr": summary["val_si_snr"],
            "val_mel": summary["val_mel"], "run_id": summary["run_id"],
            "outputs": [str(self.paths.codec)],
        }  # fmt: skip

    def _tokenize(self, bar) -> dict:
        from music_gen.pipelines.tokenize import tokenize

        self._ray()
        s = self.sizes
        cfg = self._config(
            f"data.segment_seconds={s.seconds}", "data.pad_tail=true", "data.files_per_shard=64",
            "data.encode_num_cpus=0.5", "data.decode_num_cpus=0.5", "data.batch_size=16",
        )  # fmt: skip
        cfg.data.input = str(self.paths.audio)
        bar.disable = True  # tokenize draws its own bar
        summary = tokenize(cfg, overwrite=self.fresh_downstream, progress=self.progress)
        return {"segments": summary["segments"], "shards": summary["shards_complete"],
                "files": summary["files"], "files_failed": summary["files_failed"],
                "outputs": [str(self.paths.tokens / "dataset.json")]}  # fmt: skip

    def _train_config(self, steps: int, batch: int, lr: float, *extra: str):
        s = self.sizes
        cfg = self._config(
            *s.model, f"train.steps={steps}", f"train.batch_size={batch}", f"train.lr={lr}",
            f"train.warmup_steps={max(1, steps // 10)}", "train.precision=fp32",
            f"train.segment_curriculum={{0: {min(2.0, s.seconds)}}}", "data.val_fraction=0.1",
            f"train.experiment={EXPERIMENT}", f"train.eval_samples={s.train_samples}",
            "train.eval_sample_seconds=1.0", "train.keep_checkpoints=1", *extra,
        )  # fmt: skip
        cfg.train.tracking_uri = self.tracking_uri
        return cfg

    def _train(self, bar) -> dict:
        from music_gen.pipelines.train import train

        self._ray()
        s = self.sizes
        cfg = self._train_config(
            s.train_steps, s.train_batch, s.train_lr, "train.num_workers=1",
            f"train.cpus_per_worker={WORKER_CPUS}", f"train.torch_threads={THREADS}",
            f"train.log_every={max(1, s.train_steps // 20)}",
            f"train.checkpoint_every={max(1, s.train_steps // 2)}",
            f"train.eval_every={s.train_steps}",
        )  # fmt: skip
        cfg.train.name = "demo"
        cfg.train.storage = str(self.paths.runs)
        summary = train(cfg, overwrite=self.fresh_downstream)
        return {"steps": summary["end_step"], "val_loss": summary["val_loss"],
                "tokens_per_s": summary.get("tokens_per_s"), "run_id": summary["run_id"],
                "checkpoint": summary["checkpoint"], "model": summary["run_uri"],
                "outputs": [summary["checkpoint"]]}  # fmt: skip

    def _tune(self, bar) -> dict:
        from music_gen.tune.sweep import sweep

        self._ray()
        s = self.sizes
        train_result = self.results["train"]
        cfg = self._train_config(
            s.tune_steps, s.train_batch, s.train_lr, "train.num_workers=1",
            # Two trials side by side on 2 cores, half a core left to Ray Data.
            "train.cpus_per_worker=0.7", f"train.torch_threads={THREADS}",
            "train.eval_samples=0", f"train.log_every={s.tune_steps}",
            f"train.checkpoint_every={max(1, s.tune_steps // 2)}",
            f"train.eval_every={s.tune_steps}", "tune.name=demo-sweep", "tune.num_samples=2",
            f"tune.grace_period={max(1, s.tune_steps // 2)}",
            "tune.search_space={train.lr: {loguniform: [1.0e-4, 1.0e-3]}}",
        )  # fmt: skip
        cfg.train.init = train_result["checkpoint"]
        cfg.tune.storage = str(self.paths.tune)
        # Afresh whenever this stage runs: a sweep of seconds is not worth resuming, and
        # Ray Tune would restore the callbacks of the run it resumes.
        shutil.rmtree(self.paths.tune / "demo-sweep", ignore_errors=True)
        callback = _tune_progress_callback(bar, 2, s.tune_steps)
        summary = sweep(cfg, callbacks=[callback])
        if summary["interrupted"]:  # Ray Tune took the Ctrl-C and ended the sweep
            raise KeyboardInterrupt
        rows = [
            {"trial": r["trial_id"], "lr": r.get("train.lr"), "val_loss": r["best_metric"],
             "steps": r["steps"], "stopped_early": r["stopped_early"], "run_id": r["run_id"]}
            for r in summary["rows"]
        ]  # fmt: skip
        best = summary["best"]
        return {"trials": rows, "best_trial": best["trial_id"],
                "best_val_loss": best["best_metric"], "best_run_id": best["run_id"],
                "best_lr": best.get("train.lr"), "table": summary["table"],
                "outputs": [summary["table"]]}  # fmt: skip

    def _evaluate(self, bar) -> dict:
        from music_gen.pipelines.evaluate import EvaluateConfig, evaluate

        s = self.sizes
        settings = EvaluateConfig(
            batch_size=8, per_class=s.eval_per_class, duration=s.eval_seconds,
            fad_clips=s.fad_clips, val_fraction=0.1, seed=0,
        )  # fmt: skip
        candidates = {
            "train": self.results["train"]["run_id"],
            "sweep": self.results["tune"]["best_run_id"],
        }
        self.paths.evaluation.mkdir(parents=True, exist_ok=True)
        scores = {}
        for label, run_id in candidates.items():
            output = self.paths.evaluation / f"{label}.json"
            results = evaluate(
                f"runs:/{run_id}/model", str(self.paths.tokens), settings, output=str(output),
                run_id=run_id, device="cpu",
            )  # fmt: skip
            adherence = results["prompt_adherence"]
            scores[label] = {
                "run_id": run_id, "eval_loss": results["validation"]["loss"],
                "perplexity": results["validation"]["perplexity"],
                "adherence": adherence.get("accuracy"), "chance": adherence.get("chance"),
                "audio_adherence": adherence.get("audio", {}).get("accuracy"),
                "fad": results["fad"]["fad"], "results": str(output),
            }  # fmt: skip
        return {"candidates": scores,
                "outputs": [s["results"] for s in scores.values()]}  # fmt: skip

    def _registry(self, bar) -> dict:
        from music_gen.platform import registry

        candidates = self.results["evaluate"]["candidates"]
        registered = {
            row["run_id"]: row["version"]
            for row in _versions(registry)
            if row["run_id"] in {c["run_id"] for c in candidates.values()}
        }
        versions = {}
        for label, candidate in candidates.items():
            run_id = candidate["run_id"]
            if run_id not in registered:
                registered[run_id] = registry.register_source(MODEL_NAME, run_id=run_id)["version"]
            versions[label] = str(registered[run_id])
            # This evaluation's figures on the version, for the gate (as `evaluate
            # --register-metrics` records them).
            figures = {"eval_loss": candidate["eval_loss"], "eval_fad": candidate["fad"]}
            if candidate["adherence"] is not None:
                figures["eval_adherence_accuracy"] = candidate["adherence"]
            registry.record_metrics(MODEL_NAME, versions[label], figures)
        best = min(candidates, key=lambda label: candidates[label]["eval_loss"])
        reason = f"demo: lowest eval_loss of {', '.join(candidates)} ({best})"
        try:
            done = registry.promote(
                MODEL_NAME, versions[best], "production", metric="eval_loss", reason=reason
            )
            refused = None
        except MusicGenError as exc:  # the gate: a holder from an earlier run is better
            if "promotion refused" not in str(exc):
                raise
            done, refused = None, str(exc)
        holder = registry.show(f"{MODEL_NAME}@production")
        return {"versions": versions, "best": best, "production": str(holder["version"]),
                "previous": done["previous"] if done else None, "refused": refused,
                "outputs": [str(self.paths.store)]}  # fmt: skip

    def _serve(self, bar) -> dict:
        from music_gen.pipelines.synth import heldout_captions

        prompts = [
            (cls, caption)
            for cls in CLASSES
            for caption in heldout_captions(cls, seed=11)[: self.sizes.serve_per_class]
        ]
        url = self._start_server()
        served = self.paths.served
        if served.exists():
            shutil.rmtree(served)
        served.mkdir(parents=True)
        seconds = self.sizes.serve_seconds

        def ask(item):
            index, (cls, prompt) = item
            body = {"prompt": prompt, "duration": seconds, "seed": index, "format": "wav"}
            return index, cls, prompt, _post(f"{url}/generate", body)

        bar.set_postfix_str(f"{len(prompts)} prompts to {url}/generate")
        with ThreadPoolExecutor(len(prompts)) as pool:  # together: the server batches them
            answers = list(pool.map(ask, enumerate(prompts)))
        rows = [self._keep_answer(*answer) for answer in answers]
        judged = _judge_served(rows, CLASSES)
        outputs.write_text(served / "responses.json", json.dumps(rows, indent=1) + "\n")
        files = [r["audio"] for r in rows] + [r["spectrogram"] for r in rows]
        return {"url": url, "responses": rows, "duration": seconds, **judged,
                "outputs": [str(served / "responses.json"), *files]}  # fmt: skip

    # -- serving ---------------------------------------------------------------------------------

    def _start_server(self) -> str:
        """The Serve app on ``models:/music-gen@production``, as ``music-gen serve`` runs it."""
        from ray import serve

        from music_gen.config import ServeConfig
        from music_gen.serve.app import build, check_source

        self._ray()
        cfg = ServeConfig(
            model=f"models:/{MODEL_NAME}@production", host=self.host, port=self.port,
            app_name=APP_NAME, route_prefix="/", num_cpus=1.0, ingress_num_cpus=0.1,
            max_batch_size=8, max_duration=30.0,
            env_vars={"MLFLOW_TRACKING_URI": self.tracking_uri,
                      "MUSIC_GEN_WORK_DIR": str(self.paths.root)},
        )  # fmt: skip
        check_source(cfg.model)
        app = build(cfg)
        from music_gen.platform.cluster import verbose

        if not verbose():  # Serve's own INFO lines (started, ready, deleting) stay out
            logging.getLogger("ray.serve").setLevel(logging.WARNING)
        status = serve.status()
        base = f"http://{self.host}:{self.port}"
        if status.proxies or status.applications:  # Serve runs already (a test's, a cluster's)
            if not _answers(f"{base}/-/routes"):
                raise UsageError(
                    f"Ray Serve already runs on this cluster but not at {self.host}:{self.port}: "
                    "pass its port with --port"
                )
        else:
            if _in_use(self.host, self.port):
                raise UsageError(f"port {self.port} on {self.host} is in use: pass --port")
            serve.start(http_options={"host": self.host, "port": self.port})
            self.started_serve = True
        self.deployed = True
        serve.run(app, name=APP_NAME, route_prefix=cfg.route_prefix, blocking=False)
        return base

    def _keep_answer(self, index: int, cls: str, prompt: str, answer: dict) -> dict:
        """The answer's audio as a file, its spectrogram as a PNG, and what they hold."""
        from music_gen.audio import audio_info, read_audio
        from music_gen.pipelines.train.samples import spectrogram_png

        stem = self.paths.served / f"{index:02d}-{cls}"
        audio_path = outputs.write_bytes(stem.with_suffix(".wav"), answer["body"])
        info = audio_info(audio_path)  # raises AudioError for anything but audio
        audio, _ = read_audio(audio_path)
        png = stem.with_suffix(".png")
        spectrogram_png(audio, png)
        return {
            "prompt": prompt, "class": cls, "seed": index, "audio": str(audio_path),
            "spectrogram": str(png), "seconds": info.duration, "sample_rate": info.sample_rate,
            "format": info.format, "model_version": answer["headers"].get("x-model-version"),
            "generation_seconds": float(answer["headers"].get("x-generation-seconds") or 0),
            "batch_size": int(answer["headers"].get("x-batch-size") or 1),
        }  # fmt: skip

    def _hold(self) -> None:
        """``--keep-serving``: wait for Ctrl-C (the server stops in ``_shutdown``)."""
        import signal

        base = f"http://{self.host}:{self.port}"
        self.say(f"serving models:/{MODEL_NAME}@production at {base}/ (API docs {base}/docs)")
        self.say("Ctrl-C to stop")
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            self.say("shutting down")

    # -- the summary -----------------------------------------------------------------------------

    def _line(self, name: str, r: dict) -> str:
        """One line of figures for a stage's result."""
        if name == "synth":
            return (
                f"{r['clips']} captioned clips of {r['seconds']:g} s, {len(r['classes'])} "
                f"classes -> {_show(self.paths.audio)}"
            )
        if name == "codec":
            if r["method"] == "calibrate":
                return (
                    "k-means calibrated codebooks, random decoder (`codec calibrate`) -> "
                    f"{_show(self.paths.codec)}"
                )
            return (
                f"trained {r['steps']} steps (Ray Train): held-out SI-SNR {r['val_si_snr']:.2f} "
                f"dB, mel {r['val_mel']:.3f} -> {_show(self.paths.codec)}"
            )
        if name == "tokenize":
            return (
                f"{r['segments']} segments in {r['shards']} shard(s), {r['files_failed']} bad "
                f"files (Ray Data) -> {_show(self.paths.tokens)}"
            )
        if name == "train":
            return (
                f"{r['steps']} steps (Ray Train): val_loss {r['val_loss']:.4f}, "
                f"MLflow run {r['run_id'][:8]}"
            )
        if name == "tune":
            trials = ", ".join(
                f"lr {t['lr']:.2e} -> {t['val_loss']:.4f}"
                + (" (stopped by ASHA)" if t["stopped_early"] else "")
                for t in r["trials"] if t["val_loss"] is not None
            )  # fmt: skip
            return f"{len(r['trials'])} fine-tuning trials (Ray Tune, ASHA): {trials}"
        if name == "evaluate":
            return "; ".join(
                f"{label}: eval_loss {c['eval_loss']:.4f}, adherence {_adherence(c)}"
                for label, c in r["candidates"].items()
            )
        if name == "registry":
            versions = ", ".join(f"{label} v{v}" for label, v in r["versions"].items())
            if r["refused"]:
                moved = f"the gate kept production at v{r['production']}: {r['refused']}"
            else:
                moved = f"production -> v{r['production']} ({r['best']}, lower eval_loss)"
            return f"registered {versions} as '{MODEL_NAME}'; {moved}"
        if name == "serve":
            return (
                f"{len(r['responses'])} prompts over HTTP: {r['duration']:g} s WAVs + "
                f"spectrograms -> {_show(self.paths.served)}; heard as prompted "
                f"{r['served_hits']}/{len(r['responses'])} (chance {r['served_chance']:.2f})"
            )
        raise KeyError(name)

    def summary(self, seconds: float) -> dict:
        """What ran, the figures, where the files are and how to look at them."""
        r = self.results
        ran = [name for name in STAGES if name not in self.reused]
        reused = f" ({', '.join(self.reused)})" if self.reused else ""
        lines = [
            "",
            f"demo done in {seconds:.0f} s ({self.sizes.name} sizes): {len(ran)} stage(s) "
            f"ran, {len(self.reused)} reused{reused}",
        ]
        codec = r["codec"]
        if codec["method"] == "train":
            lines.append(
                f"  codec      trained {codec['steps']} steps: held-out SI-SNR "
                f"{codec['val_si_snr']:.2f} dB. A short CPU run with no adversarial loss "
                "reaches a few dB at best: its audio is far from clean"
            )
        else:
            lines.append(
                "  codec      k-means calibration, not training (--codec train trains one, for "
                "minutes more: at the demo's few hundred CPU steps it stays below 0 dB SI-SNR). "
                "Its decoder is random, so the audio is noise-like and by-ear figures sit at "
                "chance: judge the model by its loss and its adherence in codes"
            )
        train, tune = r["train"], r["tune"]
        lines.append(f"  train      val_loss {train['val_loss']:.4f} after {train['steps']} steps")
        lines.append(
            f"  tune       best of {len(tune['trials'])} trials: val_loss "
            f"{tune['best_val_loss']:.4f} at lr {tune['best_lr']:.2e}"
        )
        for label, c in r["evaluate"]["candidates"].items():
            lines.append(
                f"  evaluate   {label:<6} eval_loss {c['eval_loss']:.4f}, prompt adherence "
                f"{_adherence(c)}"
            )
        registry = r["registry"]
        lines.append(
            f"  registry   models:/{MODEL_NAME}@production -> version {registry['production']}"
            + (" (the gate refused the new one)" if registry["refused"] else "")
        )
        served = r["serve"]
        lines.append(
            f"  serve      {served['served_hits']}/{len(served['responses'])} served clips "
            f"heard as their prompt's class by the audio classifier (chance "
            f"{served['served_chance']:.2f})"
        )
        quick = " --quick" if self.sizes.name == "quick" else ""
        root = _show(self.paths.root)
        lines += [
            "files",
            f"  served audio   {_show(self.paths.served)}/ (NN-class.wav, NN-class.png, "
            "responses.json)",
            f"  evaluations    {_show(self.paths.evaluation)}/",
            f"  stage logs     {_show(self.paths.logs)}/ (what each stage printed)",
            f"  figures        {_show(self.paths.root / 'summary.json')}",
            "open",
            f"  MLflow UI      mlflow ui --backend-store-uri sqlite:///{self.paths.store}"
            "   then http://127.0.0.1:5000",
            f"  web page       music-gen demo --workdir {root}{quick} --keep-serving"
            f"   then http://{self.host}:{self.port}/",
            f"                 (or MUSIC_GEN_WORK_DIR={root} music-gen serve --model "
            f"models:/{MODEL_NAME}@production)",
            "  Ray dashboard  the demo's own cluster runs without one (to spare the cores); for "
            "one: ray start --head --num-cpus 2, then RAY_AUTH_MODE=token "
            f"RAY_ADDRESS=127.0.0.1:6379 music-gen demo --workdir {root}{quick} --keep-serving"
            "   then http://127.0.0.1:8265 (token: ~/.ray/auth_token; `ray stop` ends it)",
        ]
        return {"seconds": seconds, "sizes": self.sizes.name, "ran": ran, "reused": self.reused,
                "results": r, "lines": lines}  # fmt: skip


# --- helpers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _show(path: Path) -> str:
    """``path`` relative to the current folder when it lies inside it, else absolute."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _adherence(candidate: dict) -> str:
    if candidate["adherence"] is None:
        return "- (not synthetic data)"
    text = f"{candidate['adherence']:.2f} in codes"
    if candidate.get("audio_adherence") is not None:
        text += f", {candidate['audio_adherence']:.2f} by ear"
    return f"{text} (chance {candidate['chance']:.2f})"


def _versions(registry) -> list[dict]:
    try:
        return registry.list_versions(MODEL_NAME)
    except MusicGenError:
        return []


def _post(url: str, body: dict, timeout: float = 600.0) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            headers = {key.lower(): value for key, value in response.headers.items()}
            return {"status": response.status, "headers": headers, "body": response.read()}
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:200].decode(errors="replace")
        raise MusicGenError(f"the server answered {url} with HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise MusicGenError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (Serve's proxy says 503 until it has routes)."""
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def _judge_served(rows: list[dict], classes) -> dict:
    """The served clips classified by ear: the audio classifier fitted on real synth clips."""
    import torch

    from music_gen.audio import read_audio
    from music_gen.pipelines.adherence import fit_synth_classifier

    labels = list(classes)
    rate = rows[0]["sample_rate"]
    classifier = fit_synth_classifier(labels, rate, per_class=8, seconds=2.0)
    clips = [read_audio(row["audio"], sample_rate=rate, channels=1)[0] for row in rows]
    length = min(clip.shape[-1] for clip in clips)
    predicted = classifier.predict(torch.stack([clip[:, :length] for clip in clips]))
    for row, index in zip(rows, predicted.tolist(), strict=True):
        row["heard_as"] = labels[index]
    hits = sum(row["heard_as"] == row["class"] for row in rows)
    return {"served_hits": hits, "served_chance": 1.0 / len(labels)}


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
