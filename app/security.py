"""Who may do what, and the limits enforced before any work (issue 33).

- Staff keys (`StaffKeys`): from `PETMATCH_API_KEYS` (comma-separated) and/or `--api-keys-file` (one key, or
  `sha256:<hex>` of a key, per line; `#` comments). Keys are kept only as SHA-256 digests and compared with
  `secrets.compare_digest`; the audit log names a key by the first 8 hex digits of its digest, never the key.
  No key configured: the app is a public demo (visitors' registrations stay in their browser session).
- Per-client rate limit (`RateLimit`, ASGI middleware): a token bucket per client address for the requests
  that start work (REST POST/PATCH/DELETE, Gradio's queue joins and direct calls, the staff login); 429 with
  `Retry-After`. Requests with a valid staff key are not limited. Behind a proxy, start uvicorn with
  `FORWARDED_ALLOW_IPS=<proxy>` so the client address is the real one (uvicorn's proxy headers).
- One bounded queue for model work (`ModelWork`): the REST endpoints and the UI share `slots` workers; at most
  `max_waiting` more wait, beyond that the caller is told to retry (503 / a UI message).
- `redact_paths`: messages shown to clients name files by their base name, never a path on the server.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

MIN_KEY_LENGTH = 16
_SHA256 = re.compile(r"(?:sha256:)?([0-9a-f]{64})")


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class StaffKeys:
    """The staff's API keys, as SHA-256 digests. `who(key)` -> `"key:<8 hex>"` for a valid key, else None."""

    def __init__(self, keys: Iterable[str] = (), digests: Iterable[str] = ()):
        self._digests = []
        for key in keys:
            key = key.strip()
            if not key:
                continue
            if len(key) < MIN_KEY_LENGTH:
                raise ValueError(
                    f"a staff key has {len(key)} characters; use at least {MIN_KEY_LENGTH} (e.g. "
                    "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
            self._digests.append(_digest(key))
        self._digests += [d.lower() for d in digests]

    @classmethod
    def load(cls, env_value: str | None = None, keys_file: str | os.PathLike | None = None) -> StaffKeys:
        """Keys from a comma-separated string and a file of keys or `sha256:<hex>` digests, one per line."""
        keys = [k for k in (env_value or "").split(",") if k.strip()]
        digests = []
        if keys_file:
            for line in Path(keys_file).read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                match = _SHA256.fullmatch(line.lower()) if line.lower().startswith("sha256:") else None
                if match:
                    digests.append(match.group(1))
                else:
                    keys.append(line)
        return cls(keys, digests)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def who(self, key: str | None) -> str | None:
        if not key or not self._digests:
            return None
        digest = _digest(key)
        found = None
        for known in self._digests:  # every digest compared: the time taken does not say which one matched
            if secrets.compare_digest(digest, known):
                found = known
        return f"key:{found[:8]}" if found else None

    def check_login(self, username: str, password: str) -> bool:
        """Gradio's `auth=` for the staff page: any user name, a staff key as the password."""
        return self.who(password) is not None


def bearer_key(headers: Headers) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, key = value.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


# --------------------------------------------------------------------------------------------------
# Rate limit
# --------------------------------------------------------------------------------------------------
def is_work_request(method: str, path: str) -> bool:
    """Requests that start model work or try a key: REST writes and model calls, Gradio queue joins, direct
    calls and the staff login. Page loads, file downloads, uploads (bounded by the body limit) and GETs are free."""
    if method not in ("POST", "PATCH", "DELETE", "PUT"):
        return False
    if path.startswith("/api/"):
        return True
    path = path.removeprefix("/staff")
    return path.startswith(("/gradio_api/queue/join", "/gradio_api/call/", "/gradio_api/run/", "/login"))


class TokenBuckets:
    """A token bucket per client: `per_minute` tokens a minute, at most `burst` saved up."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = 10_000):
        self.rate = per_minute / 60.0
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str, now: float | None = None) -> float:
        """Take one token -> 0 when allowed, else the seconds until a token is there."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:  # the least recently seen clients are forgotten
                self._buckets.popitem(last=False)
            return wait


class RateLimit:
    """ASGI middleware: 429 + Retry-After when a client starts work faster than its bucket allows."""

    def __init__(self, app: ASGIApp, buckets: TokenBuckets | None, staff: StaffKeys):
        self.app = app
        self.buckets = buckets
        self.staff = staff

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.buckets is None or scope["type"] != "http" or not is_work_request(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.staff.who(bearer_key(headers)) is not None:
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = self.buckets.take(client)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            response = JSONResponse(
                {
                    "detail": f"Too many requests from this address: at most {self.buckets.rate * 60:g} a minute "
                    f"(bursts of {self.buckets.burst}). Retry in {retry} s."
                },
                status_code=429,
                headers={"Retry-After": str(retry)},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class JsonTooLarge:
    """ASGI middleware outside Starlette's body limit: its 413 (plain `Content Too Large`, sent before any handler
    when the declared Content-Length is over the limit) becomes JSON `{"detail": ...}` naming the limit on the REST
    API (`limit_for(path)` in bytes); the UI's routes keep the plain text."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        held: dict | None = None

        async def send_json(message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] == 413:
                if dict(message.get("headers", [])).get(b"content-type", b"").startswith(b"text/plain"):
                    held = message
                    return
            if held is not None and message["type"] == "http.response.body":
                limit = self.limit_for(scope["path"]) / 2**20
                body = json.dumps(
                    {"detail": f"The request is larger than this endpoint accepts ({limit:g} MB): send fewer or smaller photos."}
                ).encode()
                headers = [(k, v) for k, v in held["headers"] if k not in (b"content-type", b"content-length")]
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({**held, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                held = None
                return
            await send(message)

        await self.app(scope, receive, send_json)


# --------------------------------------------------------------------------------------------------
# One bounded queue for model work
# --------------------------------------------------------------------------------------------------
class Busy(RuntimeError):
    """More model work is waiting than the queue holds: retry later."""


class ModelWork:
    """`slots` model calls at once, for the REST API and the UI together; at most `max_waiting` more wait."""

    def __init__(self, slots: int, max_waiting: int):
        self.slots = slots
        self.max_waiting = max_waiting
        self._semaphore = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = 0

    def run(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        with self._lock:
            if self.waiting >= self.max_waiting:
                raise Busy(
                    f"The server is busy ({self.slots} requests running, {self.waiting} waiting): try again in a few seconds."
                )
            self.waiting += 1
        try:
            self._semaphore.acquire()
        finally:
            with self._lock:
                self.waiting -= 1
        try:
            with self._lock:
                self.running += 1
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1
            self._semaphore.release()


# --------------------------------------------------------------------------------------------------
# No server paths in messages
# --------------------------------------------------------------------------------------------------
_PATH = re.compile(r"(?<![\w.:/])(?:[A-Za-z]:)?(?:[/\\][^\s'\"/\\<>|]+)+[/\\]([^\s'\"/\\<>|]*)")


def redact_paths(message: str, known: dict[str, str] | None = None) -> str:
    """`message` with every absolute path cut to its last part (`/tmp/gradio/ab12/scan.jpg` -> `scan.jpg`);
    `known` maps paths to the names a user gave them (uploads), replaced first."""
    for path, name in (known or {}).items():
        message = message.replace(path, name)
    return _PATH.sub(lambda m: m.group(1) or "...", message)
