"""Visitors' sessions kept on the server, found again after a page reload by a key the browser keeps.

The browser stores only a random key (gr.BrowserState, in its localStorage); the session itself
(traces, R, the edit ledger) stays in this process, so a reload brings back the visitor's edits
and nothing else can read them. A session ends `ttl_seconds` after its last request (a page load
or any event of the page), or when it is the least recently used beyond `max_sessions`, or when
the server stops; an ended session's temporary files are removed, its key finds nothing any more,
and its page asks for a reload (which starts a new session).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from ui.session import SessionState

KEEP_HOURS = 24
MAX_SESSIONS = 256
KEEP_NOTE = (
    f"Your edits are kept on this server for this browser (a reload brings them back) until {KEEP_HOURS} hours after "
    f"your last action on the page, until the server stops, or, with more than {MAX_SESSIONS} visitors, until yours "
    "is the least recently used. Export them (Edit tab) to keep a copy."
)
SESSION_ENDED = (
    f"This page's session has ended (no action for {KEEP_HOURS} hours, or the server needed room for other "
    "visitors), and its edits with it. Reload the page to start a new session."
)


class SessionStore:
    """{browser key: SessionState} in order of last use, bounded in count and idle time; thread-safe."""

    def __init__(self, max_sessions: int = MAX_SESSIONS, ttl_seconds: float = KEEP_HOURS * 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = max_sessions
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._sessions: OrderedDict[str, tuple[float, SessionState]] = OrderedDict()  # least recently used first
        self._keys: dict[int, str] = {}  # session number -> its key
        self._lock = threading.Lock()

    def restore(self, key: str | None, default_spec: str) -> tuple[str, SessionState]:
        """The live session the browser's `key` names, or a new one under a new key (a page load)."""
        with self._lock:
            now = self.clock()
            ended = self._expire(now)
            found = self._sessions.get(key) if isinstance(key, str) else None
            if found is None:
                key, session = secrets.token_urlsafe(24), SessionState(model_spec=default_spec)
            else:
                session = found[1]
            self._use(key, session, now)
            while len(self._sessions) > self.max_sessions:
                ended.append(self._pop(next(iter(self._sessions))))
        self._end(ended)
        return key, session

    def touch(self, session: SessionState) -> None:
        """A request of `session`: its time left starts again (a session this store does not hold is left alone)."""
        with self._lock:
            now = self.clock()
            ended = self._expire(now)
            key = self._keys.get(session.number)
            if key is not None:
                self._use(key, session, now)
        self._end(ended)

    def close(self) -> None:
        """The server stops: end every session (their temporary files are removed)."""
        with self._lock:
            ended = [self._pop(key) for key in list(self._sessions)]
        self._end(ended)

    def __len__(self) -> int:
        return len(self._sessions)

    def _use(self, key: str, session: SessionState, now: float) -> None:
        self._sessions[key] = (now, session)
        self._sessions.move_to_end(key)
        self._keys[session.number] = key

    def _pop(self, key: str) -> SessionState:
        session = self._sessions.pop(key)[1]
        del self._keys[session.number]
        return session

    def _expire(self, now: float) -> list[SessionState]:
        """Pop the sessions idle longer than the TTL (the oldest come first, so the scan stops at the first live one)."""
        ended = []
        while self._sessions:
            key, (used, _) = next(iter(self._sessions.items()))
            if now - used <= self.ttl_seconds:
                break
            ended.append(self._pop(key))
        return ended

    @staticmethod
    def _end(sessions: list[SessionState]) -> None:
        for session in sessions:
            session.end()
