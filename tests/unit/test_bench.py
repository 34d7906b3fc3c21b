"""`music-gen bench`: benchmarks as one table, profiler traces, one-line errors."""

from __future__ import annotations

import json

import pytest

from music_gen.bench import flatten, table
from music_gen.cli import main

pytestmark = pytest.mark.unit


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[bench]")]
    assert len(err) == 1 and err[0].startswith("music-gen: error: "), err
    return err[0]


@pytest.mark.slow
def test_a_quick_benchmark_prints_a_table_and_writes_its_json(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    assert main(["bench", "--only", "engine", "--quick", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    (result,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert result["benchmark"] == "engine" and result["quick"] is True
    assert result["requests"] == 3 and result["slots"] == 2  # the quick sizes reached it
    assert result["engine"]["audio_s_per_s"] > 0 and result["wall_s"] > 0
    lines = printed.splitlines()
    assert lines[0].split() == ["benchmark", "metric", "value"]
    row = next(line.split() for line in lines if " engine.audio_s_per_s " in line)
    assert row == ["engine", "engine.audio_s_per_s", str(result["engine"]["audio_s_per_s"])]


@pytest.mark.parametrize("kind", ["generate", "train"])
def test_profile_writes_a_chrome_trace(kind, tmp_path, capsys):
    trace = tmp_path / "traces" / f"{kind}.json"
    assert main(["bench", "--profile", kind, "--trace", str(trace)]) == 0
    events = json.loads(trace.read_text())["traceEvents"]
    names = {event.get("name") for event in events}
    assert kind in names  # the call the profiler wrapped, with the operators under it
    assert any(name and name.startswith("aten::") for name in names)
    assert str(trace) in capsys.readouterr().out
    assert [p.name for p in trace.parent.iterdir()] == [trace.name]  # no temporary file left


def test_results_of_every_script_and_the_failures_by_name(tmp_path, capsys):
    (tmp_path / "good.py").write_text(
        'import json\nprint("warming up")\nprint(json.dumps({"benchmark": "good", '
        '"rate": 2.5, "by": {"a": 1, "b": [1, 2]}}))\n'
    )
    (tmp_path / "bad.py").write_text('import sys\nsys.exit("bad: no GPU here")\n')
    assert main(["bench", "--dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    rows = [line.split() for line in captured.out.splitlines()[2:]]
    assert ["good", "rate", "2.5"] in rows and ["good", "by.b", "[1,2]"] in rows
    assert ["bad", "error", "exit", "1:", "bad:", "no", "GPU", "here"] in rows
    assert captured.err.strip().splitlines()[-1] == (
        "music-gen: error: 1 of 2 benchmarks failed: bad"
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--only", "nosuch"], "--only: no benchmark 'nosuch' (there are: "),
        (["--trace", "t.json"], "--trace is for --profile"),
        (["--profile", "generate", "--quick"], "--profile runs no benchmarks"),
        (["--profile", "generate", "--trace", "."], "--trace . is a folder"),
        (["--dir", "/nonexistent"], "no benchmarks folder (/nonexistent)"),
    ],
)
def test_bad_input_is_one_line(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    assert message in one_error_line(capsys)


def test_table_flattens_nested_results():
    text = table([{"benchmark": "x", "a": {"b": 1, "c": {"d": "s"}}, "e": [1, 2]}])
    lines = text.splitlines()
    assert [line.split() for line in lines[2:]] == [["x", "a.b", "1"], ["x", "a.c.d", "s"],
                                                    ["x", "e", "[1,2]"]]  # fmt: skip
    assert flatten({"k": None}) == [("k", "null")]


def test_every_quick_flag_is_one_its_script_takes():
    import subprocess
    import sys
    from pathlib import Path

    from music_gen.bench import QUICK

    folder = Path(__file__).parents[2] / "benchmarks"
    assert set(QUICK) <= {path.stem for path in folder.glob("*.py")}
    for name, args in QUICK.items():
        usage = subprocess.run(
            [sys.executable, str(folder / f"{name}.py"), "--help"],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
        for flag in (arg for arg in args if arg.startswith("--")):
            assert flag in usage, (name, flag)
