"""Visitors' sessions kept on the server, found again after a page reload by a key the browser keeps.

The browser stores only a random key (gr.BrowserState, in its localStorage); the session itself
(traces, R, the edit ledger) stays in this process, so a reload brings back the visitor's edits
and nothing else can read them. Sessions are dropped after `ttl_seconds` without use, and the
oldest beyond `max_sessions`; a server restart forgets them all (the page says so: export edits
to keep them).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from ui.session import SessionState

KEEP_HOURS = 24
KEEP_NOTE = (
    f"Your edits are kept on this server for this browser (a reload brings them back) for {KEEP_HOURS} hours "
    "without use, and until the server restarts. Export them (Edit tab) to keep a copy."
)


class SessionStore:
    """{browser key: SessionState}, bounded in count and age; thread-safe."""

    def __init__(self, max_sessions: int = 256, ttl_seconds: float = KEEP_HOURS * 3600.0,
                 on_drop: Callable[[SessionState], None] | None = None) -> None:
        self.max_sessions = max_sessions
        self.ttl_seconds = ttl_seconds
        self.on_drop = on_drop
        self._sessions: OrderedDict[str, tuple[float, SessionState]] = OrderedDict()
        self._lock = threading.Lock()

    def restore(self, key: str | None, default_spec: str) -> tuple[str, SessionState]:
        """The session the browser's `key` names, or a new one under a new key."""
        dropped: list[SessionState] = []
        with self._lock:
            now = time.monotonic()
            dropped += self._expire(now)
            found = self._sessions.pop(key, None) if isinstance(key, str) else None
            if found is None:
                key, session = secrets.token_urlsafe(24), SessionState(model_spec=default_spec)
            else:
                session = found[1]
            self._sessions[key] = (now, session)
            while len(self._sessions) > self.max_sessions:
                dropped.append(self._sessions.popitem(last=False)[1][1])
        self._dropped(dropped)
        return key, session

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self, now: float) -> list[SessionState]:
        old = [key for key, (used, _) in self._sessions.items() if now - used > self.ttl_seconds]
        return [self._sessions.pop(key)[1] for key in old]

    def _dropped(self, sessions: list[SessionState]) -> None:
        if self.on_drop is not None:
            for session in sessions:
                self.on_drop(session)
