"""A real HTTP server on 127.0.0.1 speaking the OpenAI Chat Completions and Responses wire
formats, with faults chosen by markers in the last message: ``FAULT:429`` (twice, then fine),
``FAULT:500`` (always), ``FAULT:SLOW`` (first reply after the client's timeout),
``FAULT:MALFORMED`` (a body that is not JSON), ``FAULT:REASONING`` (reasoning in
``reasoning_content``), ``FAULT:THINKTAGS`` (reasoning inline in ``<think>`` tags),
``FAULT:EMPTY`` (empty content), ``FAULT:401`` (a rejected key, echoing part of it),
``FAULT:WAIT`` (429 asking to retry after an hour), ``FAULT:DRIP`` (a body dripped a byte at a
time), ``FAULT:DRIPHEAD`` (the status line and headers dripped too). Asked to continue a final
assistant turn (vLLM's ``continue_final_message``), an answer starts with ``CONTINUED``.

As a judge it answers the rubric's JSON with the decision named by a ``DECIDE:<decision>``
marker (default convergence); ``DECIDE:maybe`` answers a decision outside the four classes,
``DECIDE:prose`` answers no JSON, ``DECIDE:fenced`` answers JSON inside a code fence.
``force_status`` makes every request fail with that HTTP status (a preflight test).
``GET /v1/models`` lists ``served`` (any model is answered; the list is what a preflight sees).
Run as a script (``python tests/chat_server.py PORT [DELAY_S]``) it is a stand-in engine server
that a session starts and stops, answering each request after ``DELAY_S`` seconds."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "sk-test-do-not-leak-4242"  # the key a test sets for a server: it must never be stored or shown
CONTINUED = "[continued the assistant turn]"  # an answer's start when asked to continue one


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0, delay_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.delay_s = delay_s
        self.served = ["local"]
        self.answer: str | None = None  # when set, every model answer is this text
        self.echo_authorization = False  # every model answer ends with the Authorization header it got
        self.echo_path = False  # every model answer ends with the path it was asked at (its query string too)
        self.paths: list[str] = []
        self.die_after: int | None = None  # the server stops (a crash) after this many requests
        self.attempts: Counter[str] = Counter()
        self.force_status: int | None = None
        self.raw_reply: bytes | None = None  # every request answered 200 with this body
        self.error_message = "forced failure"  # what a forced failure says
        self.dripped = 0  # bytes of FAULT:DRIP answers written before the client hung up
        self.authorizations: list[str] = []
        self.bodies: list[dict[str, Any]] = []  # every request body, as received
        self.lock = threading.Lock()

    def die(self) -> None:
        self.shutdown()
        self.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        if self.path.partition("?")[0].rstrip("/") == "/v1/models":
            return self._send(
                200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.server.served]}
            )
        self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        with self.server.lock:
            served = sum(self.server.attempts.values())
        if self.server.die_after is not None and served >= self.server.die_after:
            threading.Thread(target=self.server.die, daemon=True).start()
            self.close_connection = True
            return None
        time.sleep(self.server.delay_s)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        messages = body.get("messages") or body.get("input")
        prompt = messages[-1]["content"]
        with self.server.lock:
            self.server.attempts[prompt] += 1
            attempt = self.server.attempts[prompt]
            self.server.authorizations.append(self.headers.get("Authorization", ""))
            self.server.paths.append(self.path)
            self.server.bodies.append(body)
        if self.server.force_status is not None:
            return self._send(self.server.force_status, {"error": {"message": self.server.error_message}})
        if self.server.raw_reply is not None:
            return self._send_raw(200, self.server.raw_reply)
        if "FAULT:401" in prompt:
            key = self.headers.get("Authorization", "").removeprefix("Bearer ")
            return self._send(401, {"error": {"message": f"Incorrect API key provided: {key}"}})
        if "FAULT:429" in prompt and attempt <= 2:
            return self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"})
        if "FAULT:500" in prompt:
            return self._send(500, {"error": {"message": "internal error"}})
        if "FAULT:WAIT" in prompt:
            return self._send(429, {"error": {"message": "come back in an hour"}}, {"Retry-After": "3600"})
        if "FAULT:DRIPHEAD" in prompt:
            return self._drip(head=True)
        if "FAULT:DRIP" in prompt:
            return self._drip()
        if "FAULT:SLOW" in prompt and attempt == 1:
            time.sleep(3)
        if "FAULT:MALFORMED" in prompt:
            return self._send_raw(200, b"{not json")
        if "TASK PROMPT:" in prompt:  # the judge rubric
            return self._reply(body, _judge_answer(prompt), {})
        content = self.server.answer or f"Answer to: {prompt[:20]}"
        if body.get("continue_final_message") and messages[-1]["role"] == "assistant":
            content = f"{CONTINUED} {content}"  # as vLLM does, told to continue the assistant turn
        if self.server.echo_authorization:
            content += f" (you sent Authorization: {self.headers.get('Authorization', '')})"
        if self.server.echo_path:
            content += f" (you asked at {self.path})"
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if "FAULT:REASONING" in prompt:
            message["reasoning_content"] = "weighing the options"
        if "FAULT:THINKTAGS" in prompt:
            message["content"] = "<think>weighing</think>\n\nThe answer."
        if "FAULT:EMPTY" in prompt:
            message["content"] = ""
        finish = "length" if "FAULT:LENGTH" in prompt else "stop"
        self._reply(body, message.pop("content"), message, finish)

    def _reply(self, body: dict[str, Any], text: str, extra: dict[str, Any], finish: str = "stop") -> None:
        if self.path.partition("?")[0].endswith("/responses"):
            content = [{"type": "output_text", "text": text, "annotations": []}]
            output = [
                {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": content}
            ]
            payload: dict[str, Any] = {
                "id": "resp_1",
                "object": "response",
                "created_at": 0,
                "model": body["model"],
                "status": "completed",
                "output": output,
                "parallel_tool_calls": False,
                "tool_choice": "auto",
                "tools": [],
            }
            return self._send(200, payload)
        message = {"role": "assistant", "content": text, **extra}
        self._send(
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            },
        )

    def _drip(self, head: bool = False) -> None:
        """An answer's body one byte every 0.2 s (about 40 s), its status line and headers sent at
        once, or (``head``) dripped too."""
        data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}).encode()
        header = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data) * 3}\r\n\r\n"
        dripped = (header.encode() if head else b"") + data * 3
        if not head:
            self.wfile.write(header.encode())
            self.wfile.flush()
        with suppress(BrokenPipeError, ConnectionResetError):
            for byte in dripped[:200]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                with self.server.lock:
                    self.server.dripped += 1
                time.sleep(0.2)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), headers)

    def _send_raw(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        with suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (the slow fault)
            self.wfile.write(data)


def _judge_answer(prompt: str) -> str:
    decision = prompt.split("DECIDE:", 1)[1].split()[0] if "DECIDE:" in prompt else "convergence"
    if decision == "prose":
        return "I think this is convergent."
    answer = json.dumps({"decision": "convergence" if decision == "fenced" else decision, "reason": "scripted"})
    return f"```json\n{answer}\n```" if decision == "fenced" else answer


@contextmanager
def running_chat_server() -> Iterator[ChatServer]:
    server = ChatServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    import sys

    ChatServer(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0).serve_forever()
