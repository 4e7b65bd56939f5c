"""The OpenAI-compatible backend against a small real HTTP server that checks each request
(a test double for vLLM, which cannot run here)."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from models import (
    Conversation,
    DecodeOptions,
    Message,
    ModelLoadError,
    ReaderConfig,
    StudyImage,
    load_backend,
)
from models._openai import OpenAIBackend
from models._staged_reading import Reader
from tests.models.conftest import radiograph
from tests.worker.model_server import send_json


class FakeServer:
    """Records request bodies; answers like a chat-completions server."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                outer.paths.append(self.path)
                question = body["messages"][-1]["content"]
                if isinstance(question, list):
                    question = question[-1]["text"]
                text = (
                    "(A) Yes" if "Is there" in question else "<|im_end|>No pneumothorax detected."
                )
                if "Locate" in question:
                    text = "<|ref|>effusion<|/ref|><|box|>(50,50),(100,100)<|/box|>"
                n = body.get("n", 1)
                reply = {
                    "choices": [
                        {
                            "index": i,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                        for i in range(n)
                    ],
                    "usage": {
                        "prompt_tokens": 100,
                        "completion_tokens": 4 * n,
                        "prompt_tokens_details": {"cached_tokens": 64},
                    },
                }
                send_json(self, reply)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.close()


def decode_data_url(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_request_body(server: FakeServer) -> None:
    backend = OpenAIBackend(server.url, "StanfordAIMI/CheXOne")
    a = Image.new("RGB", (56, 84), (10, 20, 30))
    b = Image.new("RGB", (84, 56), (200, 200, 200))
    conversation = Conversation(
        "sys prompt",
        (
            Message("user", "first", (a,)),
            Message("assistant", "ok"),
            Message("user", "second", (b, a)),
        ),
    )
    result = backend.generate(conversation, DecodeOptions(max_new_tokens=7))
    assert server.paths == ["/v1/chat/completions"]
    body = server.bodies[0]
    assert body["model"] == "StanfordAIMI/CheXOne"
    assert body["max_tokens"] == 7 and body["temperature"] == 0.0 and body["n"] == 1
    assert body["messages"][0] == {"role": "system", "content": "sys prompt"}
    assert body["messages"][2] == {"role": "assistant", "content": "ok"}
    last = body["messages"][3]["content"]
    assert [part["type"] for part in last] == ["image_url", "image_url", "text"]
    assert last[2]["text"] == "second"
    first_image = decode_data_url(last[0]["image_url"]["url"])
    assert first_image.size == (84, 56)
    assert first_image.convert("RGB").getpixel((0, 0)) == (200, 200, 200)
    assert result.text == "No pneumothorax detected."  # control tokens removed
    assert result.prompt_tokens == 100 and result.cached_tokens == 64


def test_data_urls_carry_the_prepared_pixels_exactly() -> None:
    """A grey radiograph travels as one channel, a colour image as RGB; both come back as the
    very RGB pixels prepared here once converted to RGB, as vLLM and Qwen's processor do."""
    import numpy as np

    from models._openai import image_data_url

    rng = np.random.default_rng(4)
    grey = rng.integers(0, 256, (60, 44), dtype=np.uint8)
    prepared = Image.fromarray(grey, mode="L").convert("RGB")
    sent = decode_data_url(image_data_url(prepared))
    assert sent.mode == "L"
    assert sent.convert("RGB").tobytes() == prepared.tobytes()
    colour = prepared.copy()
    colour.putpixel((3, 5), (9, 200, 9))  # one pixel off grey: it must not be flattened
    sent = decode_data_url(image_data_url(colour))
    assert sent.mode == "RGB" and sent.tobytes() == colour.tobytes()


def test_sampling_request(server: FakeServer) -> None:
    backend = OpenAIBackend(server.url + "/v1", "m")
    out = backend.generate(
        Conversation("s", (Message("user", "Is there edema?"),)),
        DecodeOptions(max_new_tokens=3, do_sample=True, temperature=0.7, n=8, seed=5),
    )
    body = server.bodies[0]
    assert (body["n"], body["temperature"], body["seed"]) == (8, 0.7, 5)
    assert len(out.texts) == 8 and out.completion_tokens == [4] * 8


def test_reading_through_the_server(server: FakeServer, tmp_path: Any) -> None:
    config = ReaderConfig(
        backend="openai",
        server_url=server.url,
        data_dir=tmp_path,
        max_new_tokens=9,
        findings_vocabulary=("Pleural Effusion",),
    )
    backend, info = load_backend(config)
    assert info.backend == "openai" and not info.demo and info.model_id == "StanfordAIMI/CheXOne"
    ds = radiograph(200, 100, (1, 1, 5, 5))
    reading = Reader(backend, config, info).read([StudyImage.from_dataset(ds)])
    (effusion,) = reading.findings
    assert effusion.present is True
    assert (effusion.boxes[0].x1, effusion.boxes[0].y2) == pytest.approx((50.0, 200.0))
    assert all(b["max_tokens"] == 9 for b in server.bodies)
    with_images = [b for b in server.bodies if isinstance(b["messages"][1]["content"], list)]
    assert len(with_images) == len(server.bodies)  # the image stays in every request's first turn


def test_openai_needs_a_url(tmp_path: Any) -> None:
    with pytest.raises(ModelLoadError, match="RADDRAFT_MODEL_SERVER_URL"):
        load_backend(ReaderConfig(backend="openai", server_url="", data_dir=tmp_path))
