"""The demo's bookkeeping without Ray: stage records, refusals, the progress relay."""

from __future__ import annotations

import io
import json
import socket

import pytest

from music_gen.cli import main
from music_gen.pipelines import demo as D

pytestmark = pytest.mark.unit


def record(work, name: str, sizes: str = "quick", **result) -> None:
    (work / "stages").mkdir(parents=True, exist_ok=True)
    body = {"sizes": sizes, "seconds": 1.0, "line": f"{name} done", "result": result}
    (work / "stages" / f"{name}.json").write_text(json.dumps(body))


def test_a_workdir_of_other_sizes_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    work = tmp_path / "demo"
    record(work, "synth", sizes="quick", outputs=[])
    assert main(["demo", "--workdir", str(work)]) == 2  # default sizes over a --quick demo
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"music-gen: error: {work} holds a demo made at quick sizes (--quick): use another "
        "--workdir, or delete that one to start afresh"
    ]
    assert sorted(p.name for p in work.iterdir()) == ["stages"]  # nothing else was written


def test_bad_flags_are_one_line(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == "music-gen: error: --port must be 1-65535, got 0"
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["demo", "--workdir", str(afile)]) == 2
    assert "--workdir" in capsys.readouterr().err


def test_a_busy_port_is_refused_before_any_stage(tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as from a shell
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    work = tmp_path / "demo"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["demo", "--quick", "--workdir", str(work), "--port", str(port)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"music-gen: error: port {port} on 127.0.0.1 is in use: pass --port"
    )
    assert not work.exists()


def test_a_stage_is_reused_only_with_its_record_and_its_outputs(tmp_path):
    demo = D.Demo(tmp_path / "demo", D.QUICK)
    out = tmp_path / "out"
    out.mkdir()
    record(demo.paths.root, "synth", outputs=[str(out)])
    record(demo.paths.root, "tokenize", outputs=[str(tmp_path / "gone")])
    record(demo.paths.root, "train", sizes="default", outputs=[])
    record(demo.paths.root, "codec", method="train", outputs=[])
    assert demo._record("synth")["line"] == "synth done"
    assert demo._record("tokenize") is None  # its output is gone
    assert demo._record("train") is None  # another size
    assert demo._record("codec") is None  # --quick calibrates; this one was trained
    assert D.Demo(tmp_path / "demo", D.QUICK, codec="train")._record("codec") is not None
    with pytest.raises(D.UsageError):
        D.Demo(tmp_path / "demo", D.QUICK, codec="both")


def test_stage_output_logs_everything_and_moves_the_bar_on_step_lines():
    class Bar:
        def __init__(self):
            self.n, self.total, self.postfix = 0, None, ""

        def update(self, by):
            self.n += by

        def set_postfix_str(self, text):
            self.postfix = text

    log, bar = io.StringIO(), Bar()
    out = D.StageOutput(log, bar)
    out.write("[train] 1 worker(s) on 1 node(s)\n[train] step 10/40 loss 3.1 lr 1e-3\n[tr")
    assert (bar.n, bar.total) == (10, 40)
    out.write("ain] step 20 val_loss 3.0123\n[codec] step 30/40 loss 1\n")
    assert (bar.n, bar.postfix) == (30, "val_loss 3.0123")
    assert log.getvalue().count("\n") == 4 and out.encoding == "utf-8"
