"""What the OpenAI backend and the OpenAI judge share: the client, set up once the same way, and
the chat messages they send."""

from __future__ import annotations

import os
from typing import Any


def open_client(base_url: str | None, timeout_s: float, max_retries: int) -> Any:
    """An ``openai.OpenAI`` client. It retries 408, 409, 429 (honouring Retry-After), 5xx,
    connection errors and timeouts with exponential backoff and jitter, ``max_retries`` times.
    The key comes from the environment and stays in the client; local servers accept any key,
    but the client library insists on a non-empty one."""
    from openai import OpenAI

    return OpenAI(
        base_url=base_url,
        api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY",
        timeout=timeout_s,
        max_retries=max_retries,
    )


def chat_messages(system: str, user: str) -> list[dict[str, str]]:
    """A system message (left out when blank) and a user message."""
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return [*messages, {"role": "user", "content": user}]
