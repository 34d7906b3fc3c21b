"""The web page in a real headless browser (Debian's chromium, driven by playwright)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_serve import audible_model, start_app, stop_app

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def app_url(ray_cluster, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("page") / "ckpt"
    audible_model().save_pretrained(checkpoint)
    url = start_app(
        "page", model=str(checkpoint), num_cpus=0.5, ingress_num_cpus=0, heartbeat_s=0.5
    )
    yield url
    stop_app("page")


def test_page_generates_playable_audio(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{app_url}/")
            page.wait_for_function("!document.getElementById('model').textContent.includes('...')")
            assert page.text_content("#model").strip().endswith("ckpt")  # the model in use
            page.fill("#prompt", "a calm piano loop")
            page.fill("#duration", "1")
            page.click("#generate")
            page.wait_for_function(
                "document.getElementById('player').src.startsWith('blob:')", timeout=120_000
            )
            # The browser decodes it: metadata loads and the length is the one asked for.
            page.wait_for_function(
                "document.getElementById('player').readyState >= 1", timeout=60_000
            )
            duration = page.evaluate("document.getElementById('player').duration")
            assert duration == pytest.approx(1.0, abs=0.05)
            assert page.get_attribute("#download", "href").startswith("blob:")
            assert "Done" in page.text_content("#status")
        finally:
            browser.close()
