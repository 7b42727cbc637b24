"""Visitors' sessions on the server: 24 hours from the last request, their temporary folders removed when they end."""

from __future__ import annotations

import gradio as gr
import pytest

from ui.app import restore_session
from ui.context import AppContext
from ui.models import ModelManager
from ui.runner import ModelRunner
from ui.sessions import KEEP_HOURS, KEEP_NOTE, MAX_SESSIONS, SessionStore

HOUR = 3600.0


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock) -> SessionStore:
    return SessionStore(clock=clock)  # the defaults the page's note describes


@pytest.fixture
def context(store) -> AppContext:
    """The page's context with `store`; no model is loaded (none of these requests runs one)."""
    return AppContext(manager=ModelManager(["embedded"]), runner=ModelRunner(name="test-sessions"), sessions=store)


def with_files(session):
    """The session's temporary folder, with a download in it."""
    (session.files_folder("trace") / "trace.html").write_text("x")
    return session.scratch


def test_the_page_says_what_the_store_does():
    assert SessionStore().ttl_seconds == KEEP_HOURS * HOUR and SessionStore().max_sessions == MAX_SESSIONS
    assert f"until {KEEP_HOURS} hours after your last action" in KEEP_NOTE and f"more than {MAX_SESSIONS} visitors" in KEEP_NOTE


def test_a_session_used_23_hours_ago_by_a_request_stays(context, store, clock):
    key, session = store.restore(None, "embedded")
    clock.advance(10 * HOUR)
    assert context.session_of(session) is session  # a request (any handler) 10 h after the page load
    clock.advance(23 * HOUR)  # 33 h after the page load, 23 h after the request
    assert store.restore(key, "embedded")[1] is session and not session.ended


def test_a_session_idle_24_hours_and_a_second_ends_with_its_files(context, store, clock):
    key, session = store.restore(None, "embedded")
    folder = with_files(session)
    clock.advance(KEEP_HOURS * HOUR + 1)
    context.session_of(None)  # any visitor's request sweeps the idle sessions
    assert session.ended and not folder.exists() and len(store) == 0
    with pytest.raises(gr.Error, match="Reload the page"):  # the page still holding it is told to reload
        context.session_of(session)
    fresh, new_key = restore_session(context, key, None)  # the reload: the browser comes back with the old key
    assert fresh is not session and new_key != key and not fresh.ledgers and store.restore(new_key, "embedded")[1] is fresh


def test_a_request_in_between_restarts_the_clock(context, store, clock):
    key, session = store.restore(None, "embedded")
    folder = with_files(session)
    clock.advance(20 * HOUR)
    context.session_of(session)  # a request
    clock.advance(20 * HOUR)  # 40 h after the page load, 20 h after the request
    context.session_of(None)  # another visitor's request sweeps the idle sessions
    assert not session.ended and folder.exists() and len(store) == 1
    clock.advance(4 * HOUR + 1)  # 24 h and a second after the request
    context.session_of(None)
    assert session.ended and not folder.exists() and store.restore(key, "embedded")[1] is not session


def test_the_least_recently_used_session_beyond_the_limit_ends_with_its_files(clock):
    store = SessionStore(max_sessions=2, clock=clock)
    first_key, first = store.restore(None, "embedded")
    clock.advance(1)
    second_key, second = store.restore(None, "embedded")
    folders = with_files(first), with_files(second)
    clock.advance(1)
    store.touch(first)  # a request: now the second is the least recently used
    clock.advance(1)
    store.restore(None, "embedded")  # a third visitor
    assert second.ended and not folders[1].exists()
    assert not first.ended and folders[0].exists() and store.restore(first_key, "embedded")[1] is first
    assert store.restore(second_key, "embedded")[1] is not second


def test_close_ends_every_session_and_removes_their_folders(store):
    sessions = [store.restore(None, "embedded")[1] for _ in range(3)]
    folders = [with_files(session) for session in sessions]
    store.close()
    assert len(store) == 0 and all(session.ended for session in sessions)
    assert not any(folder.exists() for folder in folders)


def test_a_session_the_store_does_not_hold_is_served_and_left_alone(context, store, clock):
    """API callers' sessions (no page load, no browser key) are not counted against the visitors' sessions."""
    session = context.session_of(None)
    clock.advance(10 * KEEP_HOURS * HOUR)
    assert context.session_of(session) is session and not session.ended and len(store) == 0
