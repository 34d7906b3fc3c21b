"""`music-gen registry` on both stores: the embedded sqlite default and an MLflow server
backed by PostgreSQL. No Ray: versions come from tiny models written in the test.

One registered model per store goes through the whole story: three versions made by
the three `register` paths, a gated promotion that passes, one refused, one forced, two
rollbacks and the end of the history; loading by alias generates audio; bad input is
one line and leaves the registry as it was.
"""

import json

import pytest
import torch

from music_gen import MusicGen
from music_gen.cli import main
from music_gen.pipelines import checkpoints
from music_gen.platform import registry, tracking
from tests.helpers import tiny_musicgen
from tests.integration.stores import STORES, postgres_server, postgres_uri, use_store  # noqa: F401

pytestmark = [pytest.mark.integration]

NAME = "reg-model"


@pytest.fixture(scope="module", params=STORES)
def store(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"work-{request.param}")
    patch = use_store(request, request.param, work)
    yield request.param, work
    patch.undo()


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("music-gen: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def sources(store, tmp_path_factory):
    """A run with a logged model and val_loss 2.0, a checkpoint dir with val_loss 1.5 in
    its training state, and a plain model dir (no metrics): three different weights."""
    root = tmp_path_factory.mktemp("sources")
    client = tracking.client()
    run_id = client.create_run(tracking.experiment_id(client, "test-registry")).info.run_id
    tracking.RunLogger(None, run_id).metrics({"val_loss": 2.0}, step=10)
    run_model = tiny_musicgen(seed=1).save_pretrained(root / "run-model")
    tracking.log_model(None, run_id, run_model)
    tracking.end_run(None, run_id)

    ckpt = tiny_musicgen(seed=2).save_pretrained(root / "checkpoint_0000020")
    (ckpt / checkpoints.TRAIN_STATE).mkdir()
    state = {"step": 20, "metrics": {"val_loss": 1.5, "step": 20}}
    (ckpt / checkpoints.TRAIN_STATE / checkpoints.STATE_FILE).write_text(json.dumps(state))

    plain = tiny_musicgen(seed=3).save_pretrained(root / "plain")
    return {"run": run_id, "checkpoint": ckpt, "model": plain, "run_model": run_model}


def versions() -> list[str]:
    try:
        return [row["version"] for row in registry.list_versions(NAME)]
    except Exception:
        return []


def test_register_promote_gate_rollback(store, sources, capsys):
    code, out, _ = cli(capsys, "registry", "register", "--run", sources["run"], "--name", NAME)
    assert code == 0 and f"models:/{NAME}/1" in out
    code, out, _ = cli(
        capsys, "registry", "register", "--checkpoint", str(sources["checkpoint"]), "--name", NAME
    )
    assert code == 0 and f"models:/{NAME}/2" in out
    code, out, _ = cli(
        capsys, "registry", "register", "--model", str(sources["model"]), "--name", NAME
    )
    assert code == 0 and f"models:/{NAME}/3" in out
    # What `evaluate --register-metrics` records: a figure on an existing version.
    registry.record_metrics(NAME, "3", {"val_loss": 2.5})
    rows = {row["version"]: row for row in registry.list_versions(NAME)}
    assert float(rows["1"]["metrics"]["val_loss"]) == 2.0 and rows["1"]["run_id"]
    assert float(rows["2"]["metrics"]["val_loss"]) == 1.5
    assert float(rows["3"]["metrics"]["val_loss"]) == 2.5

    # First holder: nothing to compare with. Then a better candidate passes the gate.
    code, out, _ = cli(capsys, "registry", "promote", NAME, "--version", "1", "--reason", "first")
    assert code == 0 and "version 1" in out
    code, out, _ = cli(capsys, "registry", "promote", NAME, "--version", "2", "--reason", "better")
    assert code == 0 and "(was version 1)" in out
    shown = registry.show(f"{NAME}@production")
    assert shown["version"] == "2" and shown["aliases"] == ["production"]
    assert shown["tags"]["promotion.production.previous"] == "1"
    assert shown["tags"]["promotion.production.reason"] == "better"
    assert shown["tags"]["promotion.production.by"] and shown["tags"]["promotion.production.at"]

    # A worse one is refused, naming both figures, and nothing is written.
    code, _, err = cli(capsys, "registry", "promote", NAME, "--version", "3")
    line = one_error_line(err)
    assert code != 0 and "2.5000" in line and "1.5000" in line and "--force" in line
    assert registry.show(f"{NAME}@production")["version"] == "2"
    assert not any(k.startswith("promotion.") for k in registry.show(f"{NAME}/3")["tags"])
    # Inside the margin it passes the gate; here --force overrides it instead.
    code, out, _ = cli(capsys, "registry", "promote", NAME, "--version", "3", "--force")
    assert code == 0 and "forced past the gate" in out
    assert registry.show(f"{NAME}@production")["tags"]["promotion.production.forced"] == "true"

    # Rollback walks the history back: 3 -> 2 -> 1, then there is nothing before 1.
    code, out, _ = cli(capsys, "registry", "rollback", NAME, "--alias", "production")
    assert code == 0 and registry.show(f"{NAME}@production")["version"] == "2"
    code, out, _ = cli(capsys, "registry", "rollback", NAME)
    assert code == 0 and registry.show(f"{NAME}@production")["version"] == "1"
    code, _, err = cli(capsys, "registry", "rollback", NAME)
    assert code != 0 and "no previous holder" in one_error_line(err)
    assert registry.show(f"{NAME}@production")["version"] == "1"

    code, out, _ = cli(capsys, "registry", "show", f"{NAME}@production")
    assert code == 0 and f"models:/{NAME}/1" in out
    code, out, _ = cli(capsys, "registry", "list", NAME)
    assert code == 0 and len([line for line in out.splitlines() if line.startswith(NAME)]) == 3
    # A margin lets a slightly worse candidate through: 2.5 is within 2.0 + 0.6.
    code, _, _ = cli(capsys, "registry", "promote", NAME, "--version", "3", "--margin", "0.6")
    assert code == 0 and registry.show(f"{NAME}@production")["version"] == "3"
    code, _, _ = cli(capsys, "registry", "rollback", NAME)
    assert code == 0 and registry.show(f"{NAME}@production")["version"] == "1"


def test_load_by_alias_generates_audio(store, sources):
    registry.promote(NAME, "1", force=True)  # whatever the previous test left
    mg = MusicGen.from_pretrained(f"models:/{NAME}@production")
    expected = MusicGen.from_pretrained(str(sources["run_model"]))
    theirs = expected.lm.state_dict()
    for key, value in mg.lm.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    audio = mg.generate(["a bell"], duration=0.3, seed=0)
    assert audio.ndim == 3 and audio.shape[0] == 1 and audio.abs().sum() > 0
    by_version = MusicGen.from_pretrained(f"models:/{NAME}/2")
    assert by_version.generate_codes(["x"], duration=0.2, seed=0).shape[1] == 4


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["promote", NAME, "--version", "99"], "has no version 99"),
        (["promote", "no-such-model", "--version", "1"], "no registered model 'no-such-model'"),
        (["promote", NAME, "--version", "1", "--alias", "latest"], "not a usable alias"),
        (["rollback", NAME, "--alias", "staging"], "no alias 'staging'"),
        (["rollback", "no-such-model"], "no registered model"),
        (["show", f"{NAME}@nowhere"], "no alias 'nowhere'"),
        (["register", "--run", "0123456789abcdef", "--name", NAME], "cannot"),
        (
            ["register", "--checkpoint", "/no/such/dir", "--name", NAME],
            "not a music-gen checkpoint",
        ),
        (["register", "--model", "/no/such/dir", "--name", NAME], "not found"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(store, sources, capsys, argv, needle):
    before = versions()
    holder = registry.show(f"{NAME}@production")["version"] if before else None
    code, _, err = cli(capsys, "registry", *argv)
    assert code != 0 and needle in one_error_line(err)
    assert versions() == before
    if holder is not None:
        assert registry.show(f"{NAME}@production")["version"] == holder


def test_alias_without_history_cannot_roll_back(store, sources, capsys):
    name = "single-version"
    registry.register_source(name, model=str(sources["model"]))
    registry.promote(name, "1")
    code, _, err = cli(capsys, "registry", "rollback", name)
    assert code != 0 and "no previous holder" in one_error_line(err)
    assert registry.show(f"{name}@production")["version"] == "1"
