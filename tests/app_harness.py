"""The real Locus app for tests: one server per test session on a free loopback port, and Chromium.

Imported by tests/test_app*.py and tests/test_browser*.py. The server uses the session's
`embedded` model (one model in memory), the real page builder and the real runner thread.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import threading
from dataclasses import dataclass
from typing import Any

import pytest

# Set before gradio is imported anywhere (conftest.py sets the same defaults).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking"]


@dataclass
class RunningApp:
    url: str
    demo: Any
    manager: Any
    runner: Any

    def wait_idle(self, timeout: float = 300) -> None:
        assert self.runner.wait_idle(timeout), "the app's model runner did not finish its jobs"


_app: RunningApp | None = None
_app_lock = threading.Lock()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(loaded: Any) -> RunningApp:
    """The shared app server (started on first use, closed when the test process exits)."""
    global _app
    with _app_lock:
        if _app is None:
            from ui.app import build_app, launch_options
            from ui.models import ModelManager
            from ui.runner import ModelRunner
            from ui.sessions import SessionStore

            manager = ModelManager(["embedded"], preloaded=loaded)
            runner = ModelRunner()
            sessions = SessionStore()
            demo = build_app(manager, runner, sessions=sessions)
            demo.launch(
                prevent_thread_lock=True,
                server_name="127.0.0.1",
                server_port=free_port(),
                share=False,
                quiet=True,
                **launch_options(),
            )
            _app = RunningApp(url=demo.local_url.rstrip("/"), demo=demo, manager=manager, runner=runner)
            atexit.register(sessions.close)  # (atexit runs these last first: the server stops, then the sessions end)
            atexit.register(demo.close)
        return _app


@pytest.fixture(scope="session")
def app(embedded) -> RunningApp:
    return start_app(embedded)


@pytest.fixture(autouse=True)
def app_idle_after_test(request):
    """Before the model-is-clean check of conftest.py runs, let the app finish any queued job."""
    yield
    if _app is not None:
        _app.wait_idle()


def client_for(app: RunningApp):
    """A new gradio_client session (its own gr.State, like a new visitor)."""
    from gradio_client import Client

    return Client(app.url, verbose=False, analytics_enabled=False)


_browser: Any = None


def shared_browser() -> Any:
    """One Chromium for the whole test process (every browser test module uses it; closed when the process exits)."""
    global _browser
    if _browser is None:
        from playwright.sync_api import sync_playwright

        playwright = sync_playwright().start()
        _browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)

        def close() -> None:
            _browser.close()
            playwright.stop()

        atexit.register(close)
    return _browser


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium driven by Playwright (never `playwright install`), shared by every browser test module."""
    if not os.path.exists(CHROMIUM) or shutil.which("chromium") is None:
        pytest.fail(
            "Chromium is missing: the browser tests need /usr/bin/chromium. `make test` installs it "
            "(apt-get install chromium); see ../shared/BROWSER_TESTS.md."
        )
    return shared_browser()


@pytest.fixture
def page(chromium, app):
    """A fresh browser context (a new visitor) on the app's page."""
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    context = chromium.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(app.url)
    yield page
    context.close()
