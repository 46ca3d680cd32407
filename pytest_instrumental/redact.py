"""Keep secrets out of everything stored or printed: the API key from the environment and any
credentials given in a URL. A server may echo a secret whole or in part (``...SECRET123``), so
any run of at least ``ECHO_CHARS`` characters of a secret is replaced, not only the whole."""

from __future__ import annotations

import os
import re
from functools import cache

SECRET_ENV_VARS = ("OPENAI_API_KEY",)
ECHO_CHARS = 6  # shorter runs are too common to mean an echo
_URL_SECRETS: set[str] = set()


def register_url_credentials(password_or_user: str) -> None:
    """A credential from a base URL's ``user:password@``, to be redacted like the API key."""
    if password_or_user:
        _URL_SECRETS.add(password_or_user)


def _secrets() -> list[tuple[str, str]]:
    named = [(name, os.environ.get(name) or "") for name in SECRET_ENV_VARS]
    named += [("URL credentials", secret) for secret in sorted(_URL_SECRETS)]
    return [(name, secret) for name, secret in named if len(secret) >= 4]


def redact(text: str) -> str:
    for name, secret in _secrets():
        text = text.replace(secret, f"<{name}>")
        if len(secret) > ECHO_CHARS:
            text = _redact_echoes(text, secret, f"<{name}>")
    return text


def _redact_echoes(text: str, secret: str, mask: str) -> str:
    """Each longest run of ``text`` that is a part of ``secret`` (at least ECHO_CHARS long) -> mask."""
    pieces, done = [], 0
    for match in _echoes(secret).finditer(text):
        start = match.start()
        if start < done:
            continue
        end = match.end()
        while end < len(text) and text[start : end + 1] in secret:
            end += 1
        pieces += [text[done:start], mask]
        done = end
    return "".join(pieces) + text[done:] if pieces else text


@cache
def _echoes(secret: str) -> re.Pattern[str]:
    """Any run of ECHO_CHARS characters of the secret: the start of a possible echo."""
    grams = {secret[i : i + ECHO_CHARS] for i in range(len(secret) - ECHO_CHARS + 1)}
    return re.compile("|".join(re.escape(g) for g in sorted(grams, key=len, reverse=True)))
