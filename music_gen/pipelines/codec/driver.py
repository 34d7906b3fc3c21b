"""The driver of a codec run: checks, decoded audio, the trainer, ``train_codec()``.

Every check that can fail without Ray runs first (``plan_codec_run``): the architecture
(hop dividing the rate, a power-of-2 cardinality), the output location, audio to read.
Then Ray Data decodes the audio, a ``TorchTrainer`` (the LM trainer's fail-fast kind: a
user error on any rank ends the run at once, only crashes are retried) runs the
workers, and the last checkpoint's codec directory is copied to the output.

Re-running with the same ``codec.train.name`` and ``storage`` resumes (Ray Train V2).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from music_gen.config import Config
from music_gen.errors import ConfigError, MusicGenError, UsageError
from music_gen.models.codec import CODEC_JSON, WEIGHTS
from music_gen.models.discriminator import MIN_SAMPLES
from music_gen.pipelines.codec import data
from music_gen.pipelines.codec.worker import VAL_METRIC, build_network, train_loop_per_worker


@dataclass
class CodecPlan:
    input: str
    output: Path
    storage: str
    hop_length: int
    frame_rate: float


def check_output(output: str | Path) -> Path:
    """The output must be new, empty, or a codec directory (which is replaced)."""
    path = Path(output).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output {path} is a file, not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / CODEC_JSON).is_file():
        raise UsageError(f"--output {path} is a non-empty directory that holds no codec")
    return path.resolve()


def plan_codec_run(cfg: Config, input: str, output: str) -> CodecPlan:
    """Checks that need no Ray: architecture, output, audio to read, workers vs batch."""
    tc = cfg.codec.train
    if cfg.codec.backend != "transformers":
        raise ConfigError(
            "codec train builds a transformers Encodec codec: codec.backend=transformers"
        )
    if cfg.codec.channels != 1:
        raise ConfigError(
            "codec train makes a codec of codec.train.channels; leave codec.channels at 1"
        )
    network = build_network(cfg)  # raises ConfigError for a bad architecture
    if tc.unquantized_steps >= tc.steps:
        raise ConfigError(
            f"codec.train.unquantized_steps ({tc.unquantized_steps}) must be below "
            f"codec.train.steps ({tc.steps}): the codebooks are fitted when the "
            "unquantized warm-up ends"
        )
    samples = round(tc.segment_seconds * tc.sample_rate)
    if tc.adversarial and samples < MIN_SAMPLES:
        raise ConfigError(
            f"codec.train.adversarial needs segments of at least {MIN_SAMPLES} samples (the "
            f"discriminator's largest FFT); codec.train.segment_seconds gives {samples}"
        )
    out = check_output(output)
    data.list_audio(input)  # raises UsageError when there is no audio at all
    storage = tc.storage if "://" in tc.storage else str(Path(tc.storage).expanduser().resolve())
    config = network.config
    return CodecPlan(input, out, storage, int(config.hop_length), float(config.frame_rate))


def _tracking_cfg(cfg: Config) -> Config:
    """The config as ``tracking.start_run`` reads it: the codec run's name, experiment and URI
    in the ``train`` fields it looks up (so one function owns finding and resuming runs)."""
    tc = cfg.codec.train
    update = {"name": tc.name, "experiment": tc.experiment, "tracking_uri": tc.tracking_uri}
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=update)})


def build_codec_trainer(cfg: Config, plan: CodecPlan, audio, run_id, uri, relay=None):
    from ray.train import DataConfig

    from music_gen.platform.trainer import fail_fast_trainer_class, run_settings

    tc = cfg.codec.train
    return fail_fast_trainer_class()(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "run_id": run_id,
            "tracking_uri": uri,
            "relay": relay,
        },
        **run_settings(tc, plan.storage, VAL_METRIC),
        datasets={"train": audio.train, "val": audio.val},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def train_codec(cfg: Config, input: str, output: str) -> dict:
    """Train (or resume) the codec run ``cfg.codec.train.name`` on the audio of ``input``;
    the last checkpoint's codec goes to ``output``. Returns a summary."""
    from ray.train import TrainingFailedError

    from music_gen.platform import cluster, tracking
    from music_gen.platform.trainer import worker_error

    started = time.perf_counter()
    plan = plan_codec_run(cfg, input, output)
    tc = cfg.codec.train
    cluster.ensure_ray()
    cluster.check_resources(tc.num_workers, tc.cpus_per_worker, tc.use_gpu)
    audio = data.decode_audio(cfg, input)
    needed = tc.batch_size * tc.num_workers
    if audio.train_segments < needed:
        raise ConfigError(
            f"{input} gives {audio.train_segments} training segments of "
            f"{tc.segment_seconds:g} s, fewer than codec.train.batch_size x num_workers = {needed}"
        )
    track = _tracking_cfg(cfg)
    uri = tracking.tracking_uri(tc.tracking_uri)
    run_id = tracking.start_run(track, plan.storage)
    try:
        with cluster.LineRelay() as relay:
            trainer = build_codec_trainer(cfg, plan, audio, run_id, uri, relay.actor)
            result = trainer.fit()
    except TrainingFailedError as exc:
        tracking.end_run(uri, run_id, "FAILED")
        raise worker_error(exc) from None
    except BaseException:
        tracking.end_run(uri, run_id, "KILLED")
        raise
    if result.checkpoint is None:
        tracking.end_run(uri, run_id, "FAILED")
        raise MusicGenError("codec training finished without a checkpoint")
    plan.output.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as directory:
        for name in (CODEC_JSON, WEIGHTS):
            shutil.copy2(Path(directory) / name, plan.output / name)
    tracking.end_run(uri, run_id, "FINISHED")
    summary = dict(result.return_value or {})
    metrics = result.metrics or {}
    summary.update(
        output=str(plan.output),
        checkpoint=result.checkpoint.path,
        run_id=run_id,
        tracking_uri=uri,
        files=audio.files,
        errors=audio.errors,
        train_segments=audio.train_segments,
        val_segments=audio.val_segments,
        frame_rate=plan.frame_rate,
        val_si_snr=metrics.get("val_si_snr"),
        val_mel=metrics.get(VAL_METRIC),
        seconds=time.perf_counter() - started,
    )
    return summary
