"""The slot engine computes what ``generate_codes`` computes, one request at a time or
many in flight, and hands each request back at its own length."""

import pytest
import torch

from music_gen.errors import UsageError
from music_gen.models.engine import Engine, Request
from tests.helpers import tiny_musicgen

pytestmark = pytest.mark.unit

PROMPTS = ["jazz", "a slow sad rock ballad", "drums"]


@pytest.fixture(scope="module")
def model():
    return tiny_musicgen(seed=3)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_greedy_codes_equal_generate_codes(model, guidance):
    frames = [20, 12, 30]
    requests = [
        Request(p, frames=f, top_k=1, guidance_scale=guidance)
        for p, f in zip(PROMPTS, frames, strict=True)
    ]
    codes = Engine(model, slots=4).run(requests)
    for prompt, length, got in zip(PROMPTS, frames, codes, strict=True):
        want = model.generate_codes(
            [prompt], duration=length / model.frame_rate, top_k=1, guidance_scale=guidance
        )[0]
        assert got.shape == want.shape and torch.equal(got, want), prompt


def test_a_seeded_request_draws_the_same_codes_alone_or_among_others(model):
    alone = model.generate_codes(["jazz"], duration=16 / model.frame_rate, seed=[7], top_k=20)[0]
    engine = Engine(model, slots=3)
    others = [
        Request("rock", frames=30, seed=1, top_k=5, temperature=0.7),
        Request("drums", frames=8, top_p=0.9, top_k=0),
    ]
    target = Request("jazz", frames=16, seed=7, top_k=20)
    codes = engine.run([others[0], target, others[1]])
    assert torch.equal(codes[1], alone)


def test_requests_join_while_others_decode_and_leave_at_their_own_length(model):
    engine = Engine(model, slots=2)
    engine.submit(Request("long", frames=40, top_k=1, tag="long"))
    finished, steps = [], 0
    while engine.busy:
        if steps == 5:  # arrives while "long" is decoding, takes the free slot
            engine.submit(Request("short", frames=6, top_k=1, tag="short"))
            engine.submit(Request("queued", frames=6, top_k=1, tag="queued"))
        for done in engine.step():
            finished.append((done.request.tag, steps, done.codes.shape[-1]))
        steps += 1
    order = [tag for tag, _, _ in finished]
    assert order == ["short", "queued", "long"]  # nobody waited for the long one
    lengths = {tag: frames for tag, _, frames in finished}
    assert lengths == {"short": 6, "queued": 6, "long": 40}
    k = model.num_codebooks
    assert dict((t, s) for t, s, _ in finished)["short"] == 5 + 6 + k - 2


def test_a_reused_slot_carries_nothing_of_its_previous_request(model):
    engine = Engine(model, slots=1)
    engine.run([Request("a very long prompt about strings and brass", frames=25, top_k=1)])
    reused = engine.run([Request("drums", frames=10, top_k=1)])[0]
    fresh = Engine(model, slots=1).run([Request("drums", frames=10, top_k=1)])[0]
    assert torch.equal(reused, fresh)


def test_bad_requests(model):
    engine = Engine(model, slots=1)
    with pytest.raises(UsageError, match="frames"):
        engine.submit(Request("x", frames=model.max_frames + 1))
    engine.submit(Request("x", frames=4, temperature=float("nan")))
    with pytest.raises(UsageError, match="temperature"):
        engine.step()


def test_stereo_models_keep_their_interleaved_pattern():
    from music_gen.config import CodecConfig
    from music_gen.models.codec import build_codec
    from music_gen.models.generator import MusicGen
    from tests.helpers import tiny_model_config

    torch.manual_seed(0)
    codec = build_codec(CodecConfig(num_codebooks=4, cardinality=64, channels=2))
    stereo = MusicGen.from_config(tiny_model_config(num_codebooks=None), codec)
    assert stereo.lm.cfg.audio_channels == 2
    got = Engine(stereo, slots=2).run([Request("jazz", frames=9, top_k=1)])[0]
    want = stereo.generate_codes(["jazz"], duration=9 / stereo.frame_rate, top_k=1)[0]
    assert torch.equal(got, want)


def test_a_step_reads_nothing_back_from_the_device(model, monkeypatch):
    # The engine passes the host's copy of each slot's settings: the sampler never asks
    # the device (on a GPU each such read would be a synchronisation per step).
    import music_gen.models.sampling as sampling

    real = sampling.sample
    hinted = []

    def spy(*args, **kwargs):
        hinted.append(kwargs.get("host") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "sample", spy)
    requests = [Request("jazz", frames=6, top_k=5, seed=1), Request("rock", frames=4, top_p=0.9)]
    Engine(model, slots=2).run(requests)
    assert hinted and all(hinted)


def test_graphs_need_a_cuda_device(model):
    with pytest.raises(UsageError, match="CUDA graphs need a CUDA device"):
        Engine(model, slots=1, graphs=True)


@pytest.mark.gpu
def test_cuda_graph_steps_equal_eager_steps_without_syncs(model):
    cuda = model.to("cuda")
    try:
        frames = [20, 12, 30]
        requests = [
            Request(p, frames=f, top_k=k, seed=s)
            for p, f, k, s in zip(PROMPTS, frames, [1, 50, 250], [None, 4, 5], strict=True)
        ]
        eager = Engine(cuda, slots=3).run(requests)
        engine = Engine(cuda, slots=3, graphs=True)
        for request in requests:
            engine.submit(request)
        engine.step()  # admits all three (copies from the host) and captures the graph
        engine.step()  # the live rows are copied to the device once
        found = {}
        # Until a slot finishes nothing changes on the host side: no step may wait for
        # the device (a read back would raise in this mode).
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(min(frames) - 2):
                assert engine.step() == []
        finally:
            torch.cuda.set_sync_debug_mode("default")
        while engine.busy:
            for done in engine.step():
                found[done.request.prompt] = done.codes
        for request, want in zip(requests, eager, strict=True):
            assert torch.equal(found[request.prompt].cpu(), want.cpu()), request.prompt
    finally:
        model.to("cpu")
