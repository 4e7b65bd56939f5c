"""The one small interface every model backend implements, and its plain data types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from PIL import Image

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    """One turn. Images come before the text, in order (CheXOne's training layout)."""

    role: Role
    text: str
    images: tuple[Image.Image, ...] = ()


@dataclass(frozen=True)
class Conversation:
    """A system prompt and the turns so far; the last turn is the user's question."""

    system: str
    turns: tuple[Message, ...]

    def then(self, *messages: Message) -> Conversation:
        """This conversation with ``messages`` appended (conversations are immutable)."""
        return Conversation(self.system, self.turns + tuple(messages))

    @property
    def images(self) -> list[Image.Image]:
        """All images in the order the model sees them."""
        return [image for turn in self.turns for image in turn.images]

    def to_hf_messages(self) -> list[dict[str, object]]:
        """The messages in the form Qwen's chat template expects."""
        messages: list[dict[str, object]] = [
            {"role": "system", "content": [{"type": "text", "text": self.system}]}
        ]
        for turn in self.turns:
            content: list[dict[str, object]] = [{"type": "image"} for _ in turn.images]
            content.append({"type": "text", "text": turn.text})
            messages.append({"role": turn.role, "content": content})
        return messages


@dataclass(frozen=True)
class DecodeOptions:
    """Decoding: greedy unless ``do_sample``; ``n`` samples only when sampling."""

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None


@dataclass
class Generation:
    """What a backend returns for one conversation: ``n`` texts and the cost of making them."""

    texts: list[str]
    prompt_tokens: int
    completion_tokens: list[int]
    cached_tokens: int = 0  # prompt tokens whose keys/values came from the prefix cache
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    total_seconds: float = 0.0
    finish_reasons: list[str] = field(default_factory=list)  # "stop" or "length" per text
    token_ids: list[list[int]] = field(default_factory=list)  # per text, where the backend knows

    @property
    def text(self) -> str:
        """The first (for greedy decoding, the only) text."""
        return self.texts[0] if self.texts else ""


@runtime_checkable
class Backend(Protocol):
    """A loaded model that answers conversations."""

    model_id: str
    revision: str | None

    def generate(self, conversation: Conversation, options: DecodeOptions) -> Generation:
        """Answer the conversation's last user turn."""
        ...

    def generate_batch(
        self, conversations: list[Conversation], options: DecodeOptions
    ) -> list[Generation]:
        """Answer several conversations (branches of one prefix are the common case)."""
        ...


class ModelLoadError(RuntimeError):
    """A model named in settings could not be loaded; the message says what to do."""
