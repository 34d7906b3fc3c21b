"""Import a transformers MusicGen checkpoint (``MusicgenForConditionalGeneration``,
stereo ones too, and ``MusicgenMelodyForConditionalGeneration``).

Accepts a directory in the ``save_pretrained`` layout or a hub id (where the
network allows). The decoder's weights are mapped onto ``LM`` (per-codebook
embeddings and heads stacked, q/k/v fused); the T5 encoder, the projection and
the EnCodec model are taken over as they are. With greedy decoding our codes
then equal transformers' ``generate(do_sample=False)``, with and without guidance.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError

from music_gen.errors import CheckpointError
from music_gen.models import formats
from music_gen.models.conditioning import Conditioner
from music_gen.models.lm import LM, LMConfig
from music_gen.models.melody import ChromaSettings

# MusicGen was trained on 30 s excerpts: the context it can use, in seconds.
MUSICGEN_CONTEXT_SECONDS = 30.0


def load_transformers_musicgen(src: str | Path):
    """``(lm, conditioner, codec, max_frames)`` from a transformers MusicGen (or
    MusicGen-Melody) dir or hub id."""
    from transformers import (
        AutoTokenizer,
        MusicgenForConditionalGeneration,
        MusicgenMelodyForConditionalGeneration,
    )

    from music_gen.models.codec import TransformersCodec
    from music_gen.models.stereo import StereoCodec

    melody = _model_type(src) == MELODY_MODEL_TYPE
    model_class = (
        MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
    )
    try:
        hf, info = model_class.from_pretrained(str(src), output_loading_info=True)
    except _LOAD_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise CheckpointError(f"cannot load MusicGen checkpoint '{src}': {reason}") from None
    _check_loading_info(src, info)
    decoder_cfg = hf.config.decoder
    channels = int(decoder_cfg.audio_channels)
    if channels not in (1, 2) or decoder_cfg.num_codebooks % channels:
        raise CheckpointError(
            f"'{src}': {decoder_cfg.num_codebooks} codebooks in {channels} audio channels"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src))
    except (OSError, ValueError, TypeError):
        raise CheckpointError(
            f"'{src}' has no tokenizer files: save the MusicGen processor or tokenizer into it "
            "(processor.save_pretrained(dir))"
        ) from None

    lm_cfg = LMConfig(
        dim=decoder_cfg.hidden_size,
        num_layers=decoder_cfg.num_hidden_layers,
        num_heads=decoder_cfg.num_attention_heads,
        ffn_dim=decoder_cfg.ffn_dim,
        num_codebooks=decoder_cfg.num_codebooks,
        cardinality=decoder_cfg.vocab_size,
        max_positions=decoder_cfg.max_position_embeddings,
        audio_channels=channels,
        cross_attention=not melody,  # MusicGen-Melody prepends the condition instead
    )
    lm = LM(lm_cfg)
    lm.load_state_dict(decoder_weights(hf.decoder.state_dict(), lm_cfg))

    project = hasattr(hf, "enc_to_dec_proj")
    conditioner = Conditioner(
        hf.text_encoder,
        tokenizer,
        lm_cfg.dim,
        max_length=tokenizer.model_max_length or 512,
        project=project,
        melody=_chroma_settings(src, hf.config).to_dict() if melody else None,
    )
    if project:
        conditioner.proj.load_state_dict(hf.enc_to_dec_proj.state_dict())
    if melody and hasattr(hf, "audio_enc_to_dec_proj"):
        assert conditioner.melody_proj is not None
        conditioner.melody_proj.load_state_dict(hf.audio_enc_to_dec_proj.state_dict())
    # Stereo checkpoints: a mono EnCodec runs on each channel (codes interleaved).
    codec = TransformersCodec(
        hf.audio_encoder, bandwidth=_bandwidth_for(hf, decoder_cfg.num_codebooks // channels)
    )
    if channels == 2:
        codec = StereoCodec(codec)
    max_frames = min(
        round(MUSICGEN_CONTEXT_SECONDS * codec.frame_rate),
        decoder_cfg.max_position_embeddings - lm_cfg.num_codebooks,
    )
    return lm, conditioner, codec, max_frames


MELODY_MODEL_TYPE = formats.MELODY_MODEL_TYPE


def _model_type(src: str | Path) -> str | None:
    """``model_type`` of the checkpoint's config (a local dir's file, else the hub's)."""
    from music_gen.models.formats import TRANSFORMERS_CONFIG, read_json

    path = Path(str(src)).expanduser() / TRANSFORMERS_CONFIG
    if path.is_file():
        try:
            return read_json(path).get("model_type")
        except CheckpointError:
            return None  # the model load that follows reports it, as for any bad config
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(src)).model_type
    except _LOAD_ERRORS:
        return None  # the model load that follows reports it


def _chroma_settings(src: str | Path, config) -> ChromaSettings:
    """The checkpoint's chroma features: its feature extractor's STFT (defaults when it
    saved none, which are MusicGen-Melody's) and the config's chroma length."""
    from transformers import MusicgenMelodyFeatureExtractor

    try:
        extractor = MusicgenMelodyFeatureExtractor.from_pretrained(str(src))
    except (OSError, ValueError, TypeError):
        extractor = MusicgenMelodyFeatureExtractor()
    return ChromaSettings(
        sample_rate=int(extractor.sampling_rate),
        n_fft=int(extractor.n_fft),
        hop_length=int(extractor.hop_length),
        num_chroma=int(config.num_chroma),
        chroma_length=int(config.chroma_length),
    )


# What transformers raises for a checkpoint it cannot read (junk JSON, truncated or
# foreign safetensors, a config that does not build).
_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError)


def _check_loading_info(src, info: dict) -> None:
    """Refuse a partial load: transformers only warns about missing or unexpected weights."""
    problems = {
        "missing": info.get("missing_keys") or [],
        "unexpected": info.get("unexpected_keys") or [],
        "of the wrong shape": [
            m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys") or []
        ],
    }
    found = [
        f"{what} {', '.join(sorted(map(str, keys))[:3])}" for what, keys in problems.items() if keys
    ]
    if found:
        raise CheckpointError(f"'{src}': weights do not match its config ({'; '.join(found)})")


def _bandwidth_for(hf, num_codebooks: int) -> float:
    """The codec bandwidth at which it produces the decoder's number of codebooks."""
    quantizer = hf.audio_encoder.quantizer
    for bandwidth in hf.config.audio_encoder.target_bandwidths:
        if quantizer.get_num_quantizers_for_bandwidth(bandwidth) == num_codebooks:
            return bandwidth
    raise CheckpointError(
        f"the checkpoint's codec has no bandwidth giving the decoder's {num_codebooks} codebooks"
    )


def decoder_weights(hf_state: dict[str, torch.Tensor], cfg: LMConfig) -> dict[str, torch.Tensor]:
    """Rename and stack ``MusicgenForCausalLM`` weights into ``LM``'s state dict."""
    prefix = "model.decoder."
    K = cfg.num_codebooks
    out = {
        "embed.weight": torch.cat([hf_state[f"{prefix}embed_tokens.{k}.weight"] for k in range(K)]),
        "head.weight": torch.cat([hf_state[f"lm_heads.{k}.weight"] for k in range(K)]),
        "norm.weight": hf_state[f"{prefix}layer_norm.weight"],
        "norm.bias": hf_state[f"{prefix}layer_norm.bias"],
    }
    norms = {
        "norm_self": "self_attn_layer_norm",
        "norm_cross": "encoder_attn_layer_norm",
        "norm_ffn": "final_layer_norm",
    }
    for i in range(cfg.num_layers):
        src, dst = f"{prefix}layers.{i}.", f"blocks.{i}."

        def w(name: str, src=src) -> torch.Tensor:
            return hf_state[f"{src}{name}.weight"]

        out[f"{dst}self_attn.qkv.weight"] = torch.cat(
            [w("self_attn.q_proj"), w("self_attn.k_proj"), w("self_attn.v_proj")]
        )
        out[f"{dst}self_attn.out.weight"] = w("self_attn.out_proj")
        if cfg.cross_attention:
            out[f"{dst}cross_attn.q.weight"] = w("encoder_attn.q_proj")
            out[f"{dst}cross_attn.kv.weight"] = torch.cat(
                [w("encoder_attn.k_proj"), w("encoder_attn.v_proj")]
            )
            out[f"{dst}cross_attn.out.weight"] = w("encoder_attn.out_proj")
        out[f"{dst}fc1.weight"] = w("fc1")
        out[f"{dst}fc2.weight"] = w("fc2")
        for ours, theirs in norms.items():
            if ours == "norm_cross" and not cfg.cross_attention:
                continue
            out[f"{dst}{ours}.weight"] = hf_state[f"{src}{theirs}.weight"]
            out[f"{dst}{ours}.bias"] = hf_state[f"{src}{theirs}.bias"]
    return out
