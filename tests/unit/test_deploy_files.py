"""The cluster, container and Kubernetes files: valid for their tools, and naming only
things that exist (no container engine or cloud here, so this is what can be checked)."""

import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's console scripts


def _load(name: str):
    return yaml.safe_load((ROOT / name).read_text())


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_cluster_yaml_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load("cluster.yaml")
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert types["train_gpu"]["resources"]["GPU"] > 1  # multi-GPU training nodes
    assert types["serve_gpu"]["resources"]["GPU"] == 1 and types["serve_gpu"]["max_workers"] > 1
    assert "postgresql" in " ".join(config["head_setup_commands"]) or "MLFLOW_DB_URI" in " ".join(
        config["head_setup_commands"]
    )


def test_lock_pins_what_pyproject_allows():
    import ray
    import torch

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    assert pins["ray"] == ray.__version__ and pins["torch"] == torch.__version__.split("+")[0]
    for requirement in project["dependencies"]:
        name = re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower()
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert not re.search(r"==", requirement), f"{requirement}: pyproject holds ranges"


def test_dockerfile_copies_files_that_exist_and_runs_our_entry_point():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:(\S+)", text, re.M)
    assert base, "the image builds on Ray's own image"
    import ray

    assert base[1].startswith(f"{ray.__version__}-py311")
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        sources = [w for w in line.split() if not w.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert re.search(r'^ENTRYPOINT \["music-gen"\]', text, re.M)
    assert "-c constraints.txt" in text  # installs exactly what the lock pins
    assert re.search(r"^USER ray$", text, re.M)  # not root at run time
    health = re.search(r"curl -fsS http://127.0.0.1:8000(/\S+)", text)
    assert health and health[1] == "/healthz"


def test_compose_services_run_commands_that_exist():
    compose = _load("docker-compose.yaml")
    services = compose["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker", "serve"} <= set(services)
    for name, service in services.items():
        entry = service.get("entrypoint")
        if entry:
            assert (BIN / entry[0]).exists(), f"{name}: no {entry[0]} command in the venv"
        for word in service.get("command", []):
            if isinstance(word, str) and word.startswith("configs/"):
                assert (ROOT / word).is_file(), f"{name}: {word} missing"
    assert "postgresql://" in " ".join(services["mlflow"]["command"])


def test_kuberay_manifests_name_what_exists():
    import importlib

    job = _load("deploy/kuberay/rayjob-train.yaml")
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["rayVersion"] == _pins()["ray"]
    entry = job["spec"]["entrypoint"].split()
    assert entry[:2] == ["music-gen", "train"]
    config = entry[entry.index("--config") + 1]
    assert (ROOT / config).is_file()
    service = _load("deploy/kuberay/rayservice.yaml")
    assert service["kind"] == "RayService"
    apps = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    module, _, attr = apps[0]["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
