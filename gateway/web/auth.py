"""Who may see the status page: password hashing, sessions, CSRF tokens, login rate limiting.

Pure logic with an injectable clock, no aiohttp here, so every rule is tested
without a server:

* The password (``web.password``, read from a file or the environment) is
  hashed once at startup with scrypt and a random salt; the clear text is not
  kept. Checks use :func:`hmac.compare_digest`.
* A session is a random 256-bit id in an ``HttpOnly; SameSite=Strict`` cookie,
  kept in memory (a restart logs everyone out, which is what a technician
  expects after a power cycle). Idle sessions expire.
* Every session carries its own CSRF token; before login the token is a
  double-submit cookie. State-changing requests must echo it in a header.
* Failed logins are limited per client address: 5 per minute, then a lockout
  that doubles with each further burst (capped), so guessing a password over
  the LAN takes centuries rather than minutes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]

# scrypt cost: n=2**14, r=8 needs 16 MiB and ~50 ms on a Raspberry Pi 4; enough to make
# offline guessing slow, cheap enough to check a bearer token on every Prometheus scrape.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _DKLEN = 2**14, 8, 1, 32


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A salted scrypt hash of the status page password (the clear text is not kept)."""

    salt: bytes
    digest: bytes
    n: int = _SCRYPT_N
    r: int = _SCRYPT_R
    p: int = _SCRYPT_P

    def __repr__(self) -> str:  # never show even the hash in logs or tracebacks
        return "PasswordHash(scrypt)"


def hash_password(password: str, *, salt: bytes | None = None) -> PasswordHash:
    """Hash ``password`` with scrypt and a fresh random salt."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
                            maxmem=64 * 1024 * 1024, dklen=_DKLEN)
    return PasswordHash(salt, digest)


def verify_password(stored: PasswordHash, candidate: str) -> bool:
    """True when ``candidate`` is the password; constant time in the comparison."""
    digest = hashlib.scrypt(candidate.encode("utf-8"), salt=stored.salt, n=stored.n, r=stored.r, p=stored.p,
                            maxmem=64 * 1024 * 1024, dklen=len(stored.digest))
    return hmac.compare_digest(digest, stored.digest)


def tokens_match(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two tokens; a missing or empty one never matches."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def new_token() -> str:
    """A random URL-safe token of 256 bits."""
    return secrets.token_urlsafe(32)


@dataclass(slots=True)
class Session:
    """One logged-in browser."""

    sid: str
    csrf: str
    created: float
    last_seen: float


class SessionStore:
    """In-memory sessions with an idle timeout and a cap on how many exist.

    Args:
        idle_timeout: seconds without a request after which a session ends.
        max_sessions: the oldest session is dropped beyond this (bounded memory).
        clock: time source (monotonic seconds); tests inject their own.
    """

    def __init__(self, idle_timeout: float = 12 * 3600, max_sessions: int = 64,
                 clock: Clock = time.monotonic) -> None:
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self) -> Session:
        """Start a new session (after a successful login)."""
        now = self.clock()
        session = Session(new_token(), new_token(), now, now)
        self._sessions[session.sid] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def get(self, sid: str | None) -> Session | None:
        """The live session for ``sid`` (touching it), or None."""
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        now = self.clock()
        if now - session.last_seen > self.idle_timeout:
            del self._sessions[sid]
            return None
        session.last_seen = now
        self._sessions.move_to_end(sid)
        return session

    def drop(self, sid: str | None) -> None:
        """End a session (logout)."""
        if sid:
            self._sessions.pop(sid, None)

    def __len__(self) -> int:
        return len(self._sessions)


@dataclass(slots=True)
class _Client:
    failures: deque[float] = field(default_factory=deque)
    lockouts: int = 0
    locked_until: float = 0.0


class LoginLimiter:
    """Limits failed logins per client address, with a lockout that doubles.

    ``max_failures`` failures within ``window`` seconds lock the address out for
    ``window`` seconds; each further lockout doubles that, up to ``max_lockout``.
    A successful login resets the address. At most ``max_clients`` addresses are
    tracked (the least recently seen is forgotten first) so a flood of source
    addresses cannot exhaust memory.
    """

    def __init__(self, max_failures: int = 5, window: float = 60.0, max_lockout: float = 900.0,
                 max_clients: int = 4096, clock: Clock = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_lockout = max_lockout
        self.max_clients = max_clients
        self.clock = clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may try now."""
        state = self._clients.get(client)
        if state is None:
            return 0.0
        return max(0.0, state.locked_until - self.clock())

    def failure(self, client: str) -> float:
        """Record a failed login; returns the lockout now in force (0 if none)."""
        now = self.clock()
        state = self._clients.get(client)
        if state is None:
            state = self._clients[client] = _Client()
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        self._clients.move_to_end(client)
        while state.failures and now - state.failures[0] > self.window:
            state.failures.popleft()
        state.failures.append(now)
        if len(state.failures) >= self.max_failures:
            state.lockouts += 1
            state.failures.clear()
            state.locked_until = now + min(self.max_lockout, self.window * 2 ** (state.lockouts - 1))
        return max(0.0, state.locked_until - now)

    def success(self, client: str) -> None:
        """A successful login forgets the address's failures."""
        self._clients.pop(client, None)
