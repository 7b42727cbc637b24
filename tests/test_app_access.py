"""Who may use the app: a login is required off loopback and with --share; the real server asks for it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.app_harness import free_port
from ui import serve as app

ROOT = Path(__file__).resolve().parents[1]


def accounts_of(argv: list[str]):
    return app.access_accounts(app.parse_arguments(argv))


def refusal(argv: list[str], capsys) -> str:
    """The one `error:` line `app.py argv` stops with (exit status 2, before serving anything)."""
    with pytest.raises(SystemExit) as stopped:
        accounts_of(argv)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_auth_gives_one_account_and_loopback_needs_none():
    assert accounts_of([]) is None
    assert accounts_of(["--auth", "ada:s3cret"]) == [("ada", "s3cret")]
    assert accounts_of(["--auth", "ada:pass:word"]) == [("ada", "pass:word")]  # the first colon ends the user name


def test_auth_file_gives_its_accounts_and_adds_to_auth(tmp_path):
    accounts = tmp_path / "accounts.txt"
    accounts.write_text("ada:one\n\n  bob:two  \n")
    assert accounts_of(["--auth-file", str(accounts)]) == [("ada", "one"), ("bob", "two")]
    assert accounts_of(["--auth", "cy:three", "--auth-file", str(accounts)]) == [("cy", "three"), ("ada", "one"), ("bob", "two")]


def test_unreadable_empty_or_malformed_logins_are_refused(tmp_path, capsys):
    assert "cannot read --auth-file" in refusal(["--auth-file", str(tmp_path / "missing.txt")], capsys)
    assert "cannot read --auth-file" in refusal(["--auth-file", str(tmp_path)], capsys)  # a folder
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert "has no USER:PASSWORD line" in refusal(["--auth-file", str(empty)], capsys)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    assert "is not UTF-8 text" in refusal(["--auth-file", str(binary)], capsys)
    malformed = tmp_path / "malformed.txt"
    for text in ("ada:one\nbob\n", "ada:\n", ":one\n"):
        malformed.write_text(text)
        assert "must be USER:PASSWORD" in refusal(["--auth-file", str(malformed)], capsys)
    for login in ("ada", "ada:", ":one", ""):
        assert "must be USER:PASSWORD" in refusal(["--auth", login], capsys)


def test_a_non_loopback_host_needs_a_login_or_the_explicit_opt_out(capsys):
    line = refusal(["--host", "0.0.0.0"], capsys)
    assert "--host 0.0.0.0" in line and "--auth USER:PASSWORD" in line and "--auth-file" in line and "--insecure-no-auth" in line
    assert accounts_of(["--host", "0.0.0.0", "--auth", "ada:one"]) == [("ada", "one")]
    assert accounts_of(["--host", "0.0.0.0", "--insecure-no-auth"]) is None
    assert accounts_of(["--host", "localhost"]) is None


def test_share_needs_a_login_or_the_explicit_opt_out(capsys):
    line = refusal(["--share"], capsys)
    assert "--share" in line and "--auth USER:PASSWORD" in line and "--auth-file" in line and "--insecure-no-auth" in line
    assert accounts_of(["--share", "--auth", "ada:one"]) == [("ada", "one")]
    assert accounts_of(["--share", "--insecure-no-auth"]) is None


def test_the_share_command_without_a_login_stops_before_importing_gradio_or_torch():
    """`python app.py --share` as users run it: exit status 2, one error line, no heavy import (-X importtime lists them)."""
    finished = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "app.py"), "--share"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert finished.returncode == 2
    errors = [line for line in finished.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith("error: --share")
    assert "--auth USER:PASSWORD" in errors[0] and "--insecure-no-auth" in errors[0]
    imported = {line.rsplit("|", 1)[-1].strip() for line in finished.stderr.splitlines() if line.startswith("import time:")}
    assert "argparse" in imported and not imported & {"gradio", "torch", "transformers"}


def test_the_server_asks_for_the_login_it_was_given():
    """app.py's own start-up with --auth on loopback: the API is closed until the right password logs in."""
    from ui.models import ModelManager
    from ui.runner import ModelRunner

    arguments = app.parse_arguments(["--auth", "ada:s3cret", "--port", str(free_port())])
    manager = ModelManager(["embedded"])  # the page is served and logged into; no model is loaded for that
    demo, sessions = app.start_server(arguments, app.access_accounts(arguments), manager, ModelRunner(name="test-access"))
    url = demo.local_url.rstrip("/")
    try:
        with httpx.Client(base_url=url, timeout=60) as visitor:
            assert visitor.get("/gradio_api/info").status_code == 401  # nothing is served before logging in
            assert visitor.post("/login", data={"username": "ada", "password": "wrong"}).status_code == 400
            assert visitor.post("/login", data={"username": "eve", "password": "s3cret"}).status_code == 400
            assert visitor.get("/gradio_api/login_check").status_code == 401
            login = visitor.post("/login", data={"username": "ada", "password": "s3cret"})
            assert login.status_code == 200 and login.json() == {"success": True}
            assert visitor.get("/gradio_api/login_check").status_code == 200  # the cookie it set logs the visitor in
            assert visitor.get("/gradio_api/info").status_code == 200
    finally:
        demo.close()
        sessions.close()
