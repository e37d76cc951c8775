"""Bounds on HTTP requests, enforced before FastAPI reads or parses anything.

How this works. FastAPI reads and parses a request body *before* it resolves the route's
dependencies, so the API-key check of :func:`collector.api.auth.require_role` comes after a
200 MB body has been buffered and decoded. :class:`RequestGuard` is a plain ASGI
middleware in front of the whole app that:

1. refuses a request whose ``Content-Length`` is over ``max_body_bytes`` with 413 before
   reading a byte of it;
2. refuses a request that may carry a body (any method but GET/HEAD/OPTIONS, or any
   request announcing one) and has no valid credentials with 401, before reading it
   (``is_authenticated`` looks at the headers only; paths in ``open_paths``, such as a
   login form, are exempt from this step but not from the size limit);
3. counts the bytes of the body while the app reads it and answers 413 once they exceed
   the limit (a chunked body, or a ``Content-Length`` that lied), without buffering more;
   whatever the app tries to send after that is dropped.

Nothing here parses a body: an unauthenticated or oversized request costs one small
response.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

__all__ = ["RequestGuard"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _BodyTooLargeError(Exception):
    """Internal: the streamed body passed the limit."""


class RequestGuard:
    """ASGI middleware: body size limit (413) and "no credentials, no body" (401).

    Args:
        app: the wrapped ASGI application.
        max_body_bytes: largest request body accepted.
        is_authenticated: ``is_authenticated(headers)`` with the raw header pairs; True
            when the request carries credentials the app will accept.
        open_paths: paths whose body may be read without credentials (still size-limited).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        is_authenticated: Callable[[list[tuple[bytes, bytes]]], bool],
        open_paths: Collection[str] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.is_authenticated = is_authenticated
        self.open_paths = frozenset(open_paths)
        self.refused: dict[str, int] = {"too_large": 0, "unauthenticated_body": 0}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = list(scope.get("headers", []))
        length = _content_length(headers)
        if length is not None and length > self.max_body_bytes:
            self.refused["too_large"] += 1
            await _respond(send, 413, f"request body of {length} bytes is over the {self.max_body_bytes}-byte limit")
            return
        may_have_body = scope.get("method", "GET") not in _BODYLESS_METHODS or bool(length) or _chunked(headers)
        if may_have_body and scope.get("path") not in self.open_paths and not self.is_authenticated(headers):
            self.refused["unauthenticated_body"] += 1
            await _respond(send, 401, "missing or unknown API key", {"www-authenticate": "Bearer"})
            return

        seen = 0
        started = False
        answered = False

        async def counted_receive() -> Message:
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    # Answer now: the app may turn the error below into its own 400, which
                    # tracked_send then drops.
                    self.refused["too_large"] += 1
                    if not started and not answered:
                        answered = True
                        await _respond(send, 413, f"request body is over the {self.max_body_bytes}-byte limit")
                    raise _BodyTooLargeError
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(_BodyTooLargeError):  # answered in counted_receive
            await self.app(scope, counted_receive, tracked_send)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _chunked(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"transfer-encoding" and b"chunked" in value.lower() for name, value in headers)


async def _respond(send: Send, status: int, detail: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
