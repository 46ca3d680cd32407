"""Keep secrets out of messages: whatever reaches a result, a cache row or a log goes through here."""

from __future__ import annotations

import os

SECRET_ENV_VARS = ("OPENAI_API_KEY",)


def redact(text: str) -> str:
    for name in SECRET_ENV_VARS:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, f"<{name}>")
    return text
