"""`music-gen report`: evaluation results (written here) -> one self-contained HTML page."""

import base64
import io
import json
from html.parser import HTMLParser

import pytest
import soundfile as sf

from music_gen.audio import write_audio
from music_gen.cli import main
from music_gen.errors import MusicGenError
from music_gen.pipelines import report
from music_gen.testing import sine

pytestmark = pytest.mark.unit


class Page(HTMLParser):
    """What a test needs of a page: tags with attributes, table cells, all text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.cells: list[str] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def sources(self, tag: str) -> list[str]:
        return [attrs["src"] for name, attrs in self.tags if name == tag]


def results_with(**extra) -> dict:
    """An evaluation result as `evaluate` writes it (figures made up, shapes real)."""
    results = {
        "model": "work/checkpoints/run1",
        "data": "work/data/synth",
        "rows": 24,
        "validation": {
            "loss": 3.2109,
            "perplexity": 24.8,
            "per_codebook": [
                {"codebook": 0, "loss": 2.5, "perplexity": 12.18},
                {"codebook": 1, "loss": 3.9218, "perplexity": 50.5},
            ],
            "tokens": 800,
            "split": "val",
            "rows": 4,
            "frames": 50,
        },
        "prompt_adherence": {
            "accuracy": 0.75,
            "confusion": [[3, 1], [1, 3]],
            "labels": ["sine_pad", "bell"],
            "chance": 0.5,
            "per_class": 4,
            "duration": 1.0,
            "guidance_scale": 3.0,
        },
        "fad": {"fad": 0.0123, "embedding": "log-mel", "real_clips": 4, "fake_clips": 8},
    }
    results.update(extra)
    return results


def write_json(path, value) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def test_report_holds_the_figures_curves_and_embedded_samples(tmp_path):
    folder = tmp_path / "results_samples"
    write_audio(folder / "sample-000.wav", sine(440, 0.5, 16000), 16000)
    write_audio(folder / "sample-004.wav", sine(660, 0.5, 16000), 16000)
    samples = [
        {"path": "results_samples/sample-000.wav", "prompt": "a calm sine pad", "seed": 0},
        {"path": "results_samples/sample-004.wav", "prompt": "bright bells", "seed": 4},
    ]
    history = {"train_loss": [[1, 4.1], [2, 3.8], [3, 3.5]], "val_loss": [[3, 3.6]]}
    source = write_json(tmp_path / "results.json", results_with(samples=samples, history=history))

    written = report.write_report(source, tmp_path / "out" / "report.html", use_mlflow=False)

    assert written["samples"] == 2 and written["missing"] == []
    assert written["curves"] == ["train_loss", "val_loss"]
    page = Page((tmp_path / "out" / "report.html").read_text())
    for figure in ("3.2109", "24.8000", "2.5000", "12.1800", "3.9218", "50.5000", "0.7500"):
        assert figure in page.cells, figure
    assert "0.0123" in page.cells and "log-mel" in page.cells
    # The confusion matrix: a row per prompted class, its counts in order.
    index = page.cells.index("bell (prompted)")
    assert page.cells[index + 1 : index + 3] == ["1", "3"]
    assert "a calm sine pad" in page.cells and "bright bells" in page.cells
    images, audio = page.sources("img"), page.sources("audio")
    assert len(images) == 3 and all(src.startswith("data:image/png;base64,") for src in images)
    assert base64.b64decode(images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(audio) == 2 and all(src.startswith("data:audio/wav;base64,") for src in audio)
    # The players carry the sample files themselves: they decode to the same audio.
    played, rate = sf.read(io.BytesIO(base64.b64decode(audio[1].split(",", 1)[1])))
    original, _ = sf.read(folder / "sample-004.wav")
    assert rate == 16000 and (played == original).all()
    # Self-contained: nothing is fetched from anywhere.
    links = [a.get("src") or a.get("href") for _, a in page.tags if a.get("src") or a.get("href")]
    assert all(link.startswith("data:") for link in links)


def test_report_without_samples_or_history_says_so(tmp_path):
    skipped = {"skipped": "not synthetic data: some rows have no synth class"}
    source = write_json(tmp_path / "r.json", results_with(prompt_adherence=skipped))
    report.write_report(source, tmp_path / "r.html", use_mlflow=False)
    text = " ".join(Page((tmp_path / "r.html").read_text()).text)
    assert "no loss history" in text and "no samples in the results" in text
    assert "skipped: not synthetic data" in text
    assert "Confusion matrix" not in text


def test_a_sample_file_gone_is_a_note_not_a_failure(tmp_path):
    samples = [{"path": "gone/sample-000.wav", "prompt": "p", "seed": 0}]
    source = write_json(tmp_path / "r.json", results_with(samples=samples))
    written = report.write_report(source, tmp_path / "r.html", use_mlflow=False)
    assert written["samples"] == 0 and "not found" in written["missing"][0]
    assert "sample unavailable" in (tmp_path / "r.html").read_text()


def test_report_cli_prints_where_it_wrote(tmp_path, capsys):
    source = write_json(tmp_path / "r.json", results_with())
    assert main(["report", source, "--output", str(tmp_path / "r.html"), "--no-mlflow"]) == 0
    out = capsys.readouterr().out
    assert "report" in out and str(tmp_path / "r.html") in out
    Page((tmp_path / "r.html").read_text())


def _not_results(tmp_path):
    broken = results_with()
    del broken["fad"]
    bad_confusion = results_with()
    bad_confusion["prompt_adherence"]["confusion"] = [[1, 2, 3]]
    return {
        "missing": (str(tmp_path / "nope.json"), "not found"),
        "folder": (str(tmp_path), "is a folder"),
        "not json": (str(_write(tmp_path / "a.json", "{not json")), "is not JSON"),
        "binary": (str(_write(tmp_path / "b.json", b"\xff\xfe\x00")), "is not JSON"),
        "a list": (write_json(tmp_path / "c.json", [1, 2]), "JSON list, not an object"),
        "no fad": (write_json(tmp_path / "d.json", broken), "'fad.fad'"),
        "bad matrix": (write_json(tmp_path / "e.json", bad_confusion), "confusion"),
        "compare": (write_json(tmp_path / "f.json", {"kind": "compare"}), "music-gen compare"),
    }


def _write(path, data):
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


@pytest.mark.parametrize(
    "case",
    ["missing", "folder", "not json", "binary", "a list", "no fad", "bad matrix", "compare"],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    source, message = _not_results(tmp_path)[case]
    output = tmp_path / "out" / "report.html"
    assert main(["report", source, "--output", str(output), "--no-mlflow"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("music-gen: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not output.exists() and not (tmp_path / "out").exists()
    with pytest.raises(MusicGenError):
        report.load_results(source)


def test_output_that_is_a_folder_is_refused_before_reading(tmp_path, capsys):
    source = write_json(tmp_path / "r.json", results_with())
    assert main(["report", source, "--output", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_no_mlflow_store_leaves_the_curves_out_and_creates_none(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MUSIC_GEN_WORK_DIR", str(tmp_path / "work"))
    history, note = report.mlflow_history(["abc"])
    assert history == {} and "no MLflow store" in note
    assert not (tmp_path / "work").exists()


def test_report_shows_audio_adherence_and_melody_when_measured(tmp_path):
    results = results_with(
        melody={"chroma_cosine": 0.6123, "mismatched_chroma_cosine": 0.0871, "clips": 8,
                "duration": 3.0},
    )  # fmt: skip
    results["prompt_adherence"]["audio"] = {
        "accuracy": 0.625, "confusion": [[3, 1], [2, 2]], "labels": ["sine_pad", "bell"],
        "chance": 0.5, "classifier": "log-mel centroid",
    }  # fmt: skip
    source = write_json(tmp_path / "results.json", results)
    report.write_report(source, tmp_path / "report.html", use_mlflow=False)
    page = Page((tmp_path / "report.html").read_text())
    assert "0.6250" in page.cells and "log-mel centroid" in page.cells
    assert "0.6123" in page.cells and "0.0871" in page.cells
    # Two confusion matrices now: by codes, then by ear (its bell row: 2 then 2).
    rows = [i for i, cell in enumerate(page.cells) if cell == "bell (prompted)"]
    assert len(rows) == 2 and page.cells[rows[1] + 1 : rows[1] + 3] == ["2", "2"]
