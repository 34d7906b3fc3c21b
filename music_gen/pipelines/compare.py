"""Several models evaluated on the same data and prompts, side by side.

::

    music-gen compare --models run1 run2 models:/tiny@production --data work/data/synth \\
        --output compare.html --json compare.json

Each model is scored by ``evaluate.evaluate`` with one ``EvaluateConfig``: the same
held-out rows for the loss, the same prompts (held-out synth phrasings, else the same
real captions) generated with the same seeds (row ``i`` seeded ``seed + i``), the same
real clips for FAD. The page has one row per figure and one column per model, the
best value of each row highlighted (``compare_rows``: lower loss, perplexity and FAD are
better, higher adherence is better), the confusion matrices side by side and, with
``--samples N``, each model's clip for the same prompt and seed in one row.

Codecs: loss and perplexity are over a codec's codes, code-space adherence classifies
them against the dataset's codes, and FAD's real side is the dataset's codes decoded by
the model's codec, so these mean the same only for models with the same codec (sample
rate, channels, codebooks, cardinality; ``codec_signature``). Models with different
codecs are refused unless ``codec_independent`` is set: then the one figure that means
the same with any codec is compared, prompt adherence judged on the decoded audio
(``adherence.audio_adherence``: a log-mel nearest-centroid classifier fitted on freshly
rendered synth clips), on synthetic data only. No MLflow logging: a comparison is a
report; ``music-gen evaluate`` logs a model's figures. All models are loaded before any
is scored (their codecs are checked first), so they must fit in memory together.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from pathlib import Path

from music_gen import outputs
from music_gen.errors import MusicGenError, UsageError
from music_gen.pipelines import evaluate as ev
from music_gen.pipelines import report

LOWER, HIGHER = "lower", "higher"
CODEC_FIELDS = ("sample_rate", "channels", "num_codebooks", "cardinality")


def codec_signature(model) -> dict:
    """What must be equal for two models' codes to mean the same (``CODEC_FIELDS``)."""
    return {
        "sample_rate": int(model.sample_rate),
        "channels": int(model.codec.channels),
        "num_codebooks": int(model.lm.cfg.num_codebooks),
        "cardinality": int(model.lm.cfg.cardinality),
    }


def describe_codec(signature: dict) -> str:
    s = signature
    return (
        f"{s['sample_rate']} Hz, {s['channels']} ch, {s['num_codebooks']}x{s['cardinality']} codes"
    )


def check_same_codec(signatures: dict[str, dict]) -> None:
    """Refuse (one line) models whose codecs differ: their codec-space figures do not compare."""
    if len({tuple(sorted(s.items())) for s in signatures.values()}) <= 1:
        return
    which = "; ".join(f"{name}: {describe_codec(s)}" for name, s in signatures.items())
    raise UsageError(
        f"the models have different codecs ({which}): their loss, code adherence and FAD do "
        "not compare; pass --codec-independent to compare only prompt adherence judged on "
        "the decoded audio"
    )


# --- the rows of the comparison --------------------------------------------------------------


def figure_rows(results: dict) -> list[tuple[str, str, float | None]]:
    """``(figure, better, value)`` of one model's results, in page order."""
    rows: list[tuple[str, str, float | None]] = []
    val = results.get("validation")
    if val:
        rows += [("loss", LOWER, val["loss"]), ("perplexity", LOWER, val["perplexity"])]
        for entry in val["per_codebook"]:
            rows.append((f"loss, codebook {entry['codebook']}", LOWER, entry["loss"]))
        for entry in val["per_codebook"]:
            rows.append((f"perplexity, codebook {entry['codebook']}", LOWER, entry["perplexity"]))
    adherence = results.get("prompt_adherence")
    if adherence is not None:
        rows.append(("adherence accuracy (codes)", HIGHER, adherence.get("accuracy")))
    if results.get("fad"):
        rows.append((f"FAD ({results['fad']['embedding']})", LOWER, results["fad"]["fad"]))
    if results.get("audio_adherence"):
        rows.append(("adherence accuracy (audio)", HIGHER, results["audio_adherence"]["accuracy"]))
    return rows


def compare_rows(results: dict[str, dict]) -> list[dict]:
    """One row per figure: ``figure``, ``better``, ``values`` (model -> value or None) and
    ``best`` (the models with the best value; all of them on a tie). Rows no model has
    a value for are left out."""
    order: dict[str, str] = {}
    values: dict[str, dict[str, float | None]] = {}
    for name, result in results.items():
        for figure, better, value in figure_rows(result):
            order.setdefault(figure, better)
            values.setdefault(figure, {})[name] = value
    rows = []
    for figure, better in order.items():
        cells = {name: values[figure].get(name) for name in results}
        present = {n: v for n, v in cells.items() if v is not None and math.isfinite(v)}
        if not present:
            continue
        top = (min if better == LOWER else max)(present.values())
        best = [n for n, v in present.items() if math.isclose(v, top, rel_tol=1e-9, abs_tol=0)]
        rows.append({"figure": figure, "better": better, "values": cells, "best": best})
    return rows


def format_table(rows: list[dict], names: Sequence[str]) -> str:
    """The comparison as text for the terminal; ``*`` marks the best of a row."""
    width = max([len("figure"), *(len(r["figure"]) for r in rows)]) + 2
    columns = [max(12, len(n) + 2) for n in names]
    lines = [
        "figure".ljust(width) + "".join(n.rjust(c) for n, c in zip(names, columns, strict=True))
    ]
    for row in rows:
        cells = []
        for name, col in zip(names, columns, strict=True):
            mark = "*" if name in row["best"] else " "
            cells.append((report.fmt(row["values"][name]) + mark).rjust(col))
        lines.append(row["figure"].ljust(width) + "".join(cells))
    lines.append(f"* best of the row ({_better_note(rows)})")
    return "\n".join(lines)


# --- running --------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40] or "model"


def sample_folders(names: Sequence[str], root: Path) -> dict[str, Path]:
    """One folder of samples per model under ``root``: ``1-run1``, ``2-run2``, ..."""
    return {name: root / f"{i}-{_slug(Path(name).name or name)}" for i, name in enumerate(names, 1)}


def compare(
    model_srcs: Sequence[str],
    data_dir: str,
    settings: ev.EvaluateConfig | None = None,
    *,
    codec_independent: bool = False,
    output: str | None = None,
    json_output: str | None = None,
    device=None,
    models: Sequence | None = None,
) -> dict:
    """Evaluate every model in ``model_srcs`` on ``data_dir`` with the same settings; write
    the side-by-side page to ``output`` and the JSON to ``json_output`` (when given).

    ``models`` may hold already-loaded ``MusicGen`` objects for ``model_srcs`` (the
    names then only label them). Returns the JSON's content: ``models``, ``codecs``,
    ``rows`` (``compare_rows``), ``results`` (model -> its results) and the settings.
    """
    settings = settings or ev.EvaluateConfig()
    names = [str(src) for src in model_srcs]
    if len(names) < 2:
        raise UsageError("compare needs at least two models (--models A B)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--models names {', '.join(twice)} more than once")
    named = (("--output", output), ("--json", json_output))
    targets = {flag: outputs.check_file(path, flag) for flag, path in named if path}
    folders = _sample_folders(names, settings.samples, targets)
    ev.shards.readable_shards(str(data_dir))  # an empty or damaged dataset: before the models
    plan = _audio_plan(data_dir, settings) if codec_independent else None
    loaded = list(models) if models is not None else [ev.load_model(s, device) for s in names]
    by_name = dict(zip(names, loaded, strict=True))
    signatures = {name: codec_signature(model) for name, model in by_name.items()}
    if plan is not None:
        results = _audio_adherence_all(by_name, data_dir, settings, folders, *plan)
    else:
        check_same_codec(signatures)
        for model in loaded:
            ev.check_model_fits(model, data_dir)  # every model, before any is evaluated
        results = {}
        for name, model in by_name.items():
            folder = str(folders[name]) if folders else None
            result = ev.evaluate(
                model, data_dir, settings, mlflow_logging=False, samples_dir=folder
            )
            result["model"] = name
            results[name] = result
    if folders:
        base = _json_base(targets)
        for name, result in results.items():
            for sample in result.get("samples", []):
                sample["path"] = _relative(folders[name] / Path(sample["path"]).name, base)
    summary = {
        "kind": "compare",
        "models": names,
        "data": str(data_dir),
        "codec_independent": codec_independent,
        "settings": _settings_dict(settings),
        "codecs": signatures,
        "rows": compare_rows(results),
        "results": results,
    }
    if "--json" in targets:
        import json

        outputs.write_text(targets["--json"], json.dumps(summary, indent=2) + "\n")
    if "--output" in targets:
        outputs.write_text(targets["--output"], render_compare(summary, folders))
    return summary


def _sample_folders(names, count: int, targets: dict[str, Path]) -> dict[str, Path]:
    if count < 0:
        raise UsageError(f"--samples must be 0 or more, got {count}")
    if not count:
        return {}
    if not targets:
        raise UsageError("--samples needs --output or --json: the clips are saved next to them")
    first = targets.get("--output") or targets["--json"]
    folders = sample_folders(names, ev.samples_folder(first))
    for folder in folders.values():
        outputs.check_dir(folder, "samples folder")
    return folders


def _json_base(targets: dict[str, Path]) -> Path:
    return (targets.get("--json") or targets["--output"]).resolve().parent


def _relative(path: Path, base: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def _settings_dict(settings: ev.EvaluateConfig) -> dict:
    """The settings as JSON values (an ``Embedding`` object by its name)."""
    fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    if not isinstance(fields["embedding"], str):
        fields["embedding"] = fields["embedding"].name
    return fields


def _audio_plan(data_dir, settings: ev.EvaluateConfig) -> tuple[int, list[str], list[str]]:
    """``(rows, labels, prompts)`` of a codec-independent comparison, checked before any
    model is loaded: synthetic data only, the held-out prompts of its classes."""
    rows = ev.read_rows(str(data_dir))
    if not all(ev.row_class(row) is not None for row in rows):
        raise MusicGenError(
            "--codec-independent compares prompt adherence judged on decoded audio, which "
            "needs synthetic data (every row of a synth class)"
        )
    if settings.per_class < 1 or settings.batch_size < 1:
        raise UsageError("per_class and batch_size must be at least 1")
    labels, _ = ev.synth_labels(rows, None)
    prompts, _ = ev.adherence_prompts(labels, settings.per_class, settings.seed)
    return len(rows), labels, prompts


def _audio_adherence_all(
    by_name, data_dir, settings, folders, rows: int, labels: list[str], prompts: list[str]
) -> dict[str, dict]:
    """Codec-independent figures of every model: adherence judged on decoded audio, for the
    same held-out prompts and seeds (``adherence_prompts``, ``generate_batches``)."""
    from music_gen.pipelines.adherence import audio_adherence

    results = {}
    for name, model in by_name.items():
        generated = ev.generate_batches(
            model, prompts, settings.duration, settings.seed, settings.guidance_scale,
            settings.batch_size,
        )  # fmt: skip
        scored = audio_adherence(
            model, generated, labels, settings.per_class, settings.seed, settings.batch_size
        )
        scored.update(per_class=settings.per_class, duration=settings.duration)
        result = {
            "model": name,
            "data": str(data_dir),
            "rows": rows,
            "audio_adherence": scored,
        }
        if folders:
            result["samples"] = ev.save_samples(
                model, generated, prompts, settings.seed, settings.samples, folders[name]
            )
        results[name] = result
    return results


# --- the page ---------------------------------------------------------------------------------


def render_compare(summary: dict, folders: dict[str, Path]) -> str:
    """The side-by-side HTML page of ``compare``'s summary (samples read from ``folders``)."""
    names, results = summary["models"], summary["results"]
    body = [
        report.table(
            ["", *names],
            [
                ["codec", *(describe_codec(summary["codecs"][n]) for n in names)],
                ["data", *([summary["data"]] * len(names))],
            ],
            css="meta",
        ),
        "<h2>Figures</h2>",
        report.note("best of each row highlighted; " + _better_note(summary["rows"])),
        report.table(
            ["figure", *names],
            [
                [row["figure"]]
                + [
                    (report.fmt(row["values"][n]), "best" if n in row["best"] else "")
                    for n in names
                ]
                for row in summary["rows"]
            ],
        ),
    ]
    if summary["codec_independent"]:
        body.append(report.note("codec-independent comparison: adherence judged on decoded audio"))
    confusions = [(n, _adherence_of(results[n])) for n in names]
    if any(a and "confusion" in a for _, a in confusions):
        body.append("<h2>Confusion matrices</h2>")
        body.append(report.note("rows: prompted class, columns: predicted class"))
        cells = "".join(
            f"<div><h3>{report.esc(n)}</h3>"
            + (report.confusion_table(a) if a and "confusion" in a else report.note("none"))
            + "</div>"
            for n, a in confusions
        )
        body.append(f'<div class="grid">{cells}</div>')
    body += _samples_grid(names, results, folders)
    return report.page("music-gen model comparison", body)


def _better_note(rows: list[dict]) -> str:
    lower = any(r["better"] == LOWER for r in rows)
    higher = any(r["better"] == HIGHER for r in rows)
    parts = (["lower loss, perplexity and FAD are better"] if lower else []) + (
        ["higher adherence is better"] if higher else []
    )
    return "; ".join(parts)


def _adherence_of(result: dict) -> dict | None:
    return result.get("audio_adherence") or result.get("prompt_adherence")


def _samples_grid(names, results, folders: dict[str, Path]) -> list[str]:
    if not folders:
        return []
    media = {
        n: report.samples_media(
            [
                {**s, "path": str(folders[n] / Path(s["path"]).name)}
                for s in results[n].get("samples", [])
            ],
            Path("/"),
        )
        for n in names
    }
    count = max(len(m) for m in media.values())
    head = "".join(f'<th class="text">{report.esc(n)}</th>' for n in names)
    rows = []
    for i in range(count):
        first = next(m[i] for m in media.values() if i < len(m))
        cells = "".join(
            f"<td>{report.sample_cell(media[n][i]) if i < len(media[n]) else ''}</td>"
            for n in names
        )
        rows.append(
            f"<tr><td>{report.esc(first.get('prompt', ''))}</td>"
            f"<td>{report.esc(first.get('seed', ''))}</td>{cells}</tr>"
        )
    return [
        "<h2>Samples</h2>",
        report.note("the same prompt and seed in each row"),
        f'<table class="samples"><thead><tr><th class="text">prompt</th><th>seed</th>{head}'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>",
    ]
