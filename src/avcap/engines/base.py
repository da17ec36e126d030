"""The engine interface: "generate for these requests (messages with videos) with these settings".

Engines are the only code that talks to a model. Every other step builds `Request`s and reads
`Result`s; one bad video fails its own request (Result.error), never the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from avcap.core.config import Sampling

THINK_END = "</think>"


class ModelLoadError(RuntimeError):
    """The engine's model could not be loaded (an engine that loads in the background raises it
    from the first `generate`): the run stops, no request gets it as its error."""


@dataclass
class Request:
    key: str
    messages: list[dict[str, Any]]  # HF/OpenAI chat messages, video content parts first


@dataclass
class Result:
    key: str
    text: Optional[str]  # final answer (after </think> in reasoning mode)
    raw_text: Optional[str] = None
    error: Optional[str] = None
    num_input_tokens: Optional[int] = None
    num_output_tokens: Optional[int] = None
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    name: str

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Result]:
        """Results in the order of `requests`."""
        ...

    def close(self) -> None: ...

    def run_record(self) -> dict[str, Any]:
        """What the engine did during the run, for `run.json` ("engine_run"): the representation
        of the inputs it sent (e.g. frames at which size, or a video file), the code paths taken
        and how many requests each took, and every fallback with its count and reason. Engines
        without one are recorded as `{}`."""
        ...


def final_answer(text: str) -> str:
    """What follows the last `</think>`; the whole text when there is none."""
    if THINK_END in text:
        return text.rsplit(THINK_END, 1)[1].strip()
    return text.strip()


def video_paths(messages: list[dict[str, Any]]) -> list[str]:
    """Every video referenced by a conversation, in order."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "video":
                    out.append(str(part["video"]))
    return out


def build_messages(
    system: Optional[str],
    text: str,
    video: Optional[str] = None,
    *,
    reasoning_suffix: Optional[str] = None,
) -> list[dict[str, Any]]:
    """A one-turn conversation: system prompt, then the user turn with the video first (Reason 2
    prompting); in reasoning mode the `<think>` instruction is appended to the user text."""
    if reasoning_suffix:
        text = f"{text}\n\n{reasoning_suffix}"
    content: list[dict[str, Any]] = []
    if video is not None:
        content.append({"type": "video", "video": str(video)})
    content.append({"type": "text", "text": text})
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": content})
    return messages


def video_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every video content part of a conversation, in order (the part may carry its own frame
    settings: nframes, fps, min_pixels, max_pixels, total_pixels, min_frames, max_frames)."""
    return [
        part
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if isinstance(part, dict) and part.get("type") == "video"
    ]
