"""One Ray Train worker of a codec run: setup, then a flat loop.

Ray appears only at the lines marked ``# [ray]``. Every rank steps (DDP; the codebook
statistics are summed over ranks inside the forward); rank 0 initialises the codebooks
by k-means (and broadcasts them), scores the held-out segments, logs to MLflow and
writes the checkpoints, which are codec directories plus ``train_state/``. With
``codec.train.unquantized_steps`` the first steps train a plain autoencoder on the
waveform loss alone and the codebooks are fitted when the warm-up ends.

With ``codec.train.adversarial`` a multi-scale STFT discriminator trains beside the codec
(from ``adversarial_start_step``): each step first moves the discriminator on the real
and the detached reconstructed audio, then the codec on its reconstruction losses plus
the discriminator's hinge and feature-matching losses. The discriminator's weights and
optimizer live in ``train_state/`` only; the codec directory is the same as without it.

Reused from the LM's training: the data stream (``stream_batches``), the learning-rate
schedule (``lr_factor``, ``set_lr``), the progress relay and the MLflow ``RunLogger``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError

from music_gen.config import Config
from music_gen.errors import CheckpointError
from music_gen.models import codec_training as ct
from music_gen.models import discriminator as disc
from music_gen.models.codebooks import calibrate_codec
from music_gen.models.codec import TransformersCodec, save_encodec
from music_gen.pipelines.codec.data import to_tensor
from music_gen.pipelines.train.step import lr_factor, set_lr
from music_gen.pipelines.train.worker import read_validation, stream_batches
from music_gen.platform.cluster import write_line

VAL_METRIC = "val_mel"
"""What checkpoints are ranked by (lower is better)."""
TRAIN_STATE = "train_state"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
DISCRIMINATOR_FILE = "discriminator.safetensors"
DISCRIMINATOR_OPTIMIZER_FILE = "discriminator_optimizer.pt"
RESUME_ERRORS = (OSError, RuntimeError, ValueError, SafetensorError)
"""What a damaged or foreign train state raises as it is read."""
EXAMPLES = 2
"""Held-out reconstructions logged (audio and spectrogram) at each checkpoint."""


def build_network(cfg: Config):
    """The codec network of ``cfg.codec`` (random weights, the same on every rank)."""
    tc = cfg.codec.train
    config = ct.encodec_config(
        tc.sample_rate, tc.channels, tc.ratios, tc.num_filters, tc.latent_dim,
        tc.lstm_layers, cfg.codec.num_codebooks, cfg.codec.cardinality, tc.pad_mode,
    )  # fmt: skip
    return ct.build_model(config, tc.seed)


def build_adversary(cfg: Config, device=None) -> tuple:
    """The discriminator (on ``device``, in training mode) and its optimizer, or
    ``(None, None)`` when the switch is off. On the device before any optimizer state is
    loaded: ``load_state_dict`` puts the state where the parameters are."""
    tc = cfg.codec.train
    if not tc.adversarial:
        return None, None
    discriminator = disc.build_discriminator(tc.channels, tc.discriminator_filters, tc.seed + 1)
    discriminator.to(device).train()
    betas = tuple(tc.betas)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=tc.discriminator_lr, betas=betas)
    return discriminator, optimizer


def save_checkpoint(
    directory: Path, model, optimizer, state: dict, discriminator=None, d_optimizer=None
) -> None:
    from safetensors.torch import save_file

    save_encodec(model, directory)
    train_dir = directory / TRAIN_STATE
    train_dir.mkdir(parents=True, exist_ok=True)
    (train_dir / STATE_FILE).write_text(json.dumps(state, indent=1))
    torch.save(optimizer.state_dict(), train_dir / OPTIMIZER_FILE)
    if discriminator is not None:
        weights = {k: v.contiguous() for k, v in discriminator.state_dict().items()}
        save_file(weights, str(train_dir / DISCRIMINATOR_FILE))
        torch.save(d_optimizer.state_dict(), train_dir / DISCRIMINATOR_OPTIMIZER_FILE)


def load_checkpoint(directory: Path, model, optimizer) -> dict:
    """Weights and optimizer state from a checkpoint; returns its state (step, metrics)."""
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        optimizer.load_state_dict(
            torch.load(directory / TRAIN_STATE / OPTIMIZER_FILE, weights_only=True)
        )
        return json.loads((directory / TRAIN_STATE / STATE_FILE).read_text())
    except RESUME_ERRORS as exc:
        raise CheckpointError(f"cannot resume from {directory}: {exc}") from None


def load_discriminator(directory: Path, discriminator, d_optimizer) -> bool:
    """The discriminator's weights and optimizer state from a checkpoint; ``False`` when it
    has none (a run that trained without one: the discriminator starts afresh)."""
    from safetensors.torch import load_file

    train_dir = directory / TRAIN_STATE
    if not (train_dir / DISCRIMINATOR_FILE).exists():
        return False
    try:
        discriminator.load_state_dict(load_file(str(train_dir / DISCRIMINATOR_FILE)))
        d_optimizer.load_state_dict(
            torch.load(train_dir / DISCRIMINATOR_OPTIMIZER_FILE, weights_only=True)
        )
    except RESUME_ERRORS as exc:
        raise CheckpointError(f"cannot resume the discriminator from {directory}: {exc}") from None
    return True


def fit_codebooks(module, batches, count: int, rank: int) -> None:
    """Codebooks by k-means on the latents of ``count`` batches, the same on every rank.

    Every rank draws the batches (Ray Data's split streams feed all ranks in step); rank
    0's are fitted, as EnCodec's first step does, and its codebooks broadcast (the fit
    comes after DDP's construction, which copies buffers only once)."""
    sample = [to_tensor(next(batches)[2]) for _ in range(count)]
    if rank == 0:
        device = next(module.parameters()).device
        calibrate_codec(TransformersCodec(module.model.cpu()), sample, iters=10)
        module.to(device).train().requires_grad_(True)  # TransformersCodec froze it
    module.broadcast_codebooks()


@torch.no_grad()
def score(module, mel_loss, batches: list, limit: int, device) -> tuple[dict, list]:
    """Held-out SI-SNR (dB), mel distance and codebook use; plus a few (input, output) pairs."""
    module.eval()
    snrs, mels, sizes, seen = [], [], [], 0
    examples: list[tuple[torch.Tensor, torch.Tensor]] = []
    codes_seen: list[torch.Tensor] = []
    for rows in batches:
        audio = to_tensor(rows).to(device)[: limit - seen]  # [B, C, S]
        output, _, codes = module(audio)
        output = output[..., : audio.shape[-1]]
        snrs.append(ct.si_snr(output, audio))
        mels.append(mel_loss(output, audio) * audio.shape[0])
        sizes.append(audio.shape[0])
        codes_seen.append(codes)
        examples += list(zip(audio.cpu(), output.cpu(), strict=True))[: EXAMPLES - len(examples)]
        seen += audio.shape[0]
        if seen >= limit:
            break
    module.train()
    codes = torch.cat(codes_seen)  # [N, K, T]
    used = [
        int(codes[:, k].unique().numel()) for k in range(codes.shape[1])
    ]  # distinct codes per codebook
    metrics = {
        "val_si_snr": float(torch.cat(snrs).mean()),
        VAL_METRIC: float(sum(mels) / sum(sizes)),
        "val_codes_used": sum(used) / len(used),
    }
    return metrics, examples


def log_examples(log, examples: list, sample_rate: int, step: int) -> None:
    """Held-out inputs and their reconstructions as WAV and spectrogram PNG artifacts."""
    if not log.enabled or not examples:
        return
    from music_gen.audio import write_audio
    from music_gen.pipelines.train.samples import spectrogram_png

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for index, (original, decoded) in enumerate(examples):
            for kind, clip in (("input", original), ("output", decoded)):
                write_audio(directory / f"{index:02d}_{kind}.wav", clip.clamp(-1, 1), sample_rate)
                spectrogram_png(clip, directory / f"{index:02d}_{kind}.png")
        log.artifacts(directory, f"reconstructions/step_{step:07d}")


def train_loop_per_worker(config: dict) -> dict | None:
    """One worker: setup, then the loop. Rank 0 logs and checkpoints, every rank steps."""
    import ray.train  # [ray]
    import ray.train.torch  # [ray]

    from music_gen.platform.cluster import quiet_libraries
    from music_gen.platform.tracking import RunLogger

    quiet_libraries()
    cfg = Config.model_validate(config["cfg"])
    tc = cfg.codec.train
    context = ray.train.get_context()  # [ray]
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if tc.use_gpu else torch.device("cpu")  # [ray]
    if tc.torch_threads:
        torch.set_num_threads(tc.torch_threads)

    model = build_network(cfg)
    module = ct.QuantizedAutoencoder(model, tc.codebook_ema, tc.dead_code_threshold)
    optimizer = torch.optim.Adam(module.parameters(), lr=tc.lr, betas=tuple(tc.betas))
    discriminator, d_optimizer = build_adversary(cfg, device)
    restored = False
    start, checkpoint = 0, ray.train.get_checkpoint()  # [ray] the run's latest, if any
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start = int(load_checkpoint(Path(directory), model, optimizer)["step"])
            if discriminator is not None:
                restored = load_discriminator(Path(directory), discriminator, d_optimizer)
    # Batches are a function of the step: a resumed run draws afresh, not a replay.
    batches = stream_batches(
        ray.train.get_dataset_shard("train"),  # [ray]
        tc.batch_size, 1024, tc.seed + 7919 * rank + start, 0, 0,
    )  # fmt: skip
    module.to(device).train()
    wrapped = module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Construction copies rank 0's weights and k-means codebooks to every rank; the
        # codebooks then stay equal by the summed statistics of the forward.
        wrapped = DistributedDataParallel(module, forward_sync_buffers=False)
    wrapped_d = discriminator
    if discriminator is not None and world > 1:
        wrapped_d = DistributedDataParallel(discriminator)
    mel_loss = ct.MelLoss(tc.sample_rate).to(device)
    val_data = None
    log = RunLogger(config["tracking_uri"], config["run_id"], enabled=rank == 0)
    relay = config.get("relay")

    def say(text: str) -> None:
        if rank == 0:
            write_line(relay, text)

    where = f"resuming at step {start}" if start else "from step 0"
    say(f"[codec] {world} worker(s), {device}, {where} of {tc.steps}")
    if discriminator is not None:
        fresh = " (none in the checkpoint: a fresh one)" if start and not restored else ""
        say(f"[codec] adversarial from step {tc.adversarial_start_step}{fresh}")
    window: dict[str, list[float]] = {}  # name -> [sum, steps it was measured]
    window_steps, window_start, metrics = 0, time.perf_counter(), {}
    for step in range(start, tc.steps):
        rows = next(batches)[2]
        audio = to_tensor(rows).to(device)  # [B, C, S]
        set_lr(optimizer, tc.lr * lr_factor(step, tc.warmup_steps, tc.steps, tc.min_lr_ratio))
        if step == tc.unquantized_steps:  # a resumed run past it has them in its checkpoint
            fit_codebooks(module, batches, tc.kmeans_batches, rank)
            if step:
                say(f"[codec] step {step}: codebooks fitted, the quantizer comes in")
        warm = step < tc.unquantized_steps
        output, commitment, _ = wrapped(audio, quantize=not warm)
        losses = ct.reconstruction_losses(output, audio, mel_loss)
        if warm:
            # The waveform loss alone: with SI-SNR's and the mel loss's gradients beside
            # it the autoencoder did not reliably learn the waveform (benchmarks/codec.py).
            loss = losses["waveform"]
        else:
            losses["commitment"] = commitment
            loss = (
                tc.l1_weight * losses["l1"]
                + tc.mel_weight * losses["mel"]
                + tc.waveform_weight * losses["waveform"]
                + tc.commitment_weight * commitment
            )
            if tc.si_snr_weight:
                losses["si_snr"] = ct.si_snr(output, audio).mean()
                loss = loss - tc.si_snr_weight * losses["si_snr"] / 10
        if discriminator is not None and not warm and step >= tc.adversarial_start_step:
            output = output[..., : audio.shape[-1]]  # [B, C, S]
            losses["d_loss"] = disc.discriminator_step(
                wrapped_d, d_optimizer, audio, output, tc.grad_clip
            )
            # The bare module: this forward must not involve the discriminator's DDP.
            adversarial = disc.generator_losses(discriminator, audio, output)
            losses.update(adversarial)
            loss = (
                loss
                + tc.adversarial_weight * adversarial["g_adv"]
                + tc.feature_weight * adversarial["feature"]
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), tc.grad_clip)
        optimizer.step()
        for name, value in {"loss": loss, **losses}.items():
            total = window.setdefault(name, [0.0, 0])
            total[0] += float(value.detach())
            total[1] += 1
        window_steps += 1
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            seconds = time.perf_counter() - window_start
            metrics = {f"train_{k}": total / count for k, (total, count) in window.items()}
            metrics["audio_seconds_per_s"] = (
                window_steps * audio.shape[0] * audio.shape[-1] * world
            ) / (tc.sample_rate * max(seconds, 1e-9))
            log.metrics(metrics, done)
            adversarial_part = (
                f" d {metrics['train_d_loss']:.3f} g_adv {metrics['train_g_adv']:.3f}"
                if "train_d_loss" in metrics
                else ""
            )
            say(
                f"[codec] step {done}/{tc.steps} loss {metrics['train_loss']:.4f} "
                f"l1 {metrics['train_l1']:.4f} mel {metrics['train_mel']:.3f}{adversarial_part}"
            )
            window, window_steps, window_start = {}, 0, time.perf_counter()
        if done % tc.checkpoint_every == 0 or done == tc.steps:
            report = {"step": done, **metrics}
            if rank == 0:
                val_data = val_data or read_validation(
                    ray.train.get_dataset_shard("val"),
                    tc.batch_size,
                    None,
                    1,  # [ray]
                )
                # No held-out file (a single input file): the last batch is scored instead.
                scores, examples = score(
                    module, mel_loss, val_data or [rows], tc.max_val_segments, device
                )
                report.update(scores)
                log.metrics(scores, done)
                log_examples(log, examples, tc.sample_rate, done)
                say(
                    f"[codec] step {done} held-out SI-SNR {scores['val_si_snr']:.2f} dB "
                    f"mel {scores[VAL_METRIC]:.3f}"
                )
                state = {"step": done, "metrics": report, "config": cfg.model_dump(mode="json")}
                with tempfile.TemporaryDirectory() as tmp:
                    save_checkpoint(Path(tmp), model, optimizer, state, discriminator, d_optimizer)
                    ray.train.report(  # [ray] persisted to <storage>/<name>/checkpoint_<step>
                        report,
                        checkpoint=ray.train.Checkpoint.from_directory(tmp),
                        checkpoint_dir_name=f"checkpoint_{done:07d}",
                    )
            else:
                ray.train.report(report, checkpoint=None)  # [ray] a barrier: every rank reports
    if rank != 0:
        return None
    return {"start_step": start, "end_step": tc.steps, "world_size": world}
