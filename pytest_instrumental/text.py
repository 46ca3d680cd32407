"""Text that came from a model or a server is data, whatever its characters, and never carries a secret.

``clean`` is applied where such text enters the pipeline (``Generation``, ``Judgement`` and
``ItemResult`` clean their fields on construction): a lone surrogate, which valid JSON from a
server can carry but no file or database can store, becomes U+FFFD, and any echo of a secret is
redacted. ``visible`` is applied where text is shown (the HTML and Markdown reports, failure
lines in the terminal): control characters and the bidirectional controls that can reorder
what a reader sees become visible ``<U+202E>`` marks; newlines and tabs stay.

The secrets are the API key from the environment and any credentials given in a URL. A server may
echo a secret whole or in part (``...SECRET123``), so any run of at least ``ECHO_CHARS``
characters of a secret is replaced, not only the whole.
"""

from __future__ import annotations

import os
import re
from functools import cache

_SURROGATE = re.compile("[\ud800-\udfff]")
# C0 and C1 controls except tab, newline and carriage return; DEL; the bidirectional controls
# (embeddings, overrides, isolates, marks) and the zero-width characters that hide text.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)


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


def clean(text: str) -> str:
    return redact(_SURROGATE.sub("\ufffd", text))


def clean_optional(text: str | None) -> str | None:
    return None if text is None else clean(text)


def visible(text: str) -> str:
    return _INVISIBLE.sub(lambda m: f"<U+{ord(m.group()):04X}>", text)


def terminal_line(text: str) -> str:
    """A message for the terminal that may quote outside text (a server's model ids, a judge's
    error): redacted, invisible characters made visible, and carriage returns too, which could
    otherwise overwrite what the terminal already shows with a fake line."""
    return visible(clean(text)).replace("\r", "<U+000D>")
