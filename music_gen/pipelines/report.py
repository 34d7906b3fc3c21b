"""Evaluation results as one self-contained HTML page.

::

    music-gen evaluate --model M --data D -o results.json --samples 6
    music-gen report results.json --output report.html

The page is a single file with nothing to fetch: the figures of ``evaluate``'s JSON as
tables (loss and perplexity overall and per codebook, prompt adherence with its
confusion matrix, FAD), loss curves drawn as PNG images (from a ``history`` in the
results, else from the MLflow run the results name), and the generated samples the
results list (``evaluate --samples``) as audio players with a spectrogram each. Images
and audio are embedded as ``data:`` URIs, so the page can be mailed or attached to a
ticket as it is.

What a results file must hold (``check_results``): ``validation`` with ``loss``,
``perplexity`` and ``per_codebook``; ``prompt_adherence`` (its ``accuracy``,
``confusion`` and ``labels``, or ``skipped``); ``fad`` with ``fad``. Optional:
``samples`` (``[{path, prompt, seed}]``, paths relative to the results file) and
``history`` (``{metric: [[step, value], ...]}``, e.g. ``train_loss``, ``val_loss``).

The HTML helpers here (tables, images, audio) are shared with ``compare.py``.
Drawing uses matplotlib's object API (``Figure``, Agg): no pyplot state, no display.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from music_gen import outputs
from music_gen.errors import MusicGenError

CURVE_METRICS = ("train_loss", "val_loss")
"""Metrics of a training run drawn as loss curves (what the training loop logs)."""
AUDIO_TYPES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
}
HINT = "give the JSON that `music-gen evaluate -o` writes"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
td.best { background: #d9f2d9; font-weight: bold; }
.note { color: #666; font-style: italic; }
.samples > tbody > tr > td { vertical-align: top; text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 0 2em; }
table.meta td { text-align: left; }
img { max-width: 100%; }
"""


# --- reading and checking results -------------------------------------------------------------


def load_results(path: str | os.PathLike[str]) -> dict:
    """An evaluation result read from ``path``; one-line ``MusicGenError`` when it is missing,
    not JSON, or not what ``evaluate`` writes."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise MusicGenError(f"{path} is a folder, not a results file; {HINT}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MusicGenError(f"results file not found: {path}") from None
    except UnicodeDecodeError:
        raise MusicGenError(f"{path} is not JSON (not UTF-8 text); {HINT}") from None
    except OSError as exc:
        raise MusicGenError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        results = json.loads(text)
    except ValueError as exc:
        raise MusicGenError(f"{path} is not JSON ({exc}); {HINT}") from None
    check_results(results, str(path))
    return results


def check_results(results: object, name: str = "results") -> None:
    """Raise ``MusicGenError`` (one line, naming what is missing) unless ``results`` has
    the shape of ``evaluate``'s results."""
    why = _shape_problem(results)
    if why:
        if isinstance(results, dict) and results.get("kind") == "compare":
            why = "it is a `music-gen compare` result, which writes its own HTML (--output)"
        raise MusicGenError(f"{name} is not an evaluation result: {why}; {HINT}")


def _shape_problem(results: object) -> str:
    """What keeps ``results`` from being an evaluation result ('' when nothing)."""
    if not isinstance(results, dict):
        return f"a JSON {type(results).__name__}, not an object"
    val = results.get("validation")
    if not isinstance(val, dict):
        return "no 'validation' section"
    for key in ("loss", "perplexity"):
        if not _is_number(val.get(key)):
            return f"'validation.{key}' is not a number"
    per_codebook = val.get("per_codebook")
    if not isinstance(per_codebook, list) or not all(
        isinstance(e, dict) and _is_number(e.get("loss")) and _is_number(e.get("perplexity"))
        for e in per_codebook
    ):
        return "'validation.per_codebook' is not a list of {codebook, loss, perplexity}"
    adherence = results.get("prompt_adherence")
    if not isinstance(adherence, dict):
        return "no 'prompt_adherence' section"
    if "skipped" not in adherence and not _adherence_ok(adherence):
        return "'prompt_adherence' has no accuracy, labels and square confusion matrix"
    fad = results.get("fad")
    if not isinstance(fad, dict) or not _is_number(fad.get("fad")):
        return "'fad.fad' is not a number"
    samples = results.get("samples", [])
    if not isinstance(samples, list) or not all(
        isinstance(s, dict) and isinstance(s.get("path"), str) for s in samples
    ):
        return "'samples' is not a list of {path, prompt, seed}"
    history = results.get("history", {})
    if not isinstance(history, dict) or not all(
        isinstance(points, list) and all(_is_point(p) for p in points)
        for points in history.values()
    ):
        return "'history' is not {metric: [[step, value], ...]}"
    return ""


def _adherence_ok(adherence: dict) -> bool:
    labels, confusion = adherence.get("labels"), adherence.get("confusion")
    return (
        _is_number(adherence.get("accuracy"))
        and isinstance(labels, list)
        and isinstance(confusion, list)
        and len(confusion) == len(labels)
        and all(isinstance(r, list) and len(r) == len(labels) for r in confusion)
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_point(point: object) -> bool:
    return isinstance(point, list | tuple) and len(point) == 2 and all(map(_is_number, point))


# --- loss history ---------------------------------------------------------------------------


def run_ids_of(results: dict) -> list[str]:
    """MLflow runs that may hold the model's training history, most likely first: the run
    of a ``runs:/RUN/...`` model, then the run ``evaluate`` logged into."""
    found = []
    model = str(results.get("model", ""))
    if match := re.match(r"^runs:/([^/]+)", model):
        found.append(match[1])
    if isinstance(results.get("mlflow_run_id"), str):
        found.append(results["mlflow_run_id"])
    return list(dict.fromkeys(found))


def mlflow_history(run_ids: Sequence[str]) -> tuple[dict, str]:
    """``(history, note)``: ``CURVE_METRICS`` of the first of ``run_ids`` that logged any,
    read from the platform's MLflow store (never created here). Anything unreadable
    (no store, no such run, a server that does not answer) is a note, not an error: the
    rest of the report stands without the curves."""
    if not run_ids:
        return {}, "the results name no MLflow run"
    from music_gen.platform import tracking

    try:
        uri = tracking.existing_store()  # before importing mlflow: seconds saved when absent
    except MusicGenError as exc:
        return {}, str(exc)
    from mlflow.exceptions import MlflowException

    try:
        client = tracking.client(uri)
        for run_id in run_ids:
            history = {}
            for metric in CURVE_METRICS:
                points = client.get_metric_history(run_id, metric)
                if points:
                    history[metric] = sorted([p.step, p.value] for p in points)
            if history:
                return history, f"from MLflow run {run_id}"
    except MlflowException as exc:
        return {}, f"MLflow: {exc.message.splitlines()[0]}"
    return {}, f"MLflow run(s) {', '.join(run_ids)} logged no {' or '.join(CURVE_METRICS)}"


# --- images and audio as data: URIs ---------------------------------------------------------------


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return data_uri(buffer.getvalue(), "image/png")


def loss_curve_png(curves: dict[str, dict[str, list]]) -> str:
    """Loss curves as a PNG ``data:`` URI: ``{series name: {metric: [[step, value], ...]}}``
    (one series for a report, one per model for a comparison)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.2))
    axes = figure.add_subplot()
    for series, history in curves.items():
        for metric, points in history.items():
            steps, values = zip(*points, strict=True)
            label = metric if len(curves) == 1 else f"{series}: {metric}"
            axes.plot(steps, values, marker="o" if len(points) < 20 else None, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return _png(figure)


def spectrogram_png(audio, sample_rate: int) -> str:
    """A spectrogram of audio ``[C, S]`` (mixed to mono) as a PNG ``data:`` URI."""
    import numpy as np
    from matplotlib.figure import Figure

    mono = np.asarray(audio, dtype=np.float64).mean(axis=0)  # [S]
    figure = Figure(figsize=(4, 2))
    axes = figure.add_subplot()
    nfft = 512 if mono.shape[0] >= 512 else max(16, 2 ** int(math.log2(max(mono.shape[0], 16))))
    axes.specgram(mono + 1e-9, NFFT=nfft, Fs=sample_rate, noverlap=nfft * 3 // 4, cmap="magma")
    axes.set_xlabel("s", fontsize="small")
    axes.set_ylabel("Hz", fontsize="small")
    axes.tick_params(labelsize="x-small")
    figure.tight_layout()
    return _png(figure)


def sample_media(path: Path) -> tuple[str, str]:
    """``(audio data: URI, spectrogram data: URI)`` of a sample file (read as it is)."""
    from music_gen.audio import read_audio

    data = path.read_bytes()
    audio, rate = read_audio(data)  # [C, S]
    mime = AUDIO_TYPES.get(path.suffix.lower(), "audio/wav")
    return data_uri(data, mime), spectrogram_png(audio.numpy(), rate)


def samples_media(samples: Sequence[dict], base: Path) -> list[dict]:
    """Each sample entry with its ``audio`` and ``spectrogram`` URIs, or a ``missing`` note
    (a sample file gone or unreadable leaves the rest of the report standing)."""
    out = []
    for sample in samples:
        path = Path(sample["path"]).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            audio, picture = sample_media(path)
        except FileNotFoundError:
            out.append({**sample, "missing": f"{path} not found"})
            continue
        except MusicGenError as exc:  # AudioError: not audio, truncated
            out.append({**sample, "missing": str(exc)})
            continue
        out.append({**sample, "audio": audio, "spectrogram": picture})
    return out


# --- HTML pieces ------------------------------------------------------------------------------


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object, digits: int = 4) -> str:
    """A figure for a table cell: floats to ``digits`` significant places, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.4f}"
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[object]], css: str = "") -> str:
    """An HTML table; cells are escaped text (first column left-aligned), or ``(text,
    class)`` pairs for a cell with a CSS class."""
    head = "".join(
        f'<th class="{"text" if i == 0 else ""}">{esc(h)}</th>' for i, h in enumerate(header)
    )
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text, cls = cell if isinstance(cell, tuple) else (cell, "")
            cls = " ".join(c for c in (cls, "text" if i == 0 else "") if c)
            cells.append(f'<td class="{cls}">{esc(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    attr = f' class="{css}"' if css else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def confusion_table(adherence: dict) -> str:
    """The confusion matrix: rows the prompted class, columns the predicted one."""
    labels = adherence["labels"]
    rows = [
        [f"{label} (prompted)", *[(n, "best" if i == j and n else "") for j, n in enumerate(row)]]
        for i, (label, row) in enumerate(zip(labels, adherence["confusion"], strict=True))
    ]
    return table(["prompted \\ predicted", *labels], rows)


def image(uri: str, alt: str) -> str:
    return f'<img src="{esc(uri)}" alt="{esc(alt)}">'


def audio_player(uri: str) -> str:
    return f'<audio controls preload="none" src="{esc(uri)}"></audio>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def page(title: str, body: Sequence[str]) -> str:
    created = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>\n" + "\n".join(body) + f"\n{note(f'written {created}')}\n"
        "</body>\n</html>\n"
    )


def sample_cell(sample: dict) -> str:
    """An audio player and a spectrogram of one sample (or why there are none)."""
    if "missing" in sample:
        return note(f"sample unavailable: {sample['missing']}")
    return audio_player(sample["audio"]) + "<br>" + image(sample["spectrogram"], "spectrogram")


# --- the report ---------------------------------------------------------------------------------


def render_report(results: dict, samples: Sequence[dict], history: dict, history_note: str) -> str:
    """The HTML page of one evaluation (``samples`` as ``samples_media`` returns them)."""
    val, adherence, fad = results["validation"], results["prompt_adherence"], results["fad"]
    body = [
        table(
            ["", "value"],
            [
                ["model", results.get("model", "?")],
                ["data", results.get("data", "?")],
                ["rows in dataset", results.get("rows", "?")],
                ["MLflow run", results.get("mlflow_run_id") or "–"],
            ],
            css="meta",
        ),
        "<h2>Validation loss</h2>",
        table(
            ["split", "rows", "frames", "tokens", "loss", "perplexity"],
            [
                [
                    val.get("split", "?"),
                    val.get("rows", "?"),
                    val.get("frames", "?"),
                    val.get("tokens", "?"),
                    fmt(val["loss"]),
                    fmt(val["perplexity"]),
                ]
            ],
        ),
    ]
    if val.get("note"):
        body.append(note(val["note"]))
    body += [
        "<h3>Per codebook</h3>",
        table(
            ["codebook", "loss", "perplexity"],
            [
                [e.get("codebook", i), fmt(e["loss"]), fmt(e["perplexity"])]
                for i, e in enumerate(val["per_codebook"])
            ],
        ),
        "<h2>Loss curves</h2>",
    ]
    if history:
        body.append(image(loss_curve_png({"run": history}), "loss curves"))
        body.append(note(history_note))
    else:
        body.append(note(f"no loss history: {history_note}"))
    body.append("<h2>Prompt adherence</h2>")
    body += adherence_section(adherence)
    body += melody_section(results.get("melody"))
    body += [
        "<h2>Fréchet Audio Distance</h2>",
        table(
            ["FAD", "embedding", "real clips", "generated clips"],
            [
                [
                    fmt(fad["fad"]),
                    fad.get("embedding", "?"),
                    fad.get("real_clips", "?"),
                    fad.get("fake_clips", "?"),
                ]
            ],
        ),
        "<h2>Samples</h2>",
    ]
    if samples:
        rows = [
            f"<tr><td>{esc(s.get('prompt', ''))}</td><td>{esc(s.get('seed', ''))}</td>"
            f"<td>{sample_cell(s)}</td></tr>"
            for s in samples
        ]
        body.append(
            '<table class="samples"><thead><tr><th class="text">prompt</th><th>seed</th>'
            f'<th class="text">audio</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
        )
    else:
        body.append(note("no samples in the results (evaluate --samples N saves some)"))
    return page("music-gen evaluation report", body)


def adherence_section(adherence: dict) -> list[str]:
    if "skipped" in adherence:
        return [note(f"skipped: {adherence['skipped']}")]
    return [
        table(
            ["accuracy", "chance", "per class", "seconds", "guidance"],
            [
                [
                    fmt(adherence["accuracy"]),
                    fmt(adherence.get("chance")),
                    adherence.get("per_class", "?"),
                    adherence.get("duration", "?"),
                    adherence.get("guidance_scale", "?"),
                ]
            ],
        ),
        "<h3>Confusion matrix</h3>",
        confusion_table(adherence),
        *audio_adherence_section(adherence.get("audio")),
    ]


def audio_adherence_section(audio: dict | None) -> list[str]:
    """The same generations judged on decoded audio (``evaluate``'s log-mel classifier)."""
    if not isinstance(audio, dict) or not _adherence_ok(audio):
        return []
    return [
        "<h3>Judged on decoded audio</h3>",
        table(
            ["accuracy", "chance", "classifier"],
            [[fmt(audio["accuracy"]), fmt(audio.get("chance")), audio.get("classifier", "?")]],
        ),
        confusion_table(audio),
    ]


def melody_section(melody: dict | None) -> list[str]:
    """How closely outputs follow their melody (melody models), if evaluate measured it."""
    if not isinstance(melody, dict) or not _is_number(melody.get("chroma_cosine")):
        return []
    return [
        "<h2>Melody</h2>",
        table(
            ["chroma cosine", "mismatched pairs", "clips", "seconds"],
            [
                [
                    fmt(melody["chroma_cosine"]),
                    fmt(melody.get("mismatched_chroma_cosine")),
                    melody.get("clips", "?"),
                    melody.get("duration", "?"),
                ]
            ],
        ),
    ]


def check_output(output: str | os.PathLike[str], flag: str = "--output") -> Path:
    """An HTML output path, checked before any work (``outputs.check_file``)."""
    return outputs.check_file(output, flag)


def write_report(
    results_path: str | os.PathLike[str], output: str | os.PathLike[str], use_mlflow: bool = True
) -> dict:
    """Read ``results_path``, write its HTML page to ``output`` (atomically); returns what
    went in: ``output``, ``samples`` (embedded), ``missing`` (samples not found),
    ``curves`` (metrics drawn) and ``history_note``. Bad input writes nothing."""
    target = check_output(output)
    results = load_results(results_path)
    history, history_note = results.get("history") or {}, "from the results file"
    if not history:
        if use_mlflow:
            history, history_note = mlflow_history(run_ids_of(results))
        else:
            history_note = "MLflow not read (--no-mlflow)"
    base = Path(results_path).expanduser().resolve().parent
    samples = samples_media(results.get("samples", []), base)
    outputs.write_text(target, render_report(results, samples, history, history_note))
    return {
        "output": str(target),
        "samples": sum("audio" in s for s in samples),
        "missing": [s["missing"] for s in samples if "missing" in s],
        "curves": sorted(history),
        "history_note": history_note,
    }
