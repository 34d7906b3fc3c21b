"""Codec training in plain PyTorch (no Ray): architecture checks, the quantized
autoencoder's training forward, losses, and the saved directory."""

import pytest
import torch

from music_gen.cli import main
from music_gen.config import load_config
from music_gen.errors import CheckpointError, ConfigError
from music_gen.models import codec_training as ct
from music_gen.models.codebooks import calibrate_codec
from music_gen.models.codec import TransformersCodec, load_codec, save_encodec
from music_gen.pipelines.codec.worker import build_network
from music_gen.testing import sine

TINY = ["codec.num_codebooks=2", "codec.cardinality=16", "codec.train.num_filters=4",
        "codec.train.latent_dim=8"]  # fmt: skip


def tiny_network(seed: int = 0):
    return build_network(load_config(overrides=[*TINY, f"codec.train.seed={seed}"]))


def clips() -> torch.Tensor:
    tones = [sine(f, 0.25, 16_000) for f in (220.0, 330.0, 495.0, 660.0)]
    return torch.stack(tones)  # [4, 1, 4000]


def test_hop_must_divide_the_rate():
    with pytest.raises(ConfigError, match="does not divide the sample rate"):
        build_network(load_config(overrides=["codec.train.ratios=[7,5,4,2]"]))


@pytest.mark.parametrize("value", ["0", "48"])
def test_cardinality_must_be_a_power_of_two(value):
    with pytest.raises(ConfigError, match="cardinality"):
        build_network(load_config(overrides=[f"codec.cardinality={value}"]))


def test_training_forward_lowers_the_loss_and_moves_codebooks():
    torch.manual_seed(0)
    model = tiny_network()
    audio = clips()
    calibrate_codec(TransformersCodec(model), [audio], iters=5)
    model.train().requires_grad_(True)
    module = ct.QuantizedAutoencoder(model, ema_decay=0.9)
    before = model.quantizer.layers[0].codebook.embed.clone()
    mel = ct.MelLoss(16_000)
    optimizer = torch.optim.Adam(module.parameters(), 3e-3)
    losses = []
    for _ in range(25):
        output, commitment, codes = module(audio)
        parts = ct.reconstruction_losses(output, audio, mel)
        loss = parts["l1"] + parts["mel"] + commitment
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert output.shape[:2] == audio.shape[:2] and output.shape[-1] >= audio.shape[-1]
    assert codes.shape == (4, 2, 13) and int(codes.min()) >= 0 and int(codes.max()) < 16
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert not torch.equal(model.quantizer.layers[0].codebook.embed, before)  # EMA moved it
    # What the codec encodes is what the training forward quantized (eval: no EMA step).
    module.eval()
    _, _, eval_codes = module(audio)
    assert torch.equal(TransformersCodec(model).encode(audio), eval_codes)


def test_waveform_loss_is_relative_per_clip():
    audio = clips()
    audio[0] *= 0.01  # a quiet clip counts as much as a loud one
    mel = ct.MelLoss(16_000)
    assert float(ct.reconstruction_losses(audio, audio, mel)["waveform"]) == 0.0
    assert float(ct.reconstruction_losses(0 * audio, audio, mel)["waveform"]) == pytest.approx(1.0)
    half = ct.reconstruction_losses(0.5 * audio, audio, mel)["waveform"]
    assert float(half) == pytest.approx(0.25, rel=1e-4)
    only_quiet = audio.clone()
    only_quiet[0] = 0  # the quiet clip alone wrong: a quarter of the loss, not ~0
    assert float(ct.reconstruction_losses(only_quiet, audio, mel)["waveform"]) == pytest.approx(
        0.25, rel=1e-4
    )


def test_unquantized_forward_decodes_the_latents_and_learns_the_waveform():
    torch.manual_seed(0)
    model = tiny_network()
    module = ct.QuantizedAutoencoder(model)
    audio = clips()
    output, commitment, codes = module(audio, quantize=False)
    assert codes is None and float(commitment) == 0.0
    assert torch.equal(output, model.decoder(model.encoder(audio)))
    optimizer = torch.optim.Adam(module.parameters(), 3e-3)
    before = float(ct.si_snr(output, audio).mean())
    for _ in range(100):
        output, _, _ = module(audio, quantize=False)
        loss = ct.reconstruction_losses(output, audio, ct.MelLoss(16_000))["waveform"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = float(ct.si_snr(module(audio, quantize=False)[0], audio).mean())
    assert after > before + 20 and after > 5, (before, after)


def test_zero_padding_is_saved_with_the_codec(tmp_path):
    model = build_network(load_config(overrides=[*TINY, "codec.train.pad_mode=constant"]))
    calibrate_codec(TransformersCodec(model), [clips()], iters=3)
    save_encodec(model, tmp_path / "codec")
    reloaded = load_codec(tmp_path / "codec")
    assert reloaded.model.config.pad_mode == "constant"  # decoding pads as training did
    assert torch.equal(reloaded.encode(clips()), TransformersCodec(model).encode(clips()))
    reflecting = tiny_network()
    reflecting.load_state_dict(model.state_dict())  # same weights, other padding
    codes = reloaded.encode(clips())
    assert not torch.equal(TransformersCodec(reflecting).decode(codes), reloaded.decode(codes))


def test_si_snr():
    audio = clips()
    assert float(ct.si_snr(audio, audio).min()) > 60
    assert float(ct.si_snr(0.3 * audio, audio).min()) > 60  # scale-invariant
    noise = torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))
    assert abs(float(ct.si_snr(noise, audio).mean())) > 20  # ~ -30 dB: unrelated


def test_saved_directory_round_trips_and_damage_is_refused(tmp_path):
    model = tiny_network()
    calibrate_codec(TransformersCodec(model), [clips()], iters=3)
    model.train().requires_grad_(True)  # as during training: saving must not need a frozen copy
    save_encodec(model, tmp_path / "codec")
    codec = load_codec(tmp_path / "codec")
    assert (codec.num_codebooks, codec.cardinality, codec.frame_rate) == (2, 16, 50.0)
    assert torch.equal(codec.encode(clips()), TransformersCodec(model).encode(clips()))
    weights = tmp_path / "codec" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_codec(tmp_path / "codec")


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "no audio files found"),
        (["codec.train.ratios=[8,5,4,3]"], "does not divide the sample rate"),
        (["codec.cardinality=0"], "codec.cardinality"),
        (
            ["codec.train.adversarial=true", "codec.train.segment_seconds=0.1"],
            "adversarial needs segments of at least 2048 samples",
        ),
        (
            ["codec.train.steps=100", "codec.train.unquantized_steps=100"],
            "codec.train.unquantized_steps (100) must be below codec.train.steps (100)",
        ),
        (["codec.train.lstm_layers=0"], "codec.train.lstm_layers"),
    ],
)
def test_codec_train_bad_input_is_one_line(tmp_path, capsys, extra, message):
    (tmp_path / "empty").mkdir()
    argv = ["codec", "train", "--data", str(tmp_path / "empty"), "-o", str(tmp_path / "out")]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_codec_evaluate_json_and_mlflow(tmp_path, capsys, monkeypatch):
    import json

    from music_gen.pipelines.synth import write_synth_dataset
    from music_gen.platform import tracking

    monkeypatch.setenv("MUSIC_GEN_WORK_DIR", str(tmp_path / "work"))
    model = tiny_network()
    calibrate_codec(TransformersCodec(model), [clips()], iters=3)
    save_encodec(model, tmp_path / "codec")
    write_synth_dataset(tmp_path / "audio", 2, 1.0)
    out = tmp_path / "eval.json"
    argv = ["codec", "evaluate", "-c", str(tmp_path / "codec"), "-d", str(tmp_path / "audio")]
    assert main([*argv, "-o", str(out), "--segment-seconds", "0.5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert (printed["files"], printed["segments"], printed["codes_per_s"]) == (2, 4, 100.0)
    assert printed["bitrate_kbps"] == pytest.approx(0.4)  # 2 x log2(16) bits x 50 Hz
    assert printed["si_snr_db"] < 5 and printed["mel_distance"] > 0  # an untrained decoder
    run = tracking.client().get_run(printed["mlflow_run_id"])
    assert run.data.metrics["si_snr_db"] == pytest.approx(printed["si_snr_db"])
