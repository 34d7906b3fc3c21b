"""One Ray Train worker: setup, then a flat loop with named helpers.

Ray appears only at the lines marked ``# [ray]``: the data shards, the checkpoint to
resume from, ``report``. Rank 0 logs to MLflow and sends progress lines to the driver
(``cluster.write_line``), which prints them once; every rank steps.

The model goes by one name per role: ``trainee.musicgen`` (LM, conditioner and codec:
saving and samples), ``trainee.core`` (its LM and conditioner as one module) and
``trainee.wrapped`` (``core`` under DDP/FSDP, or ``core`` itself on a single worker).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from music_gen.config import Config
from music_gen.errors import ConfigError, MusicGenError
from music_gen.models import formats
from music_gen.pipelines import checkpoints
from music_gen.pipelines.losses import make_batch
from music_gen.pipelines.train import parallel
from music_gen.pipelines.train.samples import log_samples
from music_gen.pipelines.train.step import (
    EMA,
    Step,
    TrainModule,
    build_optimizer,
    condition_dropout,
    lr_factor,
    mg_weights_into,
    named_trainable,
    segment_frames,
    set_lr,
    train_step,
    validate,
)
from music_gen.platform.cluster import write_line

VAL_METRIC = "val_loss"
WARM_STEPS = 5
"""Steps left out of a run's overall throughput (first batches, allocator warm-up)."""


def finished_line(step: int) -> str:
    """What a re-run of a run that already reached ``train.steps`` says (driver or worker)."""
    return f"[train] already at step {step}: raise train.steps to train further"


# -- setup ------------------------------------------------------------------------------


def dataset_codec(codec_source: str, meta: dict):
    """The codec a model trained from scratch is built with: the dataset's, loaded from
    ``codec_source``; a mono codec that tokenized 2 channels (``codec.channels=2``)
    is wrapped as the interleaved stereo codec it ran as."""
    from music_gen.models.codec import load_codec
    from music_gen.models.stereo import StereoCodec

    codec = load_codec(codec_source)
    if codec.channels == 1 and meta.get("channels") == 2:
        codec = StereoCodec(codec)
    return codec


def load_start_model(
    cfg: Config, codec_source: str | None, resume_dir: str | None, codec_meta: dict
):
    """The model a worker starts from: the run's checkpoint, ``train.init``, or the preset."""
    from music_gen import MusicGen

    adapted = cfg.train.lora.rank > 0
    if adapted:  # the base, then its adapter (the checkpoint's when resuming)
        model = MusicGen.from_pretrained(cfg.train.init)
        add_adapter(model, cfg, resume_dir)
    elif resume_dir is not None:
        model = MusicGen.from_pretrained(resume_dir)
    elif cfg.train.init:
        model = MusicGen.from_pretrained(cfg.train.init)
    else:
        torch.manual_seed(cfg.train.seed)  # every worker builds the same weights
        model = MusicGen.from_config(cfg.model, dataset_codec(codec_source, codec_meta))
    # Training switches that apply whatever the start point.
    model.lm.cfg = replace(model.lm.cfg, gradient_checkpointing=cfg.model.gradient_checkpointing)
    cond = model.conditioner
    cond.freeze = cfg.model.text.freeze or adapted
    cond.encoder.requires_grad_(not cond.freeze)
    return model


def add_adapter(model, cfg: Config, resume_dir: str | None) -> None:
    """Freeze the base and give its LM fresh LoRA adapters (or the checkpoint's)."""
    from music_gen.models import lora

    settings = cfg.train.lora
    model.conditioner.requires_grad_(False)
    spec = lora.LoraSpec(
        rank=settings.rank,
        alpha=settings.alpha,
        targets=tuple(settings.targets),
        dropout=settings.dropout,
        base=cfg.train.init,
        base_fingerprint=lora.fingerprint(model.lm),
    )
    torch.manual_seed(cfg.train.seed)  # every worker draws the same A matrices
    lora.attach(model.lm, spec)
    if resume_dir is not None:
        path = Path(resume_dir) / formats.ADAPTER_FILE
        lora.load_adapter_weights(model.lm, formats.read_weights(path), path)


def check_melody_data(model, chroma: bool) -> None:
    """A melody model trains on the chroma column (the driver checks what it can know
    before loading: a hub id's conditioner shows only here)."""
    if model.has_melody and not chroma:
        raise ConfigError(
            "the start model has a melody conditioner but the dataset has no chroma column: "
            "re-tokenize it with `music-gen data tokenize ... --overwrite`"
        )


def check_model_codec(model, meta: dict) -> None:
    """The start model's codec must be the one the dataset was tokenized with."""
    codec = model.codec
    ours = (codec.num_codebooks, codec.cardinality, float(codec.frame_rate), codec.sample_rate)
    theirs = (
        meta["num_codebooks"],
        meta["cardinality"],
        float(meta["frame_rate"]),
        meta["sample_rate"],
    )
    if ours != theirs:
        raise ConfigError(
            "the start model's codec (K, cardinality, frame rate, sample rate) = "
            f"{ours} differs from the dataset's {theirs}: tokenize the data with the model's codec"
        )


@dataclass
class Resume:
    """Where the run's latest checkpoint leaves off (step 0 and nothing when starting)."""

    directory: str | None = None  # readable while the worker loads from it
    state: dict | None = None
    step: int = 0
    epoch: int = 0
    batch: int = 0

    @classmethod
    def read(cls, directory: str | None) -> Resume:
        if directory is None:
            return cls()
        state = checkpoints.read_state(directory)
        position = state.get("data_position") or {}
        return cls(
            directory,
            state,
            int(state.get("step", 0)),
            int(position.get("epoch", 0)),
            int(position.get("batch", 0)),
        )


@dataclass
class Trainee:
    """What a worker trains, and the state that trains it."""

    musicgen: nn.Module  # MusicGen: LM, conditioner, codec
    core: TrainModule  # musicgen.lm + musicgen.conditioner
    wrapped: nn.Module  # core under DDP/FSDP (core itself alone)
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    scaler: torch.amp.GradScaler | None
    device: torch.device


def build_trainee(
    cfg: Config, codec_source, codec_meta: dict, resume: Resume, device, chroma: bool = False
) -> Trainee:
    """The start model on ``device``, wrapped for the group, its optimizer, EMA and scaler,
    each loaded from the checkpoint when resuming."""
    tc = cfg.train
    musicgen = load_start_model(cfg, codec_source, resume.directory, codec_meta)
    check_model_codec(musicgen, codec_meta)
    check_melody_data(musicgen, chroma)
    core = TrainModule(musicgen.lm, musicgen.conditioner, musicgen.frame_rate)
    if resume.directory and (
        raw := checkpoints.read_weights(resume.directory, checkpoints.RAW_WEIGHTS_FILE)
    ):
        mg_weights_into(core, raw)  # model.safetensors held the EMA
    core.to(device).train()
    musicgen.codec.to(device)
    ema = EMA(named_trainable(core), tc.ema_decay) if tc.ema_decay else None
    from_checkpoint = ema is not None and resume.directory is not None
    saved = (
        checkpoints.read_weights(resume.directory, checkpoints.EMA_FILE)
        if from_checkpoint
        else None
    )
    if saved:
        ema.load(saved)
    wrapped = parallel.wrap_model(core, tc.strategy, device)  # after EMA: whole tensors
    optimizer = build_optimizer(core, tc.lr, tc.weight_decay, tc.betas)
    if resume.directory:
        optimizer_state = checkpoints.read_optimizer(resume.directory)
        parallel.load_optimizer_state(wrapped, core, optimizer, optimizer_state)
    fp16 = device.type == "cuda" and tc.precision == "fp16"
    scaler = torch.amp.GradScaler("cuda") if fp16 else None
    if scaler is not None and (resume.state or {}).get("grad_scaler"):
        scaler.load_state_dict(resume.state["grad_scaler"])
    return Trainee(musicgen, core, wrapped, optimizer, ema, scaler, device)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters of ``module``."""
    total = sum(p.numel() for p in module.parameters())
    return sum(p.numel() for p in module.parameters() if p.requires_grad), total


# -- data ---------------------------------------------------------------------------------


def stream_batches(shard, batch_size: int, buffer: int, seed: int, epoch: int, skip: int):
    """Endless ``(epoch, batches_done_in_epoch, rows)`` over a worker's data shard.

    Resuming passes the saved position: the first ``skip`` batches of ``epoch`` are read
    and dropped, so the run continues with as many batches left in that epoch as it
    had. Ray Data hands blocks to workers as they ask and shuffles locally, so the rows
    skipped may differ from those the interrupted run trained on: the position is
    exact in count, approximate in content; later epochs are whole again.
    """
    while True:
        seen = 0
        for rows in shard.iter_batches(  # [ray] each call is one epoch of this worker's shard
            batch_size=batch_size,
            batch_format="pyarrow",  # the cheapest for Ray to hand over; make_batch converts
            drop_last=True,
            local_shuffle_buffer_size=buffer or None,
            local_shuffle_seed=seed + epoch if buffer else None,
        ):
            seen += 1
            if seen <= skip:
                continue
            yield epoch, seen, rows
        if seen == 0:
            raise MusicGenError(
                f"a worker's share of the training split holds no full batch of {batch_size}; "
                "lower train.batch_size or train.num_workers"
            )
        epoch, skip = epoch + 1, 0


def read_validation(shard, batch_size: int, max_batches: int | None, world: int) -> list:
    """The validation batches a run scores, in memory (codes are small: 400 B per second)."""
    batches = []
    for rows in shard.iter_batches(  # [ray]
        batch_size=batch_size, batch_format="pyarrow", drop_last=False
    ):
        batches.append(rows)
        if max_batches is not None and len(batches) >= max_batches * world:
            break
    return batches


# -- progress -------------------------------------------------------------------------------


class Throughput:
    """Means over the steps since the last report, and the run's overall tokens per second
    (leaving out the first ``WARM_STEPS``). Every worker trains on as many tokens."""

    def __init__(self, world: int):
        self.world = world
        self.total_tokens, self.total_seconds = 0, 0.0
        self._reset()

    def _reset(self) -> None:
        self.loss, self.per_codebook = 0.0, 0.0
        self.tokens, self.seconds, self.data_seconds, self.steps = 0, 0.0, 0.0, 0

    def add(self, result: Step, seconds: float, data_seconds: float, warm: bool) -> None:
        """One step: ``seconds`` of loop (data wait included), ``data_seconds`` of it waiting."""
        self.loss = self.loss + result.loss  # a tensor: no device sync per step
        self.per_codebook = self.per_codebook + result.per_codebook
        self.tokens += result.tokens
        self.seconds += seconds
        self.data_seconds += data_seconds
        self.steps += 1
        if warm:
            self.total_tokens += result.tokens
            self.total_seconds += seconds

    def window(self, lr: float, segment_seconds: float, device: torch.device) -> dict:
        """The metrics of the window, which then starts afresh."""
        steps = max(1, self.steps)
        metrics = {
            "train_loss": float(self.loss) / steps,
            "lr": lr,
            "tokens_per_s": self.tokens * self.world / max(self.seconds, 1e-9),
            # Share of the loop spent waiting for data: near 0 when Ray Data keeps up.
            "data_wait": self.data_seconds / max(self.seconds, 1e-9),
            "segment_seconds": segment_seconds,
        }
        if isinstance(self.per_codebook, torch.Tensor):
            for k, value in enumerate((self.per_codebook / steps).tolist()):
                metrics[f"train_loss_cb{k}"] = value
        if device.type == "cuda":
            metrics["gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        self._reset()
        return metrics

    def overall(self) -> float | None:
        if not self.total_seconds:
            return None
        return self.total_tokens * self.world / self.total_seconds


def format_metrics(step: int, total: int, metrics: dict) -> str:
    return (
        f"[train] step {step}/{total} loss {metrics['train_loss']:.4f} lr {metrics['lr']:.2e} "
        f"tok/s {metrics['tokens_per_s']:.0f} data {metrics['data_wait']:.0%}"
    )


# -- checkpoints ------------------------------------------------------------------------------


def report_checkpoint(
    trainee: Trainee, cfg: Config, rank: int, step: int, position: dict, metrics: dict
) -> None:
    """Gather the state, let rank 0 write it, and hand it to Ray (every rank reports)."""
    import ray.train  # [ray]

    from music_gen.models import lora

    weights = (
        lora.adapter_weights(trainee.core.lm)  # a LoRA run saves its adapter alone
        if lora.spec_of(trainee.core.lm) is not None
        else parallel.full_weights(trainee.wrapped, trainee.core)  # a collective under FSDP
    )
    optim = parallel.optimizer_state(trainee.wrapped, trainee.core, trainee.optimizer)
    ema_weights = dict(trainee.ema.shadow) if trainee.ema is not None else None
    metrics = {**metrics, "step": step}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)  # [ray] a barrier: every rank reports
        return
    lr = trainee.optimizer.param_groups[0]["lr"]
    state = {
        "step": step,
        # The schedule is a function of the step (warmup, cosine): this is its whole state.
        "scheduler": {"kind": "warmup_cosine", "step": step, "lr": lr},
        "data_position": position,
        "metrics": metrics,
        "grad_scaler": trainee.scaler.state_dict() if trainee.scaler is not None else None,
        "config": cfg.model_dump(mode="json"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_weights = {**weights, **ema_weights} if ema_weights else weights
        checkpoints.save_checkpoint(
            Path(tmp),
            trainee.musicgen,
            model_weights,
            state,
            optim,
            raw_weights=weights if ema_weights else None,
            ema_weights=ema_weights,
        )
        ray.train.report(  # [ray] persisted to <storage>/<name>/checkpoint_<step>
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=checkpoints.checkpoint_dir_name(step),
            checkpoint_upload_fn=lambda local, name: persist_then_mark(local, name, step),
        )


def persist_then_mark(local, dir_name: str, step: int):
    """Ray's own copy of a checkpoint to the run's storage, then its completeness marker:
    the copy writes files in no set order, so only a marker written after it says that
    every file arrived (a checkpoint cut short by Ctrl-C or a crash has none)."""
    import ray.train  # [ray]

    storage = ray.train.get_context().get_storage()  # [ray] the run's StorageContext
    persisted = storage.persist_current_checkpoint(local, dir_name)  # [ray]
    marker = checkpoints.marker_path(persisted.path)
    with storage.storage_filesystem.open_output_stream(marker) as out:  # [ray] any storage
        out.write(checkpoints.marker_bytes(step))
    return persisted


def choose_checkpoint(recorded, run_dir: str | None, world: int):
    """The checkpoint to resume from: the newest complete one in the run dir, or Ray's
    record when that is as new.

    Ray registers a reported checkpoint only when it next polls the workers, so after a
    Ctrl-C or a lost node its record can be a checkpoint behind what is on disk. Rank 0
    looks, the others take its choice (all ranks must load the same step).
    """
    import ray.train  # [ray]

    chosen = None
    newest = checkpoints.newest_complete(Path(run_dir)) if run_dir else None
    if newest is not None:
        recorded_step = checkpoints.checkpoint_step(recorded.path) if recorded else None
        if recorded_step is None or newest[0] > recorded_step:
            chosen = str(newest[1])
    if world > 1 and torch.distributed.is_initialized():
        box = [chosen]
        torch.distributed.broadcast_object_list(box, src=0)
        chosen = box[0]
    return ray.train.Checkpoint.from_directory(chosen) if chosen else recorded  # [ray]


# -- the loop ---------------------------------------------------------------------------------


def worker_nodes(world: int) -> list[str]:
    """The Ray node of every rank (short ids, as `ray status` prints them), rank 0 first:
    on a cluster, where a run's workers landed and which node writes its checkpoints."""
    import ray  # [ray]

    node = ray.get_runtime_context().get_node_id()[:8]  # [ray]
    if world == 1 or not torch.distributed.is_initialized():
        return [node]
    nodes: list[str | None] = [None] * world
    torch.distributed.all_gather_object(nodes, node)
    return [str(n) for n in nodes]


def train_loop_per_worker(config: dict) -> dict | None:
    """One Ray Train worker: setup, then the loop. Rank 0 logs, every rank steps."""
    import ray.train  # [ray]
    import ray.train.torch  # [ray]

    from music_gen.platform.cluster import quiet_libraries
    from music_gen.platform.tracking import RunLogger

    quiet_libraries()
    cfg = Config.model_validate(config["cfg"])
    tc = cfg.train
    context = ray.train.get_context()  # [ray]
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if tc.use_gpu else torch.device("cpu")  # [ray]
    if tc.torch_threads:
        torch.set_num_threads(tc.torch_threads)

    recorded = ray.train.get_checkpoint()  # [ray] the latest checkpoint Ray registered
    checkpoint = choose_checkpoint(recorded, config.get("run_dir"), world)
    # Ray's as_directory: a local checkpoint in place, a remote one downloaded once per node
    # and removed when its last reader there is done (``to_directory()`` without a path
    # shares one directory per node too, and a worker that removed "its" copy removed the
    # others' while they still read it: seen in CI, a 2-worker resume lost optimizer.pt).
    reading = checkpoint.as_directory() if checkpoint else contextlib.nullcontext(None)
    with reading as directory:  # [ray]
        resume = Resume.read(directory)
        trainee = build_trainee(
            cfg, config["codec_source"], config["codec_meta"], resume, device, config.get("chroma")
        )
    musicgen = trainee.musicgen
    special, frame_rate = musicgen.lm.cfg.special_token, musicgen.frame_rate

    train_shard = ray.train.get_dataset_shard("train")  # [ray]
    val_shard = ray.train.get_dataset_shard("val")  # [ray] unsplit (DataConfig)
    val_data = None  # read once, at the first evaluation: each Ray Data pass costs seconds
    batches = stream_batches(
        train_shard, tc.batch_size, tc.shuffle_buffer, tc.seed + rank, resume.epoch, resume.batch
    )
    log = RunLogger(config["tracking_uri"], config["run_id"], enabled=rank == 0)
    relay = config.get("relay")

    def say(text: str) -> None:
        if rank == 0:
            write_line(relay, text)

    meter = Throughput(world)
    last_val, prompts = None, list(tc.eval_prompts)
    where = f"resuming at step {resume.step}" if resume.step else "from step 0"
    nodes = worker_nodes(world)
    placed = f"{len(set(nodes))} node(s) (rank 0 on {nodes[0]})"
    say(f"[train] {world} worker(s) on {placed}, {device}, {where} of {tc.steps}")
    if tc.lora.rank:
        trainable, total = count_parameters(trainee.core)
        say(
            f"[train] LoRA rank {tc.lora.rank} over {tc.init}: {trainable:,} of {total:,} "
            f"parameters train ({trainable / total:.2%})"
        )
    if resume.step >= tc.steps:  # a finished run re-run: nothing to train, its last figures
        last_val = ((resume.state or {}).get("metrics") or {}).get(VAL_METRIC)
        say(finished_line(resume.step))

    for step in range(resume.step, tc.steps):
        started = time.perf_counter()
        frames = segment_frames(tc.segment_curriculum, step, frame_rate, musicgen.max_frames)
        epoch, position, rows = next(batches)
        rng = np.random.default_rng([tc.seed, rank, step])  # resume-proof: a function of the step
        batch = make_batch(rows, frames, rng)
        fetched = time.perf_counter()
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        drop = condition_dropout(len(batch.texts), cfg.model.cond_dropout, generator)
        melody_drop = None  # melody models: the melody alone, independently of ``drop``
        if musicgen.has_melody:
            melody_drop = condition_dropout(len(drop), cfg.model.melody_dropout, generator)
        lr = tc.lr * lr_factor(step, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
        set_lr(trainee.optimizer, lr)
        result = train_step(
            trainee.wrapped, trainee.optimizer, batch, drop, special, device, tc.precision,
            tc.grad_clip, trainee.scaler, trainee.core.lm.cfg.audio_channels, melody_drop,
        )  # fmt: skip
        if trainee.ema is not None:
            trainee.ema.update(named_trainable(trainee.core))
        seconds = time.perf_counter() - started  # throughput counts the data wait too
        meter.add(result, seconds, fetched - started, warm=step - resume.step >= WARM_STEPS)
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            metrics = meter.window(lr, frames / frame_rate, device)
            log.metrics(metrics, done)
            say(format_metrics(done, tc.steps, metrics))

        evaluate = done % tc.eval_every == 0 or done == tc.steps
        save = done % tc.checkpoint_every == 0 or done == tc.steps
        if evaluate or save:
            val_data = val_data or read_validation(val_shard, tc.batch_size, tc.val_batches, world)
            val, captions = validate(
                trainee.wrapped, trainee.core, val_data, frames=frames,
                max_batches=tc.val_batches, special=special, device=device,
                precision=tc.precision, rank=rank, world=world,
            )  # fmt: skip
            last_val = float(val.mean())
            val_metrics = {VAL_METRIC: last_val} | {
                f"val_loss_cb{k}": float(v) for k, v in enumerate(val)
            }
            log.metrics(val_metrics, done)
            say(f"[train] step {done} val_loss {last_val:.4f}")
            prompts = prompts or captions[: tc.eval_samples]
            # Generation runs on rank 0 alone: sharded weights would need every rank.
            sharded = parallel.is_sharded(trainee.wrapped)
            if evaluate and rank == 0 and tc.eval_samples and not sharded:
                seconds, seed = tc.eval_sample_seconds, tc.seed + done
                log_samples(log, musicgen, prompts[: tc.eval_samples], seconds, seed, done)
        if save:
            position_now = {"epoch": epoch, "batch": position}
            report_checkpoint(trainee, cfg, rank, done, position_now, val_metrics)

    if rank != 0:
        return None
    return {
        "start_step": resume.step,
        "end_step": tc.steps,
        "val_loss": last_val,
        "tokens_per_s": meter.overall(),
        "world_size": world,
    }
