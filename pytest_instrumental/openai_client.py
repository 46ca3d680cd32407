"""What the OpenAI backend and the OpenAI judge share: the client, set up once the same way, the
chat messages they send, and base URLs shown without their credentials.

Credentials in a base URL (``http://user:password@host/v1``) are sent by the HTTP client as Basic
authentication, in place of the API key: that is how a proxy that wants them gets them. They are
never stored or printed: ``display_url`` drops them, and ``redact`` masks any echo of them. A
query string (``?api_key=...``) is a credential too, treated alike."""

from __future__ import annotations

import base64
import math
import os
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit, urlunsplit

from pytest_instrumental.text import redact, register_url_credentials


def open_client(base_url: str | None, timeout_s: float, max_retries: int) -> Any:
    """An ``openai.OpenAI`` client. It retries 408, 409, 429 (honouring Retry-After), 5xx,
    connection errors and timeouts with exponential backoff and jitter, ``max_retries`` times.
    ``timeout_s`` bounds each attempt's answer as a whole, however slowly a server drips it (the
    library's own timeout bounds each read), and ``attempts`` tells how many requests a call
    really sent. The key comes from the environment and stays in the client; local servers accept
    any key, but the client library insists on a non-empty one. A query string in the base URL
    (``?api-version=...``, ``?api_key=...``) is sent with every request, as its own query."""
    from openai import DefaultHttpxClient, OpenAI

    register_credentials(base_url)
    query: dict[str, str] = {}
    if base_url is not None:
        parts = urlsplit(base_url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        base_url = urlunsplit(parts._replace(query=""))  # the client appends paths to what is left
    return OpenAI(
        base_url=base_url,
        default_query=query or None,
        api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY",
        timeout=timeout_s,
        max_retries=max_retries,
        http_client=DefaultHttpxClient(transport=_transport(timeout_s)),
    )


_SENT = threading.local()  # requests sent by this thread since ``attempts`` last reset


def attempts(reset: bool = False) -> int:
    """How many HTTP requests this thread's calls sent since the last reset (a call and its retries)."""
    sent = int(getattr(_SENT, "count", 0))
    if reset:
        _SENT.count = 0
    return sent


def _transport(timeout_s: float) -> Any:
    """httpx's transport, counting the requests sent and bounding each attempt as a whole by
    ``timeout_s`` from the moment it starts: the connection, the headers and the body, however
    slowly a server drips them (every network read and write gets what is left of the time)."""
    httpx, core = _http_library(), _core_library()

    def left(timeout: float | None, timed_out: type[Exception] = core.ReadTimeout) -> float:
        """What is left of this attempt's time (at most ``timeout``); ``timed_out`` when none is."""
        remaining = getattr(_SENT, "deadline", math.inf) - time.monotonic()
        if remaining <= 0:
            raise timed_out(f"the answer took longer than {timeout_s:g} s")
        return remaining if timeout is None else min(timeout, remaining)

    class Stream(core.NetworkStream):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            data: bytes = self._inner.read(max_bytes, left(timeout))
            return data

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self._inner.write(buffer, left(timeout))

        def close(self) -> None:
            self._inner.close()

        def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
            return Stream(self._inner.start_tls(ssl_context, server_hostname, left(timeout)))

        def get_extra_info(self, info: str) -> Any:
            return self._inner.get_extra_info(info)

    class Network(core.NetworkBackend):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def connect_tcp(self, host: str, port: int, timeout: float | None = None, **options: Any) -> Any:
            return Stream(self._inner.connect_tcp(host, port, left(timeout), **options))

        def connect_unix_socket(self, path: str, timeout: float | None = None, **options: Any) -> Any:
            return Stream(self._inner.connect_unix_socket(path, left(timeout), **options))

        def sleep(self, seconds: float) -> None:
            self._inner.sleep(seconds)

    class Body(httpx.SyncByteStream):  # type: ignore[misc,name-defined]
        def __init__(self, stream: Any) -> None:
            self._stream = stream

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self._stream:
                left(None, httpx.ReadTimeout)  # raised here, above the network layer: httpx's own error
                yield chunk

        def close(self) -> None:
            self._stream.close()

    class Bounded(httpx.HTTPTransport):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            pool = getattr(self, "_pool", None)  # the connection pool's network: every read and write
            if pool is not None and hasattr(pool, "_network_backend"):
                pool._network_backend = Network(pool._network_backend)

        def handle_request(self, request: Any) -> Any:
            _SENT.count = getattr(_SENT, "count", 0) + 1
            _SENT.deadline = time.monotonic() + timeout_s
            response = super().handle_request(request)
            response.stream = Body(response.stream)
            return response

    return Bounded()


def _http_library() -> Any:
    """The HTTP library the installed openai client is built on (httpx2 in recent releases)."""
    return _first_module("httpx2", "httpx")


def _core_library() -> Any:
    """Its connection layer (httpcore2, or httpcore)."""
    return _first_module("httpcore2", "httpcore")


def _first_module(*names: str) -> Any:
    import importlib

    for name in names[:-1]:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return importlib.import_module(names[-1])


class MalformedReply(Exception):
    """A reply with a success status that does not hold what the API returns (no ``choices``)."""


def preflight_failure(exc: Exception, where: str) -> str | None:
    """What a failed preflight call to ``where`` says (after the option naming the model or judge),
    shared by the models' servers and the judge's; None for an exception that is not the API's."""
    import openai

    if isinstance(exc, openai.AuthenticationError):
        return f"{where} rejected the API key ({short(exc.message)})"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach {where} ({short(str(exc.__cause__ or exc))})"
    if isinstance(exc, openai.APIStatusError):
        hint = " (is the base URL right? it usually ends in /v1)" if exc.status_code == 404 else ""
        return f"{where} answered HTTP {exc.status_code}{hint} ({short(exc.message)})"
    if isinstance(exc, MalformedReply):
        return (
            f"{where} answered without a reply the API defines ({short(str(exc))}); is it an OpenAI-compatible server?"
        )
    return None


def short(text: str, limit: int = 200) -> str:
    """Server text for a one-line message: redacted, on one line, cut at ``limit``."""
    text = " ".join(redact(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def register_credentials(url: str | None) -> None:
    """The URL's credentials are secrets from now on (text.py), in every form that is sent or can
    be echoed: its user and password as written, percent-decoded, and the Basic authentication
    header the HTTP client makes of them (base64 of ``user:password``); and its query string (an
    ``?api_key=...``), whole and each value, as written and decoded."""
    if not url:
        return
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        for credential in (parts.username, parts.password, user, password):
            register_url_credentials(credential or "")
        register_url_credentials(base64.b64encode(f"{user}:{password}".encode()).decode("ascii"))
    if parts.query:
        register_url_credentials(parts.query)
        for raw in parts.query.split("&"):
            value = raw.partition("=")[2]
            register_url_credentials(value)
            register_url_credentials(unquote_plus(value))


def check_base_url(url: str) -> str:
    """A base URL as given, if it can be one: http or https, a host, no whitespace or control
    characters (a CR/LF would otherwise reach the HTTP client and break the request). Raises
    ValueError saying why, without the credentials."""
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise ValueError("the URL holds whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{display_url(url)!r} is not an http:// or https:// URL with a host")
    return url


def display_url(url: str) -> str:
    """The URL without its credentials (``user:password@``) and with its query string (which can
    hold a key: ``?api_key=...``) replaced by ``?<redacted>``, fit for messages and results."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None and not parts.query:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc, query="<redacted>" if parts.query else ""))
