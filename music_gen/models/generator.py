"""``MusicGen``: text in, codes or audio out. The stable Python API of the platform.

    mg = MusicGen.from_pretrained("work/checkpoints/run1")   # or a transformers MusicGen dir
    codes = mg.generate_codes(["lofi piano"], duration=5.0)  # [B, K, T]
    audio = mg.decode(codes)                                 # [B, C, samples]

Generation is one forward pass per delayed step for all K codebooks at once,
with a key/value cache; classifier-free guidance doubles the batch (conditional
rows, then null rows). Longer than the model's context, it generates windows,
each prompted with the tail of the previous one. An audio prompt is encoded
and its codes become the prefix (continuation).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from music_gen.errors import CheckpointError, ConfigError, UsageError
from music_gen.models import formats, sampling
from music_gen.models.conditioning import (
    Conditioner,
    byte_tokenizer,
    load_text_encoder,
    random_t5,
)
from music_gen.models.lm import LM, PRESETS, LMConfig
from music_gen.models.patterns import build_delay, revert_delay, valid_mask
from music_gen.models.stereo import interleaved_channels

MAX_DURATION = 600.0  # seconds; beyond this a request is a mistake, not a song
PROGRESS_MIN_STEPS = 100  # a bar only for generations that take more than a moment


class MusicGen:
    """A language model, its conditioner and its codec, loaded together."""

    def __init__(self, lm: LM, conditioner: Conditioner, codec, max_frames: int | None = None):
        codec_channels = interleaved_channels(codec)
        if codec_channels != lm.cfg.audio_channels:
            kinds = {1: "mono", 2: "stereo (interleaved channels)"}
            raise CheckpointError(
                f"codec/model mismatch: the model is {kinds[lm.cfg.audio_channels]} with "
                f"{lm.cfg.num_codebooks} codebooks, its codec is {kinds[codec_channels]} "
                f"(a stereo model needs a stereo codec: codec.channels=2)"
            )
        if (codec.num_codebooks, codec.cardinality) != (lm.cfg.num_codebooks, lm.cfg.cardinality):
            raise CheckpointError(
                f"codec/model mismatch: the codec has {codec.num_codebooks} codebooks of "
                f"{codec.cardinality} codes, the model expects {lm.cfg.num_codebooks} of "
                f"{lm.cfg.cardinality}"
            )
        self.lm = lm.eval()
        self.conditioner = conditioner.eval()
        self.codec = codec.eval()
        self.max_frames = max_frames or lm.cfg.max_positions - lm.cfg.num_codebooks
        self.extend_stride = 0.6  # share of a window that is new audio when extending

    # -- properties ---------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.codec.frame_rate

    @property
    def num_codebooks(self) -> int:
        return self.lm.cfg.num_codebooks

    @property
    def device(self) -> torch.device:
        return self.lm.head.weight.device

    def to(self, device=None, dtype: torch.dtype | None = None) -> MusicGen:
        """Move the language model and conditioner (``dtype`` too); the codec moves, stays fp32."""
        self.lm.to(device=device, dtype=dtype)
        self.conditioner.to(device=device, dtype=dtype)
        self.codec.to(device=device)
        return self

    # -- building and loading -------------------------------------------------------

    @classmethod
    def from_config(cls, model_cfg, codec) -> MusicGen:
        """A freshly initialised model (random weights) from a ``ModelConfig`` and a codec."""
        lm_cfg = lm_config_from(model_cfg, codec)
        text = model_cfg.text
        if text.source is None:
            encoder, tokenizer = (
                random_t5(text.dim, text.num_layers, text.num_heads),
                byte_tokenizer(),
            )
        else:
            encoder, tokenizer = load_text_encoder(text.source)
        conditioner = Conditioner(
            encoder,
            tokenizer,
            lm_cfg.dim,
            attributes=model_cfg.attributes,
            max_length=text.max_length,
            freeze=text.freeze,
            melody=melody_settings(model_cfg, codec),
        )
        try:
            lm = LM(lm_cfg)
        except ValueError as exc:  # sizes that do not fit together (e.g. heads vs width)
            raise ConfigError(f"model: {exc}") from None
        return cls(lm, conditioner, codec, max_frames=model_cfg.max_frames)

    @classmethod
    def from_pretrained(cls, src: str | Path, device=None) -> MusicGen:
        """Our checkpoint dir, a transformers MusicGen dir or hub id, ``models:/NAME@ALIAS``,
        or a LoRA adapter dir (loaded over its base and merged, see ``lora.py``)."""
        kind = formats.source_kind(src)
        if kind == "mlflow":
            from music_gen.platform.registry import download_model  # the MLflow edge

            src = download_model(str(src))
            kind = formats.source_kind(src)
        if kind == "ours":
            model = cls._load_ours(Path(src).expanduser())
        elif kind == "adapter":
            model = cls._load_adapter(Path(src).expanduser())
        elif kind in ("transformers", "hub"):
            from music_gen.models.hf import load_transformers_musicgen

            lm, conditioner, codec, max_frames = load_transformers_musicgen(str(src))
            model = cls(lm, conditioner, codec, max_frames=max_frames)
        elif kind == "unknown":
            raise CheckpointError(f"'{src}' is not a music-gen or transformers MusicGen checkpoint")
        else:
            raise CheckpointError(f"checkpoint not found: '{src}'")
        return model.to(device) if device is not None else model

    @classmethod
    def _load_ours(cls, path: Path) -> MusicGen:
        from music_gen.models.codec import load_codec

        meta = formats.read_meta(path)
        try:
            lm_cfg = LMConfig(**meta["lm"])
            cond_meta = dict(meta["conditioner"])
            max_frames = meta.get("max_frames")
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path / formats.FORMAT_FILE}: malformed ({exc})") from None
        weights = formats.read_weights(path / formats.WEIGHTS_FILE)  # fail before the big loads
        encoder, tokenizer = load_text_encoder(path / formats.TEXT_ENCODER_DIR)
        try:
            conditioner = Conditioner(encoder, tokenizer, lm_cfg.dim, **cond_meta)
            lm = LM(lm_cfg)
        except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
            raise CheckpointError(f"{path / formats.FORMAT_FILE}: malformed ({exc})") from None
        formats.load_weights(path / formats.WEIGHTS_FILE, {"lm": lm, "cond": conditioner}, weights)
        codec = load_codec(path / formats.CODEC_DIR)
        return cls(lm, conditioner, codec, max_frames=max_frames)

    @classmethod
    def _load_adapter(cls, path: Path) -> MusicGen:
        from music_gen.models import lora

        spec = lora.read_spec(path)
        try:
            base = cls.from_pretrained(spec.base)
        except CheckpointError as exc:
            raise CheckpointError(
                f"{path}: its base {spec.base} cannot be loaded ({exc})"
            ) from None
        lora.apply_adapter(base, path, spec)
        return base

    def save_pretrained(
        self, directory: str | Path, weights: dict[str, torch.Tensor] | None = None
    ) -> Path:
        """Write safetensors weights, a JSON config, the text encoder and the codec.

        ``weights`` (named as ``state_dict``'s) replace the live modules' own: training
        passes the gathered weights of a sharded model, or the EMA.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cond = self.conditioner
        meta = {
            "format": "music-gen",
            "version": formats.FORMAT_VERSION,
            "lm": asdict(self.lm.cfg),
            "conditioner": {
                "attributes": cond.attributes,
                "max_length": cond.max_length,
                "freeze": cond.freeze,
                "project": isinstance(cond.proj, torch.nn.Linear),
                "melody": None if cond.melody is None else cond.melody.to_dict(),
            },
            "max_frames": self.max_frames,
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
        }
        weights = self.state_dict() if weights is None else weights
        save_file(_contiguous(weights), str(directory / formats.WEIGHTS_FILE))
        cond.encoder.save_pretrained(directory / formats.TEXT_ENCODER_DIR)
        cond.tokenizer.save_pretrained(directory / formats.TEXT_ENCODER_DIR)
        self.codec.save(directory / formats.CODEC_DIR)
        (directory / formats.FORMAT_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    def state_dict(self) -> dict[str, torch.Tensor]:
        """LM and conditioner weights (the text encoder is saved in its own format)."""
        weights = formats.join_weights(
            {"lm": self.lm.state_dict(), "cond": self.conditioner.state_dict()}
        )
        return _contiguous(weights)

    # -- generation ------------------------------------------------------------------

    @torch.inference_mode()
    def generate_codes(
        self,
        prompts: str | Sequence[str],
        duration: float = 5.0,
        temperature: float | Sequence[float] = 1.0,
        top_k: int | Sequence[int] = 250,
        top_p: float | Sequence[float] = 0.0,
        guidance_scale: float | Sequence[float] | None = 3.0,
        seed: int | Sequence[int | None] | None = None,
        attributes: Sequence[dict] | None = None,
        prompt_codes: torch.Tensor | None = None,
        progress: bool = False,
        melody: torch.Tensor | Sequence[torch.Tensor] | None = None,
        melody_sample_rate: int | None = None,
    ) -> torch.Tensor:
        """Codes ``[B, K, T]`` for ``duration`` seconds (including any prompt).

        ``melody`` (models with a melody conditioner): audio ``[S]``, ``[C, S]`` (for every
        prompt), ``[B, C, S]`` or a list of ``[C, S]``, at ``melody_sample_rate`` (default
        the model's); cut to ``duration``, shorter ones looped (``models/melody.py``).
        Guidance drops text and melody together.
        """
        prompts = check_prompts(prompts)
        batch = len(prompts)
        frames = self.frames_for(duration)
        chroma = self._melody_chroma(melody, melody_sample_rate, batch, duration)
        settings = {
            "temperature": _per_row(temperature, batch, torch.float32, "temperature", 0.0),
            "top_k": _per_row(top_k, batch, torch.long, "top_k", 0),
            "top_p": _per_row(top_p, batch, torch.float32, "top_p", 0.0, 1.0),
        }
        scale = _per_row(
            1.0 if guidance_scale is None else guidance_scale,
            batch,
            torch.float32,
            "guidance_scale",
            0.0,
        )
        if prompt_codes is not None:
            prompt_codes = self._check_prompt_codes(prompt_codes, batch, frames)
        memory, mask = self.conditioner(prompts, attributes, melody=chroma)
        if bool((scale != 1).any()):
            memory, mask = self.conditioner.null_condition(memory, mask)
        generators = _generators(seed, batch, self.device)
        run = _Run(self, memory, mask, scale.to(self.device), settings, generators)
        return run.generate(frames, prompt_codes, progress or None)

    @property
    def has_melody(self) -> bool:
        """Whether the model takes a melody (a chroma conditioner, as MusicGen-Melody)."""
        return self.conditioner.melody is not None

    def _melody_chroma(self, melody, sample_rate, batch: int, duration: float):
        if melody is None:
            return None
        settings = self.conditioner.melody
        if settings is None:
            raise UsageError(
                "this model has no melody conditioner: --melody / melody= needs a "
                "MusicGen-Melody style model"
            )
        from music_gen.models.melody import melody_chroma

        rate = self.sample_rate if sample_rate is None else sample_rate
        return melody_chroma(melody, rate, batch, duration, settings)  # [B, T, 12]

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, T]`` -> audio ``[B, C, samples]`` at ``self.sample_rate``."""
        codec_device = next(self.codec.parameters()).device
        return self.codec.decode(codes.to(codec_device)).float()

    @torch.inference_mode()
    def encode_audio(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Audio ``[B, C, S]`` (or ``[C, S]``) at any rate -> codes ``[B, K, T]`` (for prompts)."""
        from music_gen.audio.transforms import resample, to_channels

        if audio.dim() == 2:
            audio = audio[None]
        audio = resample(audio, sample_rate, self.sample_rate)
        audio = torch.stack([to_channels(clip, self.codec.channels) for clip in audio])
        codec_device = next(self.codec.parameters()).device
        return self.codec.encode(audio.to(codec_device)).to(self.device)

    def generate(self, prompts, duration: float = 5.0, **kwargs) -> torch.Tensor:
        """``generate_codes`` then ``decode``: audio ``[B, C, samples]``."""
        return self.decode(self.generate_codes(prompts, duration, **kwargs))

    def frames_for(self, duration: float) -> int:
        if not isinstance(duration, int | float) or not 0 < duration <= MAX_DURATION:
            raise UsageError(f"duration must be in (0, {MAX_DURATION:g}] seconds, got {duration}")
        return max(1, round(duration * self.frame_rate))

    def _check_prompt_codes(self, codes: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise UsageError(
                f"prompt codes must be [B, {self.num_codebooks}, T], got {list(codes.shape)}"
            )
        if codes.shape[0] == 1 and batch > 1:
            codes = codes.expand(batch, -1, -1)
        if codes.shape[0] != batch:
            raise UsageError(f"{codes.shape[0]} audio prompts for {batch} text prompts")
        if codes.shape[-1] >= frames:
            seconds = codes.shape[-1] / self.frame_rate
            raise UsageError(
                f"duration must be longer than the audio prompt ({seconds:.2f} s): it includes it"
            )
        return codes.to(self.device)


class _Run:
    """One generation call: conditioning, settings and generators fixed; windows of codes."""

    def __init__(self, model: MusicGen, memory, mask, scale, settings, generators):
        self.model, self.memory, self.mask, self.scale = model, memory, mask, scale
        self.settings = {name: value.to(model.device) for name, value in settings.items()}
        self.generators = generators
        self.guided = memory.shape[0] != scale.shape[0]

    def generate(self, frames: int, prefix: torch.Tensor | None, progress) -> torch.Tensor:
        context = self.model.max_frames
        if frames <= context:
            return self.window(frames, prefix, progress)
        # Longer than the context: windows re-prompted with the tail of the last one.
        overlap = int(context * (1 - self.model.extend_stride))
        head = None
        if prefix is not None and prefix.shape[-1] > overlap:
            head, prefix = prefix[..., :-overlap], prefix[..., -overlap:]
            frames -= head.shape[-1]
        codes = self.window(min(frames, context), prefix, progress)
        while codes.shape[-1] < frames:
            new = min(context - overlap, frames - codes.shape[-1])
            window = self.window(overlap + new, codes[..., -overlap:], progress)
            codes = torch.cat([codes, window[..., overlap:]], dim=-1)  # [B, K, T]
        return codes if head is None else torch.cat([head, codes], dim=-1)

    def window(self, frames: int, prefix: torch.Tensor | None, progress) -> torch.Tensor:
        """Codes ``[B, K, frames]``, the first ``prefix.shape[-1]`` of them given."""
        lm = self.model.lm
        batch, codebooks, special = self.scale.shape[0], lm.cfg.num_codebooks, lm.cfg.special_token
        channels = lm.cfg.audio_channels
        steps = frames + lm.cfg.num_levels - 1
        device = self.model.device
        # seq[:, :, 0] is the start token; seq[:, :, s + 1] holds delayed step s.
        seq = torch.full((batch, codebooks, steps + 1), special, dtype=torch.long, device=device)
        known = torch.zeros_like(seq, dtype=torch.bool)
        fed = 1
        if prefix is not None:
            delayed = build_delay(prefix, special, channels)  # [B, K, Tp + K/channels - 1]
            seq[:, :, 1 : delayed.shape[-1] + 1] = delayed
            known[:, :, 1 : delayed.shape[-1] + 1] = valid_mask(
                codebooks, delayed.shape[-1], device, channels
            )
            fed = prefix.shape[-1] + 1  # steps before Tp are complete: feed them at once
        pattern = valid_mask(codebooks, steps, device, channels)  # [K, steps]

        state = lm.start(self.memory, self.mask, max_steps=steps)
        logits = lm.step(self._double(seq[:, :, :fed]), state)[:, :, -1]  # [B', K, card]
        bar = tqdm(
            total=steps,
            initial=fed - 1,
            desc="generating",
            unit="step",
            file=sys.stderr,
            disable=not progress or steps < PROGRESS_MIN_STEPS,
        )
        for pos in range(fed, steps + 1):
            codes = self._choose(logits)  # [B, K]
            codes = torch.where(pattern[:, pos - 1], codes, special)
            codes = torch.where(known[:, :, pos], seq[:, :, pos], codes)
            seq[:, :, pos] = codes
            bar.update()
            if pos < steps:
                logits = lm.step(self._double(codes[..., None]), state)[:, :, -1]
        bar.close()
        return revert_delay(seq[:, :, 1:], channels)  # [B, K, frames]

    def _double(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.cat([codes, codes]) if self.guided else codes

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        if self.guided:
            logits = sampling.apply_guidance(logits, self.scale)  # [B, K, card]
        return sampling.sample(logits, generators=self.generators, **self.settings)


# -- helpers -------------------------------------------------------------------------


def melody_settings(model_cfg, codec) -> dict | None:
    """A new melody model's ``ChromaSettings`` (as a dict; None without ``model.melody``):
    MusicGen-Melody's STFT, as many chroma frames as the context's seconds give."""
    if not model_cfg.melody:
        return None
    from music_gen.models.melody import ChromaSettings, chroma_frames

    seconds = model_cfg.max_frames / codec.frame_rate
    return ChromaSettings(chroma_length=chroma_frames(seconds, ChromaSettings())).to_dict()


def lm_config_from(model_cfg, codec) -> LMConfig:
    """Turn a ``ModelConfig`` (preset + overrides) into the plain ``LMConfig``.

    Codebook count and cardinality default to the codec's; given explicitly, the
    ``MusicGen`` constructor checks that they match it.
    """
    num_codebooks = model_cfg.num_codebooks or codec.num_codebooks
    cardinality = model_cfg.cardinality or codec.cardinality
    overrides = {
        key: getattr(model_cfg, key)
        for key in ("dim", "num_layers", "num_heads", "ffn_dim")
        if getattr(model_cfg, key) is not None
    }
    if "dim" in overrides and "ffn_dim" not in overrides:
        overrides["ffn_dim"] = 4 * overrides["dim"]
    melody = melody_settings(model_cfg, codec)
    # A melody model's condition leads the sequence: chroma frames, text tokens, attributes.
    prefix = (
        melody["chroma_length"] + model_cfg.text.max_length + len(model_cfg.attributes)
        if melody
        else 0
    )
    return PRESETS[model_cfg.preset](
        num_codebooks=num_codebooks,
        cardinality=cardinality,
        max_positions=prefix + model_cfg.max_frames + num_codebooks,
        cross_attention=melody is None,
        gradient_checkpointing=model_cfg.gradient_checkpointing,
        audio_channels=interleaved_channels(codec),
        **overrides,
    )


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) if this machine has it, else a
    ``UsageError``; ``None`` is the first GPU when there is one, else the CPU."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device '{requested}' (cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise UsageError(f"device '{requested}': this machine has no CUDA GPU (use cpu)")
        if device.index is not None and device.index >= count:
            raise UsageError(f"device '{requested}': this machine has {count} CUDA GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device '{requested}': MPS is not available here (use cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device '{requested}' (cpu, cuda, cuda:N, mps)")
    return device


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX). Elsewhere
    bf16 matmuls are emulated and slower than fp32 ones."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def pick_dtype(requested: str, device: torch.device | str) -> torch.dtype:
    """The language model's dtype for ``requested`` (``auto`` or a name in ``DTYPES``) on
    ``device``. ``auto`` is bf16 on CUDA and on a CPU with native bf16, fp32 elsewhere.

    The one place that decides ``auto``: the commands default to it (Serve too, but its CPU
    replicas stay fp32: ``serve.deployments.load_model`` says why), while the Python API
    stays fp32 unless asked (its greedy codes equal transformers' fp32 ones)."""
    if requested != "auto":
        if requested not in DTYPES:
            raise UsageError(f"unknown dtype '{requested}' (auto, {', '.join(DTYPES)})")
        return DTYPES[requested]
    kind = torch.device(device).type
    if kind == "cuda" or (kind == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return torch.float32


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise UsageError("no prompts given")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError(f"prompt {index + 1} is empty")
    return prompts


def _per_row(value, batch: int, dtype, name: str, low: float, high: float | None = None):
    values = list(value) if isinstance(value, Sequence) else [value] * batch
    if len(values) != batch:
        raise UsageError(f"{name}: {len(values)} values for {batch} prompts")
    for item in values:
        number = isinstance(item, int | float) and not isinstance(item, bool)
        if (
            not number
            or not math.isfinite(item)
            or item < low
            or (high is not None and item > high)
        ):
            bounds = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"
            raise UsageError(f"{name} must be {bounds}, got {item!r}")
    return torch.tensor(values, dtype=dtype)


def _generators(seed, batch: int, device: torch.device):
    """None (global RNG), one generator for the batch, or one per row.

    Generators live on the device of the logits they draw for (``torch.multinomial`` on
    CUDA refuses a CPU generator). A row's seed gives the same draws whatever else is in
    the batch, since each row draws from its own generator.
    """
    if seed is None:
        return None
    if isinstance(seed, int):
        return torch.Generator(device=device).manual_seed(seed)
    seeds = list(seed)
    if len(seeds) != batch:
        raise UsageError(f"seed: {len(seeds)} values for {batch} prompts")
    return [
        None if s is None else torch.Generator(device=device).manual_seed(int(s)) for s in seeds
    ]


def _contiguous(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in weights.items()}
