"""The OpenAI-compatible backend: vLLM's server (or any ``/v1/chat/completions``) for throughput.

Images travel as PNG data URLs, in order, before the text of their turn (CheXOne's layout). The
server does its own prefix caching (vLLM: automatic prefix caching), so nothing is kept here.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any

from PIL import Image

from models._backend import Conversation, DecodeOptions, Generation, ModelLoadError
from models._parse import clean_output


def image_data_url(image: Image.Image) -> str:
    """A PNG data URL (lossless, so the server sees the very pixels prepared here)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_messages(conversation: Conversation) -> list[dict[str, Any]]:
    """The conversation in the OpenAI chat format."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": conversation.system}]
    for turn in conversation.turns:
        if turn.images:
            content: list[dict[str, Any]] = [
                {"type": "image_url", "image_url": {"url": image_data_url(image)}}
                for image in turn.images
            ]
            content.append({"type": "text", "text": turn.text})
            messages.append({"role": turn.role, "content": content})
        else:
            messages.append({"role": turn.role, "content": turn.text})
    return messages


class OpenAIBackend:
    """Answers through an OpenAI-compatible HTTP server."""

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
        self.client = httpx.Client(timeout=timeout_seconds)

    def request_body(self, conversation: Conversation, options: DecodeOptions) -> dict[str, Any]:
        """The JSON body sent for one conversation."""
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": chat_messages(conversation),
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
        """One request per conversation; the server batches concurrent work itself."""
        return [self.generate(c, options) for c in conversations]

    def close(self) -> None:
        self.client.close()
