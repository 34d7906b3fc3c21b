"""`evaluate --samples` and `music-gen compare` on tiny models and a tiny synth dataset
written here (no Ray: evaluation reads shards with pyarrow)."""

import json
from html.parser import HTMLParser

import pytest
import torch

from music_gen import MusicGen
from music_gen.cli import main
from music_gen.errors import UsageError
from music_gen.models.codebooks import tiny_calibrated_codec
from music_gen.pipelines import compare as cmp
from music_gen.pipelines import evaluate as ev
from music_gen.testing import make_synth_dataset, tiny_model_config

pytestmark = pytest.mark.unit

SETTINGS = dict(per_class=1, duration=0.4, fad_clips=4, batch_size=6)


@pytest.fixture(scope="module")
def codec():
    return tiny_calibrated_codec(num_codebooks=4, cardinality=64)


@pytest.fixture(scope="module")
def data_dir(codec, tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return make_synth_dataset(root, codec, num_clips=12, seconds=1.0, save_codec=False)


def tiny(codec, seed: int, **overrides) -> MusicGen:
    torch.manual_seed(seed)
    return MusicGen.from_config(tiny_model_config(**overrides), codec)


@pytest.fixture(scope="module")
def model_dirs(codec, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return [str(tiny(codec, seed).save_pretrained(root / f"m{seed}")) for seed in (1, 2)]


class Page(HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.tags, self.best, self._in_best = [], [], False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        self._in_best = tag == "td" and "best" in (attrs.get("class") or "").split()

    def handle_data(self, data):
        if self._in_best and data.strip():
            self.best.append(data.strip())
            self._in_best = False


def test_evaluate_samples_are_saved_and_listed(codec, data_dir, tmp_path):
    model = tiny(codec, 0)
    output = tmp_path / "out" / "results.json"
    settings = ev.EvaluateConfig(**SETTINGS, samples=2)
    results = ev.evaluate(model, data_dir, settings, output=str(output), mlflow_logging=False)
    written = json.loads(output.read_text())
    assert written["samples"] == results["samples"] and len(results["samples"]) == 2
    prompts, _ = ev.adherence_prompts(results["prompt_adherence"]["labels"], 1, 0)
    for sample in results["samples"]:
        path = output.parent / sample["path"]
        assert sample["path"].startswith("results_samples/") and path.is_file()
        index = int(path.stem.split("-")[1])
        assert sample["prompt"] == prompts[index] and sample["seed"] == index
        from music_gen.audio import audio_info

        assert audio_info(path).sample_rate == model.sample_rate
    # Off by default: the results keep their old keys, and no folder appears.
    plain = ev.evaluate(model, data_dir, ev.EvaluateConfig(**SETTINGS), mlflow_logging=False)
    assert "samples" not in plain
    with pytest.raises(UsageError, match="--samples needs --output"):
        ev.evaluate(model, data_dir, settings, mlflow_logging=False)


def test_compare_rows_pick_the_best_per_direction():
    results = {
        "a": {"validation": {"loss": 2.0, "perplexity": 7.4, "per_codebook": []},
              "prompt_adherence": {"accuracy": 0.5}, "fad": {"fad": 1.0, "embedding": "x"}},
        "b": {"validation": {"loss": 3.0, "perplexity": 20.1, "per_codebook": []},
              "prompt_adherence": {"accuracy": 0.5}, "fad": {"fad": 0.2, "embedding": "x"}},
    }  # fmt: skip
    rows = {row["figure"]: row for row in cmp.compare_rows(results)}
    assert rows["loss"]["best"] == ["a"] and rows["perplexity"]["best"] == ["a"]
    assert rows["FAD (x)"]["best"] == ["b"]
    assert rows["adherence accuracy (codes)"]["best"] == ["a", "b"]  # a tie marks both
    skipped = {"a": {"prompt_adherence": {"skipped": "no"}}, "b": {"prompt_adherence": {}}}
    assert cmp.compare_rows(skipped) == []  # no values: no row


def test_compare_cli_two_models_side_by_side(model_dirs, data_dir, tmp_path, capsys):
    html, js = tmp_path / "c.html", tmp_path / "c.json"
    args = ["--per-class", "1", "--duration", "0.4", "--fad-clips", "4", "--device", "cpu"]
    code = main(
        ["compare", "--models", *model_dirs, "--data", data_dir, "--output", str(html),
         "--json", str(js), "--samples", "2", *args]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    summary = json.loads(js.read_text())
    assert summary["models"] == model_dirs and summary["kind"] == "compare"
    rows = {row["figure"]: row for row in summary["rows"]}
    # Each model's figures are its own evaluation with the shared settings and seeds.
    for name in model_dirs:
        result = summary["results"][name]
        assert rows["loss"]["values"][name] == result["validation"]["loss"]
        assert rows["FAD (log-mel)"]["values"][name] == result["fad"]["fad"]
    alone = ev.evaluate(model_dirs[0], data_dir, ev.EvaluateConfig(**SETTINGS),
                        mlflow_logging=False, device="cpu")  # fmt: skip
    assert alone["validation"] == summary["results"][model_dirs[0]]["validation"]
    assert alone["prompt_adherence"] == summary["results"][model_dirs[0]]["prompt_adherence"]
    losses = rows["loss"]["values"]
    assert rows["loss"]["best"] == [min(losses, key=losses.get)]
    assert "loss" in out and "*" in out
    # Same prompts and seeds for both models, one sample folder each.
    first, second = (summary["results"][n]["samples"] for n in model_dirs)
    assert [(s["prompt"], s["seed"]) for s in first] == [(s["prompt"], s["seed"]) for s in second]
    assert all((tmp_path / s["path"]).is_file() for s in first + second)
    page = Page(html.read_text())
    assert len(page.best) >= len(summary["rows"])
    assert f"{rows['loss']['values'][rows['loss']['best'][0]]:.4f}" in page.best
    sources = [a["src"] for tag, a in page.tags if tag == "audio"]
    assert len(sources) == 4 and all(s.startswith("data:audio/wav;base64,") for s in sources)


def test_models_with_different_codecs_are_refused_in_one_line(codec, data_dir, capsys, tmp_path):
    other = tiny_calibrated_codec(num_codebooks=4, cardinality=32)
    models = [tiny(codec, 1), tiny(other, 2, cardinality=32)]
    with pytest.raises(UsageError, match="different codecs .*--codec-independent"):
        cmp.compare(["a", "b"], data_dir, ev.EvaluateConfig(**SETTINGS), models=models)
    # Only the codec-independent figure: adherence judged on the decoded audio.
    summary = cmp.compare(
        ["a", "b"], data_dir, ev.EvaluateConfig(**SETTINGS), models=models,
        codec_independent=True, json_output=str(tmp_path / "c.json"),
    )  # fmt: skip
    assert [row["figure"] for row in summary["rows"]] == ["adherence accuracy (audio)"]
    for result in summary["results"].values():
        scored = result["audio_adherence"]
        assert 0 <= scored["accuracy"] <= 1 and len(scored["confusion"]) == len(scored["labels"])
        assert "validation" not in result
    assert json.loads((tmp_path / "c.json").read_text())["codec_independent"] is True


def test_compare_cli_mistakes_are_one_line(model_dirs, data_dir, tmp_path, capsys):
    html = tmp_path / "x.html"
    assert main(["compare", "--models", model_dirs[0], "--data", data_dir, "-o", str(html)]) == 2
    assert "at least two models" in capsys.readouterr().err
    twice = [model_dirs[0], model_dirs[0]]
    assert main(["compare", "--models", *twice, "--data", data_dir]) == 2
    assert "more than once" in capsys.readouterr().err
    assert main(["compare", "--models", *model_dirs, "--data", data_dir, "--samples", "1"]) == 2
    assert "--samples needs --output or --json" in capsys.readouterr().err
    assert main(["compare", "--models", *model_dirs, "--data", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("music-gen: error: ") and err.count("\n") == 1
    assert not html.exists()
