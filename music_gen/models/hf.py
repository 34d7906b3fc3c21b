"""Import a transformers MusicGen checkpoint (``MusicgenForConditionalGeneration``).

Accepts a directory in the ``save_pretrained`` layout or a hub id (where the
network allows). The decoder's weights are mapped onto ``LM`` (per-codebook
embeddings and heads stacked, q/k/v fused); the T5 encoder, the projection and
the EnCodec model are taken over as they are. With greedy decoding our codes
then equal transformers' ``generate(do_sample=False)``, with and without guidance.
"""

from __future__ import annotations

from pathlib import Path

import torch

from music_gen.errors import CheckpointError
from music_gen.models.conditioning import Conditioner
from music_gen.models.lm import LM, LMConfig

# MusicGen was trained on 30 s excerpts: the context it can use, in seconds.
MUSICGEN_CONTEXT_SECONDS = 30.0


def load_transformers_musicgen(src: str | Path):
    """``(lm, conditioner, codec, max_frames)`` from a transformers MusicGen dir or hub id."""
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    from music_gen.models.codec import TransformersCodec

    try:
        hf = MusicgenForConditionalGeneration.from_pretrained(str(src))
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise CheckpointError(f"cannot load MusicGen checkpoint '{src}': {reason}") from None
    decoder_cfg = hf.config.decoder
    if decoder_cfg.audio_channels != 1:
        raise CheckpointError(f"'{src}': stereo MusicGen checkpoints are not supported yet")
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
    )
    if project:
        conditioner.proj.load_state_dict(hf.enc_to_dec_proj.state_dict())
    codec = TransformersCodec(
        hf.audio_encoder, bandwidth=_bandwidth_for(hf, decoder_cfg.num_codebooks)
    )
    max_frames = min(
        round(MUSICGEN_CONTEXT_SECONDS * codec.frame_rate),
        decoder_cfg.max_position_embeddings - lm_cfg.num_codebooks,
    )
    return lm, conditioner, codec, max_frames


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
        out[f"{dst}cross_attn.q.weight"] = w("encoder_attn.q_proj")
        out[f"{dst}cross_attn.kv.weight"] = torch.cat(
            [w("encoder_attn.k_proj"), w("encoder_attn.v_proj")]
        )
        out[f"{dst}cross_attn.out.weight"] = w("encoder_attn.out_proj")
        out[f"{dst}fc1.weight"] = w("fc1")
        out[f"{dst}fc2.weight"] = w("fc2")
        for ours, theirs in norms.items():
            out[f"{dst}{ours}.weight"] = hf_state[f"{src}{theirs}.weight"]
            out[f"{dst}{ours}.bias"] = hf_state[f"{src}{theirs}.bias"]
    return out
