"""The service's edge: one input policy applied to every request before any route sees it.

Everything that reaches a route has passed these checks, so no input can make a route fail with
a 500 and every database stores the same values (issue 10):

1. **Size.** A body larger than ``max_request_bytes`` (``max_anonymous_request_bytes`` when the
   request carries no credentials at all, as a login does) is answered 413 from its
   ``Content-Length`` before a byte is read, or as soon as a streamed body passes the limit.
2. **Characters.** A NUL character or a lone UTF-16 surrogate anywhere in the path, the query
   string or the body is a 422 naming where it is. PostgreSQL cannot store NUL in text and no
   encoder can write a lone surrogate as UTF-8, so one such string would otherwise break every
   later export. JSON bodies are parsed a second time only when they contain a ``\\u`` escape
   (the only way either character can appear in valid JSON), which keeps the hot path free.
3. **Ids.** Integer path ids are bounded to PostgreSQL's ``integer`` (:data:`Id`); an id out of
   range, or not a number, names nothing and is answered 404, on SQLite and PostgreSQL alike.
4. **Errors.** Error bodies name the field and are clipped: they never echo unbounded input.
5. **Headers.** The security headers go on every response, the server's own 500 included,
   because this middleware wraps the whole application (see :class:`FeedbackApp`).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

#: Largest id a path may name: PostgreSQL's ``integer`` (SQLite would take 2**63 - 1; one bound for both).
MAX_ID = 2**31 - 1
#: An integer path id; out of range (or not an integer) is a 404, see :func:`validation_error`.
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
#: Longest error message sent back; longer ones are cut (an error must not echo a megabyte of input).
MAX_DETAIL = 500

SECURITY_HEADERS = [
    # Our own script file only: no inline script can run, whatever ends up in a page.
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clip(text: str, n: int = 60) -> str:
    """``text`` cut to ``n`` characters (with an ellipsis), for quoting input in a message."""
    return text if len(text) <= n else text[: n - 1] + "…"


def bad_character(value: str) -> str | None:
    """What is wrong with a string the databases cannot store faithfully, or None."""
    if "\x00" in value:
        return "NUL characters are not accepted"
    if _LONE_SURROGATE.search(value):
        return "unpaired UTF-16 surrogates are not valid text"
    return None


def _find_bad(value: Any, where: str) -> str | None:
    """The first ``field: problem`` in a parsed JSON document, or None (iterative: no recursion limit)."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, str):
            problem = bad_character(v)
            if problem:
                return f"{at}: {problem}"
        elif isinstance(v, dict):
            for k, x in v.items():
                problem = bad_character(k)
                if problem:
                    return f"{at}: a key has {problem}"
                stack.append((x, f"{at}.{clip(k, 40)}"))
        elif isinstance(v, list):
            stack.extend((x, f"{at}[{i}]") for i, x in enumerate(v))
    return None


def body_problem(body: bytes, content_type: str) -> str | None:
    """``field: problem`` for a body holding NUL or lone surrogates, else None (malformed JSON is the app's 422)."""
    if b"\x00" in body:
        return "body: NUL characters are not accepted"
    if content_type.startswith("application/x-www-form-urlencoded") and b"%00" in body:
        return "body: NUL characters are not accepted"
    if b"\\u" in body and "json" in content_type:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return None
        return _find_bad(doc, "body")
    return None


class Edge:
    """Plain ASGI middleware around the whole app: the input policy above plus the security headers."""

    def __init__(self, app: Any, max_body: int, max_anonymous_body: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_anonymous_body = max_anonymous_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        problem = None
        if "\x00" in scope["path"]:
            problem = "path: NUL characters are not accepted"
        elif b"%00" in scope.get("query_string", b""):
            problem = "query: NUL characters are not accepted"
        if problem:
            await _answer(send_with_headers, 422, problem)
            return
        if scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send_with_headers)
            return

        headers = dict(scope["headers"])  # the last value of a repeated header wins, as in Starlette
        anonymous = b"authorization" not in headers and b"alignloop_session=" not in headers.get(b"cookie", b"")
        limit = self.max_anonymous_body if anonymous else self.max_body
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _answer(send_with_headers, 413, _too_large(limit, anonymous))
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await _answer(send_with_headers, 413, _too_large(limit, anonymous))
                return
            more = message.get("more_body", False)
        body = b"".join(chunks)
        problem = body_problem(body, headers.get(b"content-type", b"").decode("latin-1").lower())
        if problem:
            await _answer(send_with_headers, 422, problem)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)


def _too_large(limit: int, anonymous: bool) -> str:
    who = " without credentials" if anonymous else ""
    return f"body: a request{who} may carry at most {limit} bytes; send less (split uploads into smaller requests)"


async def _answer(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class FeedbackApp(FastAPI):
    """FastAPI with :class:`Edge` outside Starlette's error middleware, so a 500 gets the headers too."""

    edge_limits: tuple[int, int] = (16 * 2**20, 64 * 2**10)

    def build_middleware_stack(self) -> Any:
        return Edge(super().build_middleware_stack(), *self.edge_limits)


def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    """422 naming each bad field (clipped, never the input itself); a bad path id is a 404."""
    errors = err.errors()
    path_errors = [e for e in errors if e.get("loc", ())[:1] == ("path",)]
    if path_errors:
        name = clip(str(path_errors[0]["loc"][-1]), 40)
        value = clip(str(request.path_params.get(name, "")), 40)
        return JSONResponse({"detail": f"{name}: nothing has the id {value!r}"}, status_code=404)
    parts = []
    for e in errors:
        loc = ".".join(clip(str(x), 40) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {clip(str(e.get('msg', 'invalid')), 120)}")
    return JSONResponse({"detail": clip("; ".join(parts), MAX_DETAIL)}, status_code=422)


def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
    """Every HTTPException as ``{"detail": ...}`` with its headers (Retry-After), the detail clipped."""
    detail = clip(err.detail, MAX_DETAIL) if isinstance(err.detail, str) else err.detail
    return JSONResponse({"detail": detail}, status_code=err.status_code, headers=getattr(err, "headers", None))
