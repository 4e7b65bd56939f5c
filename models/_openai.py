"""The OpenAI-compatible backend: vLLM's server (or any ``/v1/chat/completions``) for throughput.

Images travel as PNG data URLs, in order, before the text of their turn (CheXOne's layout). The
server does its own prefix caching (vLLM: automatic prefix caching), so no KV cache is kept here,
and one backend serves many readings at once (``concurrent_readings``): the throughput path, the
server's continuous batching filling the GPU with sequences from several studies.

Every request carries a ``cache_salt`` (vLLM's per-request prefix-cache namespace) made from the
pixels of its conversation's first images. vLLM has had a bug where identical prompts with
different images shared cached blocks; with the salt, two studies' requests can never share a
cached prefix, while one study's own requests (same first images) still do.
"""

from __future__ import annotations

import base64
import hashlib
import io
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from models._backend import Conversation, DecodeOptions, Generation, ModelLoadError
from models._parse import clean_output


def _is_grey(image: Image.Image) -> bool:
    """True for an RGB image whose three channels are the same pixels (a prepared radiograph)."""
    if image.mode != "RGB":
        return False
    red, green, blue = image.split()
    return red.tobytes() == green.tobytes() == blue.tobytes()


def image_data_url(image: Image.Image) -> str:
    """A PNG data URL (lossless, so the server sees the very pixels prepared here).

    A radiograph prepared as RGB is grey in all three channels; it travels as a one-channel PNG,
    which the server turns back into the same RGB pixels (vLLM's image loader and Qwen's processor
    both convert to RGB) for a third of the encoding work and bytes. Compression level 1: at 6
    (Pillow's default) encoding took five times as long for a file a fifth smaller, and the
    encoding runs on the drafting worker's CPU for every image of every study.
    """
    buffer = io.BytesIO()
    (image.convert("L") if _is_grey(image) else image).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class _Encoded:
    """Data URLs and pixel digests of the images in use, so a study's images are PNG-encoded
    once, not once per question. Keyed by object identity, checked through a weak reference
    (PIL images are unhashable and a reused id must never return another image's pixels)."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._items: OrderedDict[int, tuple[weakref.ref[Image.Image], str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, image: Image.Image) -> tuple[str, str]:
        """(data URL, pixel digest) of ``image``."""
        key = id(image)
        with self._lock:
            item = self._items.get(key)
            if item is not None and item[0]() is image:
                self._items.move_to_end(key)
                return item[1], item[2]
        digest = hashlib.blake2b(
            f"{image.mode}:{image.size}".encode() + image.tobytes(), digest_size=16
        ).hexdigest()
        url = image_data_url(image)
        with self._lock:
            self._items[key] = (weakref.ref(image), url, digest)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return url, digest


def cache_salt(conversation: Conversation, digest: Callable[[Image.Image], str]) -> str:
    """The prefix-cache namespace of a conversation: the pixels of its first images."""
    first = next((turn for turn in conversation.turns if turn.images), None)
    digests = [digest(image) for image in (first.images if first else ())]
    return hashlib.blake2b("|".join(digests).encode(), digest_size=16).hexdigest()


def chat_messages(
    conversation: Conversation, url: Callable[[Image.Image], str] = image_data_url
) -> list[dict[str, Any]]:
    """The conversation in the OpenAI chat format."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": conversation.system}]
    for turn in conversation.turns:
        if turn.images:
            content: list[dict[str, Any]] = [
                {"type": "image_url", "image_url": {"url": url(image)}} for image in turn.images
            ]
            content.append({"type": "text", "text": turn.text})
            messages.append({"role": turn.role, "content": content})
        else:
            messages.append({"role": turn.role, "content": turn.text})
    return messages


class OpenAIBackend:
    """Answers through an OpenAI-compatible HTTP server; thread-safe, for many readings at once."""

    concurrent_readings = True

    def __init__(
        self,
        server_url: str,
        model_id: str,
        *,
        timeout_seconds: float = 600.0,
        revision: str | None = None,
    ) -> None:
        import httpx

        if not server_url:
            raise ModelLoadError(
                "the openai backend needs RADDRAFT_MODEL_SERVER_URL (e.g. http://vllm:8000)"
            )
        base = server_url.rstrip("/")
        self.url = (
            base
            if base.endswith("/chat/completions")
            else (
                base + "/chat/completions"
                if base.endswith("/v1")
                else base + "/v1/chat/completions"
            )
        )
        self.model_id = model_id
        self.revision = revision
        # Enough connections for every study in flight with its branches; no Nagle delay
        # between a request's head and its body (tens of ms per question otherwise).
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        transport = httpx.HTTPTransport(
            limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        )
        self.client = httpx.Client(timeout=timeout_seconds, transport=transport)
        self._encoded = _Encoded()

    def request_body(self, conversation: Conversation, options: DecodeOptions) -> dict[str, Any]:
        """The JSON body sent for one conversation."""
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": chat_messages(conversation, lambda image: self._encoded.get(image)[0]),
            "cache_salt": cache_salt(conversation, lambda image: self._encoded.get(image)[1]),
            "max_tokens": options.max_new_tokens,
            "temperature": options.temperature if options.do_sample else 0.0,
            "n": options.n if options.do_sample else 1,
        }
        if options.do_sample and options.top_p < 1.0:
            body["top_p"] = options.top_p
        if options.seed is not None:
            body["seed"] = options.seed
        return body

    def generate(self, conversation: Conversation, options: DecodeOptions) -> Generation:
        """One ``POST /v1/chat/completions``."""
        import httpx

        started = time.perf_counter()
        try:
            response = self.client.post(self.url, json=self.request_body(conversation, options))
            response.raise_for_status()
            data = response.json()
        except httpx.HTTPError as error:
            raise RuntimeError(f"model server {self.url} failed: {error}") from error
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        usage = data.get("usage") or {}
        texts = [clean_output(str((c.get("message") or {}).get("content") or "")) for c in choices]
        completion = int(usage.get("completion_tokens", 0))
        details = usage.get("prompt_tokens_details") or {}
        return Generation(
            texts=texts,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            # The server reports one total; it is split evenly over the choices.
            completion_tokens=[completion // max(len(choices), 1)] * len(choices),
            cached_tokens=int(details.get("cached_tokens") or 0),
            total_seconds=time.perf_counter() - started,
            finish_reasons=[str(c.get("finish_reason") or "") for c in choices],
        )

    def generate_batch(
        self, conversations: list[Conversation], options: DecodeOptions
    ) -> list[Generation]:
        """One request per conversation, all in flight at once: the server batches them."""
        if len(conversations) < 2:
            return [self.generate(c, options) for c in conversations]
        with ThreadPoolExecutor(max_workers=min(len(conversations), 16)) as pool:
            return list(pool.map(lambda c: self.generate(c, options), conversations))

    def close(self) -> None:
        self.client.close()
