"""The multi-scale STFT discriminator, its losses, one adversarial step of codec training
and the discriminator's part of a checkpoint (plain PyTorch, no Ray)."""

import pytest
import torch

from music_gen.config import load_config
from music_gen.errors import CheckpointError
from music_gen.models import codec_training as ct
from music_gen.models import discriminator as disc
from music_gen.models.codebooks import calibrate_codec
from music_gen.models.codec import TransformersCodec, load_codec
from music_gen.pipelines.codec import worker
from music_gen.testing import sine

TINY = ["codec.num_codebooks=2", "codec.cardinality=16", "codec.train.num_filters=4",
        "codec.train.latent_dim=8", "codec.train.adversarial=true",
        "codec.train.discriminator_filters=4"]  # fmt: skip


def clips(sample_rate: int = 16_000) -> torch.Tensor:
    tones = [sine(f, 0.25, sample_rate) for f in (220.0, 330.0, 495.0)]
    return torch.stack(tones)  # [3, 1, S]


@pytest.mark.parametrize("sample_rate, channels", [(16_000, 1), (32_000, 2)])
def test_logits_and_feature_maps_per_scale(sample_rate, channels):
    audio = clips(sample_rate).repeat(1, channels, 1)  # [3, C, S]
    logits, features = disc.build_discriminator(channels, 8, seed=0)(audio)
    assert len(logits) == len(features) == len(disc.STFT_SCALES)
    samples = audio.shape[-1]
    for (n_fft, hop), scale_logits, maps in zip(disc.STFT_SCALES, logits, features, strict=True):
        frames = (samples - n_fft) // hop + 1  # the STFT is not centred
        bins = n_fft // 2 + 1
        for _ in disc.DILATIONS:
            bins = (bins + 1) // 2  # each dilated conv halves the frequency axis
        assert scale_logits.shape == (3, 1, frames, bins)
        assert len(maps) == len(disc.DILATIONS) + 2
        assert maps[0].shape == (3, 8, frames, n_fft // 2 + 1)
        assert maps[-1].shape == (3, 8, frames, bins)


@torch.no_grad()
def test_losses_signs_and_zeros():
    audio = clips()
    discriminator = disc.build_discriminator(1, 4, seed=0)
    logits, features = discriminator(audio)
    assert float(disc.feature_matching_loss(features, features)) == 0.0
    # The same audio on both sides: no separation, so the hinge is at least 2.
    assert float(disc.discriminator_loss(logits, logits)) >= 2.0 - 1e-6
    assert float(disc.generator_adversarial_loss(logits)) >= 0.0
    noisy_logits, noisy_features = discriminator(audio + 0.1 * torch.randn_like(audio))
    assert float(disc.feature_matching_loss(features, noisy_features)) > 0.0
    # By the margin: a confident, right discriminator and a fooled one give zero.
    sure, unsure = [torch.full((2, 1, 3, 4), 2.0)], [torch.full((2, 1, 3, 4), -2.0)]
    assert float(disc.discriminator_loss(sure, unsure)) == 0.0
    assert float(disc.generator_adversarial_loss(sure)) == 0.0
    assert float(disc.generator_adversarial_loss(unsure)) == pytest.approx(3.0)


def tiny_codec_and_adversary():
    cfg = load_config(overrides=TINY)
    model = worker.build_network(cfg)
    calibrate_codec(TransformersCodec(model), [clips()], iters=3)
    model.train().requires_grad_(True)
    discriminator, d_optimizer = worker.build_adversary(cfg)
    return model, discriminator, d_optimizer


def test_one_generator_and_discriminator_step_moves_both():
    torch.manual_seed(0)
    model, discriminator, d_optimizer = tiny_codec_and_adversary()
    module = ct.QuantizedAutoencoder(model)
    optimizer = torch.optim.Adam(module.parameters(), 1e-3)
    codec_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    d_before = {k: v.clone() for k, v in discriminator.state_dict().items()}
    audio = clips()
    output, commitment, _ = module(audio)
    output = output[..., : audio.shape[-1]]
    d_loss = disc.discriminator_step(discriminator, d_optimizer, audio, output, grad_clip=1.0)
    d_moved = {k: v.clone() for k, v in discriminator.state_dict().items()}
    d_grads = [p.grad.clone() for p in discriminator.parameters()]
    losses = disc.generator_losses(discriminator, audio, output)
    g_adv, feature = float(losses["g_adv"].detach()), float(losses["feature"].detach())
    assert float(d_loss) > 0 and g_adv >= 0 and feature > 0
    loss = ct.reconstruction_losses(output, audio, ct.MelLoss(16_000))["mel"] + commitment
    optimizer.zero_grad()
    (loss + losses["g_adv"] + losses["feature"]).backward()
    # The generator's losses reach the codec only: the discriminator's gradients stay.
    for grad, p in zip(d_grads, discriminator.parameters(), strict=True):
        assert torch.equal(p.grad, grad)
    assert all(p.requires_grad for p in discriminator.parameters())
    optimizer.step()
    assert any(not torch.equal(v, model.decoder.state_dict()[k]) for k, v in codec_before.items())
    assert any(not torch.equal(v, d_moved[k]) for k, v in d_before.items())
    assert all(torch.equal(v, discriminator.state_dict()[k]) for k, v in d_moved.items())


def test_checkpoint_round_trips_the_discriminator_and_leaves_the_codec_alone(tmp_path):
    model, discriminator, d_optimizer = tiny_codec_and_adversary()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    audio = clips()
    fake = audio + 0.05 * torch.randn_like(audio)
    disc.discriminator_step(discriminator, d_optimizer, audio, fake)  # some optimizer state
    worker.save_checkpoint(tmp_path, model, optimizer, {"step": 1}, discriminator, d_optimizer)

    _, fresh, fresh_optimizer = tiny_codec_and_adversary()
    fresh_optimizer.param_groups[0]["lr"] = 1.0  # the saved one must come back
    assert worker.load_discriminator(tmp_path, fresh, fresh_optimizer)
    for name, value in discriminator.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    saved, loaded = d_optimizer.state_dict(), fresh_optimizer.state_dict()
    assert loaded["param_groups"][0]["lr"] == saved["param_groups"][0]["lr"]
    for index, state in saved["state"].items():
        assert torch.equal(loaded["state"][index]["exp_avg"], state["exp_avg"])
    # The codec directory is the codec's alone: the discriminator is training-only.
    codec = load_codec(tmp_path)
    assert torch.equal(codec.encode(audio), TransformersCodec(model).encode(audio))
    # A checkpoint of a run without one: a fresh discriminator; a damaged one: refused.
    (tmp_path / worker.TRAIN_STATE / worker.DISCRIMINATOR_FILE).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot resume the discriminator"):
        worker.load_discriminator(tmp_path, fresh, fresh_optimizer)
    (tmp_path / worker.TRAIN_STATE / worker.DISCRIMINATOR_FILE).unlink()
    assert not worker.load_discriminator(tmp_path, fresh, fresh_optimizer)
