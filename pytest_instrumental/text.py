"""Text that came from a model or a server is data, whatever its characters.

``clean`` is applied where such text enters the pipeline (``Generation``, ``Judgement`` and
``ItemResult`` clean their fields on construction): a lone surrogate, which valid JSON from a
server can carry but no file or database can store, becomes U+FFFD, and any echo of a secret is
redacted. ``visible`` is applied where text is shown (the HTML and Markdown reports, failure
lines in the terminal): control characters and the bidirectional controls that can reorder
what a reader sees become visible ``<U+202E>`` marks; newlines and tabs stay.
"""

from __future__ import annotations

import re

from pytest_instrumental.redact import redact

_SURROGATE = re.compile("[\ud800-\udfff]")
# C0 and C1 controls except tab, newline and carriage return; DEL; the bidirectional controls
# (embeddings, overrides, isolates, marks) and the zero-width characters that hide text.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)


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
