"""``music-gen serve`` as a user runs it: prints its URLs, serves, stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.integration.test_serve import audible_model, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_serve_command_prints_urls_serves_and_stops_on_ctrl_c(tmp_path):
    checkpoint = audible_model().save_pretrained(tmp_path / "ckpt")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "music_gen.cli", "serve", "--model", str(checkpoint)]
    command += ["--port", str(port), "serve.num_cpus=0.5", "serve.ingress_num_cpus=0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line.strip())
            if line.startswith("Ctrl-C"):
                break
        assert f"page: http://127.0.0.1:{port}/" in lines
        assert f"API docs: http://127.0.0.1:{port}/docs" in lines
        url = f"http://127.0.0.1:{port}"
        assert requests.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
        body = {"prompt": "cli", "duration": 0.5}
        assert requests.post(f"{url}/generate", json=body, timeout=120).status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
        assert "shutting down" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    time.sleep(0.5)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
