"""What the OpenAI backend and the OpenAI judge share: the client, set up once the same way, the
chat messages they send, and base URLs shown without their credentials.

Credentials in a base URL (``http://user:password@host/v1``) are sent by the HTTP client as Basic
authentication, in place of the API key: that is how a proxy that wants them gets them. They are
never stored or printed: ``display_url`` drops them, and ``redact`` masks any echo of them."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from pytest_instrumental.redact import register_url_credentials


def open_client(base_url: str | None, timeout_s: float, max_retries: int) -> Any:
    """An ``openai.OpenAI`` client. It retries 408, 409, 429 (honouring Retry-After), 5xx,
    connection errors and timeouts with exponential backoff and jitter, ``max_retries`` times.
    ``timeout_s`` bounds each attempt's answer as a whole, however slowly a server drips it (the
    library's own timeout bounds each read), and ``attempts`` tells how many requests a call
    really sent. The key comes from the environment and stays in the client; local servers accept
    any key, but the client library insists on a non-empty one."""
    from openai import DefaultHttpxClient, OpenAI

    register_credentials(base_url)
    return OpenAI(
        base_url=base_url,
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
    """httpx's transport, counting the requests sent and bounding each answer's whole body by
    ``timeout_s`` from the moment the request went out."""
    httpx = _http_library()

    class Deadline(httpx.SyncByteStream):  # type: ignore[misc,name-defined]
        def __init__(self, stream: Any, deadline: float, request: Any) -> None:
            self._stream, self._deadline, self._request = stream, deadline, request

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self._stream:
                if time.monotonic() > self._deadline:
                    raise httpx.ReadTimeout(f"the answer took longer than {timeout_s:g} s", request=self._request)
                yield chunk

        def close(self) -> None:
            self._stream.close()

    class Bounded(httpx.HTTPTransport):  # type: ignore[misc,name-defined]
        def handle_request(self, request: Any) -> Any:
            _SENT.count = getattr(_SENT, "count", 0) + 1
            deadline = time.monotonic() + timeout_s
            response = super().handle_request(request)
            response.stream = Deadline(response.stream, deadline, request)
            return response

    return Bounded()


def _http_library() -> Any:
    """The HTTP library the installed openai client is built on (httpx2 in recent releases)."""
    import importlib

    try:
        return importlib.import_module("httpx2")
    except ImportError:
        return importlib.import_module("httpx")


def chat_messages(system: str, user: str) -> list[dict[str, str]]:
    """A system message (left out when blank) and a user message."""
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return [*messages, {"role": "user", "content": user}]


def register_credentials(url: str | None) -> None:
    """The URL's user and password, if any, are secrets from now on (redact.py), in every form
    that is sent or can be echoed: as written, percent-decoded, and the Basic authentication
    header the HTTP client makes of them (base64 of ``user:password``)."""
    if not url:
        return
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    for credential in (parts.username, parts.password, user, password):
        register_url_credentials(credential or "")
    register_url_credentials(base64.b64encode(f"{user}:{password}".encode()).decode("ascii"))


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
    """The URL without credentials (``user:password@``), fit for messages and results."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
