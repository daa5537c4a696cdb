"""Who is signed in to the console, and the CSRF token of each sign-in.

Sans-IO (a clock is injected, no cookies or requests here): the routes hand in the
cookie value and get back a :class:`ConsoleSession` or None. A sign-in is checked
against the node's API key pair, kept only on the server (the browser holds a random
session id, never the secret), and lives ``IDLE_LIFETIME`` since its last use, at most
``MAX_LIFETIME`` in all. Sessions are held in memory, at most ``MAX_SESSIONS``
(the oldest goes first): a restart of the node signs everyone out. An address with
``MAX_FAILURES`` wrong sign-ins in ``FAILURE_WINDOW`` waits until the oldest of them
leaves the window (the secret is >= 32 characters; this keeps guessing slow and the
logs short).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

IDLE_LIFETIME = 30 * 60.0
MAX_LIFETIME = 8 * 3600.0
MAX_SESSIONS = 1000
# wrong sign-ins: at most MAX_FAILURES per client address in FAILURE_WINDOW seconds,
# remembered for at most MAX_CLIENTS addresses (the oldest forgotten first)
MAX_FAILURES = 10
FAILURE_WINDOW = 10 * 60.0
MAX_CLIENTS = 10_000


@dataclass
class ConsoleSession:
    session_id: str
    csrf_token: str
    signed_in_at: float
    last_used: float


class ConsoleSessions:
    """The signed-in browsers of this node (see the module docstring)."""

    def __init__(self, api_key: str, api_secret: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._key = api_key
        self._secret = api_secret
        self._clock = clock
        self._live: OrderedDict[str, ConsoleSession] = OrderedDict()
        self._failures: OrderedDict[str, list[float]] = OrderedDict()  # by client

    def credentials_match(self, api_key: str, api_secret: str) -> bool:
        """Both compared in constant time, so a wrong guess says nothing of the right one."""
        key_ok = same_token(api_key, self._key)
        secret_ok = same_token(api_secret, self._secret)
        return key_ok and secret_ok

    def sign_in(self, api_key: str, api_secret: str, client: str = ""
                ) -> ConsoleSession | None:
        """A new session for the right key pair; None otherwise (a failure counted
        against `client`, the address it came from)."""
        if not self.credentials_match(api_key, api_secret):
            self._failed(client)
            return None
        self._failures.pop(client, None)
        return self.open()

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try to sign in again; 0 when it may now."""
        recent = self._recent_failures(client)
        if len(recent) < MAX_FAILURES:
            return 0.0
        return max(0.0, recent[0] + FAILURE_WINDOW - self._clock())

    def _recent_failures(self, client: str) -> list[float]:
        now = self._clock()
        recent = [t for t in self._failures.get(client, ()) if now - t < FAILURE_WINDOW]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        return recent

    def _failed(self, client: str) -> None:
        recent = self._recent_failures(client)[-(MAX_FAILURES - 1):]
        self._failures[client] = [*recent, self._clock()]
        self._failures.move_to_end(client)
        while len(self._failures) > MAX_CLIENTS:
            self._failures.popitem(last=False)

    def open(self) -> ConsoleSession:
        """A new session, unchecked (development mode opens one for every browser)."""
        now = self._clock()
        session = ConsoleSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                                 now, now)
        self._live[session.session_id] = session
        while len(self._live) > MAX_SESSIONS:
            self._live.popitem(last=False)
        return session

    def get(self, session_id: str) -> ConsoleSession | None:
        """The live session of this cookie value, its idle time restarted; None when
        unknown or expired (an expired one is forgotten)."""
        session = self._live.get(session_id) if session_id else None
        if session is None:
            return None
        now = self._clock()
        if now - session.last_used > IDLE_LIFETIME or now - session.signed_in_at > MAX_LIFETIME:
            del self._live[session_id]
            return None
        session.last_used = now
        self._live.move_to_end(session_id)
        return session

    def sign_out(self, session_id: str) -> None:
        self._live.pop(session_id, None)

    @staticmethod
    def csrf_ok(session: ConsoleSession, token: str) -> bool:
        return same_token(token, session.csrf_token)


def same_token(given: str, expected: str) -> bool:
    """A non-empty `given` equal to `expected`, compared in constant time as bytes
    (hmac.compare_digest raises on str that is not ASCII)."""
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())
