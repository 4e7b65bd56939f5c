"""A scripted OpenAI-compatible chat server: a test double for a vLLM server we cannot run here.

It answers CheXOne's prompts as a model that sees a left pleural effusion would, so the pipeline
tests can check grounded findings end to end (SR ROI groups, GSPS boxes). Random-weight models
answer randomly; this one is predictable. It records every request it receives.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EFFUSION_BOX = (55, 50, 90, 88)  # percent of the model input: x1, y1, x2, y2
HOLD_LIMIT_S = 120.0  # a held question is answered after this even if the test never releases


def send_json(handler: BaseHTTPRequestHandler, value: object) -> None:
    """A 200 answer with ``value`` as its JSON body, as a chat-completions server sends it."""
    data = json.dumps(value).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def answer(question: str) -> str:
    q = question.lower()
    if "view of this chest x-ray" in q:
        return "(a) PA"
    if q.startswith("is there"):
        return "Yes" if "pleural effusion" in q else "No"
    if "locate" in q and "pleural effusion" in q:
        x1, y1, x2, y2 = EFFUSION_BOX
        return f"<|ref|>pleural effusion<|/ref|><|box|>({x1},{y1}),({x2},{y2})<|/box|>"
    if "describe the location" in q:
        return "Left lower zone, moderate, meniscus sign."
    if "findings section" in q:
        return "Moderate left pleural effusion. Heart size normal. No pneumothorax."
    if "impression section" in q or q.startswith("summarize"):
        return "Moderate left pleural effusion."
    if "trajectory" in q:
        return "The left pleural effusion has increased."
    return "No further comment."


class ScriptedModelServer:
    """``POST /v1/chat/completions`` on a loopback port, in a thread."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        # A question containing ``hold_on`` waits (at most ``HOLD_LIMIT_S``) until ``release``
        # is set: a test sees what the worker stored before that question was answered.
        self.hold_on: str | None = None
        self.release = threading.Event()
        self.held = threading.Event()  # set when a held question has arrived
        self.fail_on: str | None = None  # a question containing this gets an HTTP 500
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                last = body["messages"][-1]["content"]
                text = (
                    last
                    if isinstance(last, str)
                    else " ".join(
                        part.get("text", "") for part in last if part.get("type") == "text"
                    )
                )
                if server.hold_on and server.hold_on in text:
                    server.held.set()
                    server.release.wait(HOLD_LIMIT_S)
                if server.fail_on and server.fail_on in text:
                    self.send_error(500, "scripted failure")
                    return
                reply = {
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": answer(text)},
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5},
                }
                send_json(self, reply)

            def log_message(self, *_: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedModelServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def questions(self, prompt_part: str) -> list[str]:
        """The last question of every request that contains ``prompt_part``."""
        asked = []
        for body in self.requests:
            last = body["messages"][-1]["content"]
            text = (
                last
                if isinstance(last, str)
                else " ".join(p.get("text", "") for p in last if p.get("type") == "text")
            )
            if prompt_part in text:
                asked.append(text)
        return asked

    def image_counts(self, prompt_part: str) -> list[int]:
        """Images in the very turn of each question containing ``prompt_part``, in order."""
        counts = []
        for body in self.requests:
            last = body["messages"][-1]["content"]
            parts = [last] if isinstance(last, str) else last
            text = " ".join(p.get("text", "") for p in parts if isinstance(p, dict))
            if isinstance(last, str):
                text = last
            if prompt_part in text:
                counts.append(
                    sum(1 for p in parts if isinstance(p, dict) and p.get("type") == "image_url")
                )
        return counts
