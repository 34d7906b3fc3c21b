"""Audio codecs: EnCodec behind one small interface, with two backends.

A codec turns audio ``[B, C, S]`` into K parallel streams of discrete codes
``[B, K, T]`` at ``frame_rate`` frames per second, and back. The language model
only ever sees codes; the codec itself is frozen.

Interface (``Codec``, a ``typing.Protocol``; both backends are plain
``nn.Module`` classes that satisfy it, no shared base class):

- ``encode(audio [B, C, S]) -> codes [B, K, T]`` with ``T = ceil(S / hop_length)``:
  EnCodec's convolutions pad the end of the signal so that a partial last hop
  still gets a frame (S = 1 gives one frame, S = hop + 1 gives two).
- ``decode(codes [B, K, T]) -> audio [B, C, T * hop_length]``: always whole
  hops, so decoding a clip of S samples gives back ``ceil(S / hop) * hop`` samples;
  cut to S if the original length matters.
- ``latents(audio [B, C, S]) -> [B, D, T]``: the continuous encoder output that
  the residual quantizer sees (calibration fits on it; a Fréchet Audio Distance
  can embed with it).
- ``save(directory)``: ``codec.json`` (what is needed to rebuild) plus
  ``model.safetensors``; ``load_codec`` reads it back.

Backends (``BACKENDS`` picks one by name):

- ``TransformersCodec`` wraps transformers' ``EncodecModel``. Preset ``musicgen``
  is the architecture of ``facebook/encodec_32khz`` (32 kHz mono, 50 Hz, 4 x 2048),
  the codec MusicGen uses; preset ``tiny`` is a small fast 16 kHz codec for
  offline work and tests.
- ``EncodecPackageCodec`` wraps the ``encodec`` package's 24 kHz (mono, 75 Hz)
  and 48 kHz (stereo, 150 Hz) models at a chosen bandwidth (cardinality 1024).

Random weights: EnCodec fills its codebooks by k-means on the first training batch,
so a freshly built codec has all-zero codebooks and encodes every sound to code 0.
``models/codebooks.py`` fits them (``calibrate_codec``) through each backend's
``set_codebooks`` and builds the offline codec (``tiny_calibrated_codec``).

Why this module is one file of about 600 lines: the interface, the checks both
backends share (``_check_audio``, ``_check_codes``, ``_save``, ``_write_codebooks``),
the two backends and the loader that dispatches on them (our directories,
transformers directories and hub ids, encodec checkpoints) change together; split
apart, the loader and the backends would import each other.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import encodec
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import EncodecConfig, EncodecModel

from music_gen.config import CodecConfig
from music_gen.errors import AudioError, CheckpointError, ConfigError, UsageError
from music_gen.models.formats import looks_like_hub_id

logger = logging.getLogger(__name__)

CODEC_JSON = "codec.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1


@runtime_checkable
class Codec(Protocol):
    """What the rest of the platform may use of a codec."""

    backend: str
    """``"transformers"`` or ``"encodec"``."""
    model: nn.Module
    """The wrapped network (its state dict is what ``save`` writes)."""
    sample_rate: int
    channels: int
    frame_rate: float
    """Frames per second: ``sample_rate / hop_length``."""
    num_codebooks: int
    """K, the parallel code streams."""
    cardinality: int
    """Codes per codebook."""
    hop_length: int
    """Audio samples per frame."""

    def encode(self, audio: Tensor) -> Tensor: ...

    def decode(self, codes: Tensor) -> Tensor: ...

    def latents(self, audio: Tensor) -> Tensor: ...

    def set_codebooks(self, embed: Tensor, counts: Tensor) -> None: ...

    def save(self, directory: str | Path) -> Path: ...


# ---------------------------------------------------------------------------
# Shared checks (plain functions, not a base class)
# ---------------------------------------------------------------------------


def _check_audio(codec: Codec, audio: Tensor, model: nn.Module) -> Tensor:
    if audio.dim() != 3 or audio.shape[-1] == 0:
        raise AudioError(
            f"codec expects audio shaped [batch, channels, samples], got {tuple(audio.shape)}"
        )
    if audio.shape[1] != codec.channels:
        raise AudioError(
            f"codec expects {codec.channels} channel(s) at {codec.sample_rate} Hz, got {audio.shape[1]}"
        )
    weight = next(model.parameters())
    return audio.to(device=weight.device, dtype=weight.dtype)


def _check_codes(codec: Codec, codes: Tensor, model: nn.Module) -> Tensor:
    if codes.dim() != 3 or codes.shape[1] != codec.num_codebooks or codes.shape[-1] == 0:
        raise UsageError(
            f"codec expects codes shaped [batch, {codec.num_codebooks}, frames], got {tuple(codes.shape)}"
        )
    if codes.is_floating_point() or codes.is_complex():
        raise UsageError(f"codes must be integers, got {codes.dtype}")
    if codes.min() < 0 or codes.max() >= codec.cardinality:
        raise UsageError(
            f"codes must lie in [0, {codec.cardinality}), got [{int(codes.min())}, {int(codes.max())}]"
        )
    return codes.to(device=next(model.parameters()).device, dtype=torch.long)


def _write_codebooks(books: list[nn.Module], embed: Tensor, counts: Tensor) -> None:
    """Write centroids into EnCodec codebook modules, as EnCodec's own k-means init does.

    Both implementations keep the same buffers: ``embed`` (the centroids), ``embed_avg``
    (the EMA numerator, initialised to a copy of ``embed``), ``cluster_size`` and
    ``inited`` (set so that a training-mode forward never re-runs k-means over them).
    """
    if embed.shape[0] > len(books) or embed.shape[1:] != books[0].embed.shape:
        raise ValueError(
            f"centroids {tuple(embed.shape)} do not fit {len(books)} codebooks of {tuple(books[0].embed.shape)}"
        )
    with torch.no_grad():
        for book, centroids, sizes in zip(books, embed, counts, strict=False):
            book.embed.copy_(centroids)  # [N, D]
            book.embed_avg.copy_(centroids)  # [N, D]
            book.cluster_size.copy_(sizes)  # [N]
            book.inited.fill_(1.0)


def _save(directory: str | Path, spec: dict, model: nn.Module) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()
    }
    save_file(state, str(directory / WEIGHTS))
    (directory / CODEC_JSON).write_text(
        json.dumps({"format_version": FORMAT_VERSION, **spec}, indent=2)
    )
    return directory


# ---------------------------------------------------------------------------
# Backend 1: transformers' EncodecModel
# ---------------------------------------------------------------------------


def _bandwidth_for(num_codebooks: int, frame_rate: int, cardinality: int) -> float:
    """kbps that makes transformers' EnCodec use exactly ``num_codebooks`` codebooks.

    It derives the count as floor(1000 * bandwidth / (frame_rate * log2(cardinality)));
    one extra bit per second guards that floor against float round-off.
    """
    bits = num_codebooks * frame_rate * math.log2(cardinality)
    return (bits + 1) / 1000


def tiny_encodec_config(num_codebooks: int = 4, cardinality: int = 256) -> EncodecConfig:
    """Small, fast offline codec: 16 kHz mono, hop 320 (50 Hz), 32-dim latents.

    About 0.66 M parameters: 10 s of audio encodes and decodes in about 0.1 s on one core.
    """
    if cardinality & (cardinality - 1):
        raise ConfigError(f"codec.cardinality must be a power of 2 for EnCodec, got {cardinality}")
    return EncodecConfig(
        sampling_rate=16_000,
        audio_channels=1,
        upsampling_ratios=[8, 5, 4, 2],
        num_filters=8,
        hidden_size=32,
        num_lstm_layers=1,
        codebook_size=cardinality,
        target_bandwidths=[_bandwidth_for(num_codebooks, 50, cardinality)],
        use_causal_conv=False,
        use_conv_shortcut=False,
        normalize=False,
    )


def musicgen_encodec_config() -> EncodecConfig:
    """The architecture of ``facebook/encodec_32khz`` (32 kHz mono, hop 640, 4 x 2048).

    Values as in transformers' conversion script for that checkpoint; the remaining
    fields (hidden size 128, 2 LSTM layers, weight norm, reflect padding) are defaults.
    """
    return EncodecConfig(
        sampling_rate=32_000,
        audio_channels=1,
        upsampling_ratios=[8, 5, 4, 4],
        num_filters=64,
        codebook_size=2048,
        target_bandwidths=[2.2],
        use_causal_conv=False,
        use_conv_shortcut=False,
        normalize=False,
    )


# Preset name -> its EncodecConfig (MusicGen's codec is always 4 x 2048, so ``musicgen``
# ignores ``num_codebooks`` and ``cardinality``).
PRESETS: dict[str, Callable[[CodecConfig], EncodecConfig]] = {
    "tiny": lambda cfg: tiny_encodec_config(cfg.num_codebooks, cfg.cardinality),
    "musicgen": lambda cfg: musicgen_encodec_config(),
}


class TransformersCodec(nn.Module):
    """transformers' ``EncodecModel`` at one bandwidth (by default its largest).

    Only unchunked, unnormalised configs are accepted (the 24 and 32 kHz codecs):
    chunked ones (``encodec_48khz``) carry per-chunk scales that codes alone cannot
    hold; use the ``encodec`` backend for 48 kHz.
    """

    backend = "transformers"

    def __init__(self, model: EncodecModel, bandwidth: float | None = None):
        super().__init__()
        config = model.config
        if config.chunk_length_s is not None or config.normalize:
            raise CheckpointError(
                "chunked or normalising transformers Encodec models (e.g. encodec_48khz) are not "
                "supported; use codec.backend=encodec with sample_rate 48000"
            )
        bandwidth = max(config.target_bandwidths) if bandwidth is None else bandwidth
        if bandwidth not in config.target_bandwidths:
            raise ConfigError(
                f"codec bandwidth {bandwidth} not in {list(config.target_bandwidths)}"
            )
        self.model = model.eval().requires_grad_(False)
        self.bandwidth = float(bandwidth)
        self.sample_rate = int(config.sampling_rate)
        self.channels = int(config.audio_channels)
        self.hop_length = int(config.hop_length)
        self.frame_rate = self.sample_rate / self.hop_length
        self.num_codebooks = model.quantizer.get_num_quantizers_for_bandwidth(bandwidth)
        self.cardinality = int(config.codebook_size)

    def train(self, mode: bool = True) -> TransformersCodec:
        # The codec is frozen: a parent module's .train() must not flip it.
        return super().train(False)

    def encode(self, audio: Tensor) -> Tensor:
        audio = _check_audio(self, audio, self.model)  # [B, C, S]
        with torch.inference_mode():
            out = self.model.encode(audio, bandwidth=self.bandwidth, return_dict=True)
        # One chunk (chunk_length_s is None): audio_codes is [1, B, K, T].
        # Cloned outside inference mode so the codes can feed training directly.
        return out.audio_codes[0].clone()  # [B, K, T]

    def decode(self, codes: Tensor) -> Tensor:
        codes = _check_codes(self, codes, self.model)  # [B, K, T]
        with torch.inference_mode():
            out = self.model.decode(codes[None], [None], return_dict=True)
        return out.audio_values.clone()  # [B, C, T * hop]

    def latents(self, audio: Tensor) -> Tensor:
        audio = _check_audio(self, audio, self.model)  # [B, C, S]
        with torch.inference_mode():
            latents = self.model.encoder(audio)  # [B, D, T]
        return latents.clone()

    def set_codebooks(self, embed: Tensor, counts: Tensor) -> None:
        """Write k-means centroids ``[K, N, D]`` (and cluster sizes ``[K, N]``) into the quantizer."""
        books = [layer.codebook for layer in self.model.quantizer.layers]
        _write_codebooks(books, embed, counts)

    def spec(self) -> dict:
        config = json.loads(self.model.config.to_json_string(use_diff=False))
        return {"backend": self.backend, "bandwidth": self.bandwidth, "encodec_config": config}

    def save(self, directory: str | Path) -> Path:
        return _save(directory, self.spec(), self.model)


def save_encodec(model: EncodecModel, directory: str | Path) -> Path:
    """Save a transformers ``EncodecModel`` (one being trained, say) as our codec directory,
    at its largest bandwidth: what ``TransformersCodec(model).save`` writes, without
    freezing the model."""
    config = json.loads(model.config.to_json_string(use_diff=False))
    bandwidth = float(max(model.config.target_bandwidths))
    spec = {"backend": TransformersCodec.backend, "bandwidth": bandwidth, "encodec_config": config}
    return _save(directory, spec, model)


def _random_transformers(cfg: CodecConfig, seed: int) -> TransformersCodec:
    config = PRESETS[cfg.preset](cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EncodecModel(config)
    return TransformersCodec(model)


def _transformers_from_spec(spec: dict) -> TransformersCodec:
    config = EncodecConfig.from_dict(spec["encodec_config"])
    return TransformersCodec(EncodecModel(config), bandwidth=spec.get("bandwidth"))


# ---------------------------------------------------------------------------
# Backend 2: the encodec package
# ---------------------------------------------------------------------------

# Variant -> (constructor, checkpoint file name that its `repository` argument looks for).
ENCODEC_VARIANTS: dict[int, tuple[str, Callable[..., encodec.EncodecModel], str]] = {
    24_000: ("24khz", encodec.EncodecModel.encodec_model_24khz, "encodec_24khz-d7cc33bc.th"),
    48_000: ("48khz", encodec.EncodecModel.encodec_model_48khz, "encodec_48khz-7e698e3e.th"),
}

DECODE_RMS = 0.1
"""Level (RMS, about -20 dBFS) given to each decoded segment of a normalising model
(48 kHz): it encodes every 1 s segment at unit RMS and its scale is not in the codes."""


class EncodecPackageCodec(nn.Module):
    """The ``encodec`` package's 24 kHz (mono) or 48 kHz (stereo) model at one bandwidth.

    The 48 kHz model works on 1 s segments, each normalised to unit RMS. Here the
    segments do not overlap (the package overlaps them by 1 % and cross-fades), so
    the codes of consecutive segments simply concatenate: 1 s is exactly 150 frames
    and ``T = ceil(S / hop)`` still holds. What is lost: the per-segment scale is not
    part of ``[B, K, T]`` codes, so ``decode`` gives every segment the fixed level
    ``DECODE_RMS`` (the loudness contour at 1 s resolution is gone), and without the
    cross-fade a segment boundary can click.
    """

    backend = "encodec"

    def __init__(self, model: encodec.EncodecModel, bandwidth: float):
        super().__init__()
        if model.sample_rate not in ENCODEC_VARIANTS:
            raise ConfigError(f"encodec models run at 24000 or 48000 Hz, got {model.sample_rate}")
        if bandwidth not in model.target_bandwidths:
            raise ConfigError(
                f"codec.bandwidth {bandwidth} is not one of {model.target_bandwidths} kbps "
                f"for the {model.sample_rate} Hz encodec model"
            )
        model.set_target_bandwidth(bandwidth)
        # Non-overlapping segments: codes of consecutive segments concatenate (see class doc).
        model.overlap = 0.0
        self.model = model.eval().requires_grad_(False)
        self.variant = ENCODEC_VARIANTS[model.sample_rate][0]
        self.bandwidth = float(bandwidth)
        self.sample_rate = int(model.sample_rate)
        self.channels = int(model.channels)
        self.hop_length = int(math.prod(model.encoder.ratios))
        self.frame_rate = self.sample_rate / self.hop_length
        self.num_codebooks = model.quantizer.get_num_quantizers_for_bandwidth(
            model.frame_rate, bandwidth
        )
        self.cardinality = int(model.quantizer.bins)

    def train(self, mode: bool = True) -> EncodecPackageCodec:
        # The codec is frozen: a parent module's .train() must not flip it.
        return super().train(False)

    def _segment_frames(self, num_frames: int) -> int:
        segment = self.model.segment_length
        return num_frames if segment is None else segment // self.hop_length

    def encode(self, audio: Tensor) -> Tensor:
        audio = _check_audio(self, audio, self.model)  # [B, C, S]
        with torch.inference_mode():
            frames = self.model.encode(audio)  # list of ([B, K, T_seg], scale)
            codes = torch.cat([segment_codes for segment_codes, _ in frames], dim=-1)  # [B, K, T]
        return codes.clone()

    def decode(self, codes: Tensor) -> Tensor:
        codes = _check_codes(self, codes, self.model)  # [B, K, T]
        scale = None
        if self.model.normalize:
            scale = torch.full((codes.shape[0], 1), DECODE_RMS, device=codes.device)  # [B, 1]
        with torch.inference_mode():
            segments = codes.split(self._segment_frames(codes.shape[-1]), dim=-1)
            audio = self.model.decode([(segment, scale) for segment in segments])  # [B, C, T * hop]
        return audio.clone()

    def latents(self, audio: Tensor) -> Tensor:
        audio = _check_audio(self, audio, self.model)  # [B, C, S]
        segment = self.model.segment_length or audio.shape[-1]
        with torch.inference_mode():
            parts = [self._segment_latents(part) for part in audio.split(segment, dim=-1)]
            latents = torch.cat(parts, dim=-1)  # [B, D, T]
        return latents.clone()

    def _segment_latents(self, audio: Tensor) -> Tensor:
        # The same normalisation as EncodecModel._encode_frame, so latents are what it quantizes.
        if self.model.normalize:
            mono = audio.mean(dim=1, keepdim=True)  # [B, 1, S]
            rms = mono.pow(2).mean(dim=2, keepdim=True).sqrt()  # [B, 1, 1]
            audio = audio / (1e-8 + rms)
        return self.model.encoder(audio)  # [B, D, T_seg]

    def set_codebooks(self, embed: Tensor, counts: Tensor) -> None:
        """Write k-means centroids ``[K, N, D]`` (and cluster sizes ``[K, N]``) into the quantizer."""
        books = [layer._codebook for layer in self.model.quantizer.vq.layers]
        _write_codebooks(books, embed, counts)

    def spec(self) -> dict:
        return {"backend": self.backend, "variant": self.variant, "bandwidth": self.bandwidth}

    def save(self, directory: str | Path) -> Path:
        return _save(directory, self.spec(), self.model)


def _encodec_variant(sample_rate: int) -> tuple[str, Callable[..., encodec.EncodecModel], str]:
    if sample_rate not in ENCODEC_VARIANTS:
        raise ConfigError(
            f"codec.sample_rate must be 24000 or 48000 for encodec, got {sample_rate}"
        )
    return ENCODEC_VARIANTS[sample_rate]


def _encodec_model(
    constructor: Callable[..., encodec.EncodecModel], **kwargs
) -> encodec.EncodecModel:
    with warnings.catch_warnings():
        # The package uses torch's deprecated weight_norm; nothing to act on here.
        warnings.simplefilter("ignore", FutureWarning)
        return constructor(**{"pretrained": False, **kwargs})


def _random_encodec(cfg: CodecConfig, seed: int) -> EncodecPackageCodec:
    _, constructor, _ = _encodec_variant(cfg.sample_rate)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _encodec_model(constructor)
    return EncodecPackageCodec(model, cfg.bandwidth)


def _encodec_from_spec(spec: dict) -> EncodecPackageCodec:
    sample_rates = {name: rate for rate, (name, _, _) in ENCODEC_VARIANTS.items()}
    _, constructor, _ = ENCODEC_VARIANTS[sample_rates[spec["variant"]]]
    return EncodecPackageCodec(_encodec_model(constructor), float(spec["bandwidth"]))


# ---------------------------------------------------------------------------
# Building and loading
# ---------------------------------------------------------------------------

# Backend name -> random-weight builder from a config.
BACKENDS: dict[str, Callable[[CodecConfig, int], Codec]] = {
    "transformers": _random_transformers,
    "encodec": _random_encodec,
}

# Backend name in codec.json -> builder of the (random) module its weights load into.
FROM_SPEC: dict[str, Callable[[dict], Codec]] = {
    "transformers": _transformers_from_spec,
    "encodec": _encodec_from_spec,
}


def build_codec(cfg: CodecConfig, seed: int = 0) -> Codec:
    """The codec a config asks for: ``cfg.source`` loaded, or random weights from the preset.

    Random weights come from a fixed ``seed`` so that every process building the same
    config (e.g. parallel tokenizer actors) gets the same codec. Their codebooks are
    all zero until ``calibrate_codec`` fills them.
    """
    if cfg.source is not None:
        if cfg.backend == "encodec":
            codec = load_codec(cfg.source, sample_rate=cfg.sample_rate, bandwidth=cfg.bandwidth)
        else:
            codec = load_codec(cfg.source)
    else:
        codec = BACKENDS[cfg.backend](cfg, seed)
    return _with_channels(codec, cfg.channels)


def _with_channels(codec: Codec, channels: int) -> Codec:
    """The codec as ``channels`` asks: a mono one wrapped as interleaved stereo for 2."""
    from music_gen.models.stereo import StereoCodec

    if channels == 1 or isinstance(codec, StereoCodec):
        return codec
    if codec.channels != 1:
        raise ConfigError(
            f"codec.channels=2 interleaves a mono codec; this codec already has "
            f"{codec.channels} channels (leave codec.channels at 1)"
        )
    return StereoCodec(codec)


def load_codec(
    src: str | Path, *, sample_rate: int | None = None, bandwidth: float | None = None
) -> Codec:
    """Load a codec from our directory (``codec.json``), a transformers Encodec directory
    (``save_pretrained`` layout), an encodec-package checkpoint directory (holding
    ``encodec_24khz-d7cc33bc.th`` / ``encodec_48khz-7e698e3e.th``) or a hub id.

    ``sample_rate`` picks the variant in an encodec-package directory holding both, and
    ``bandwidth`` the bandwidth for it (default 6 kbps) or for a transformers directory
    (default its largest); our own directories record both.
    """
    path = Path(src).expanduser()
    if path.is_dir():
        if (path / CODEC_JSON).is_file():
            return _load_our_dir(path)
        if (path / "config.json").is_file():
            return _load_transformers_dir(path, bandwidth)
        if any((path / name).is_file() for _, _, name in ENCODEC_VARIANTS.values()):
            return _load_encodec_dir(path, sample_rate, bandwidth)
        raise CheckpointError(
            f"{path}: not a codec directory (no {CODEC_JSON}, transformers config.json or encodec checkpoint)"
        )
    if path.exists():
        raise CheckpointError(f"{path}: a codec source must be a directory or a hub id, not a file")
    if looks_like_hub_id(str(src)):
        return _load_transformers_hub(str(src), bandwidth)
    raise CheckpointError(f"codec directory not found: {path}")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not readable JSON") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _read_weights(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError):
        raise CheckpointError(f"{path}: corrupt or truncated safetensors weights") from None


def _load_our_dir(path: Path) -> Codec:
    spec = _read_json(path / CODEC_JSON)
    backend = spec.get("backend")
    if backend not in FROM_SPEC:
        raise CheckpointError(
            f"{path / CODEC_JSON}: unknown codec backend {backend!r} (expected one of {sorted(FROM_SPEC)})"
        )
    weights = _read_weights(path / WEIGHTS)
    try:
        codec = FROM_SPEC[backend](spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path / CODEC_JSON}: inconsistent codec description ({exc})"
        ) from None
    try:
        codec.model.load_state_dict(weights)
    except RuntimeError:
        raise CheckpointError(
            f"{path / WEIGHTS}: weights do not match {path / CODEC_JSON}"
        ) from None
    from music_gen.models.stereo import INTERLEAVED_KEY

    return _with_channels(codec, int(spec.get(INTERLEAVED_KEY, 1)))


# Errors transformers' from_pretrained raises for a checkpoint it cannot use.
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, SafetensorError)


def _load_transformers_dir(path: Path, bandwidth: float | None) -> TransformersCodec:
    model_type = _read_json(path / "config.json").get("model_type")
    if model_type != "encodec":
        raise CheckpointError(
            f"{path}: config.json describes a {model_type!r} model, not an Encodec codec"
        )
    try:
        model = EncodecModel.from_pretrained(str(path))
    except _LOAD_ERRORS:
        raise CheckpointError(f"{path}: could not load the transformers Encodec weights") from None
    return TransformersCodec(model, bandwidth)


def _load_transformers_hub(hub_id: str, bandwidth: float | None) -> TransformersCodec:
    try:
        model = EncodecModel.from_pretrained(hub_id)
    except _LOAD_ERRORS:
        raise CheckpointError(
            f"codec '{hub_id}' is not a local directory and could not be loaded from the "
            "Hugging Face hub (offline, or no such Encodec model)"
        ) from None
    return TransformersCodec(model, bandwidth)


def _load_encodec_dir(
    path: Path, sample_rate: int | None, bandwidth: float | None
) -> EncodecPackageCodec:
    present = [rate for rate, (_, _, name) in ENCODEC_VARIANTS.items() if (path / name).is_file()]
    if sample_rate is not None and sample_rate not in present:
        raise CheckpointError(f"{path}: no encodec checkpoint for {sample_rate} Hz")
    rate = present[0] if sample_rate is None else sample_rate
    _, constructor, name = ENCODEC_VARIANTS[rate]
    try:
        # The package checks the file's sha256 against its name, then torch.load()s it;
        # torch >= 2.6 defaults to weights_only=True, so no pickled code is run.
        model = _encodec_model(constructor, pretrained=True, repository=path)
    except (OSError, EOFError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError):
        raise CheckpointError(
            f"{path / name}: corrupt encodec checkpoint (checksum or weights mismatch)"
        ) from None
    return EncodecPackageCodec(model, 6.0 if bandwidth is None else bandwidth)
