"""Any OpenAI-compatible chat-completions endpoint (GPT-class APIs, `vllm serve`, ...).

- `POST {base_url}/chat/completions`, one HTTP request per `Request`, at most `concurrency` in
  flight (a thread pool over one pooled `httpx.Client`).
- Videos: `video_mode = "frames"` sends the frames `avcap.video` samples (the same frames every
  engine sees) as base64 `image_url` data URLs (`image_format` jpeg|png); `"video_url"` sends the
  file itself as a `video_url` part (a `data:video/...;base64` URL, or the URL as given when it is
  already http(s)/data) and lets the server sample it — a directory of frames has no single file,
  so it is sent as frames in either mode.
- The key is read from the environment variable named by `api_key_env` when the engine is built,
  sent only as the `Authorization: Bearer` header, never logged or written anywhere; with the
  variable unset no Authorization header is sent (a local `vllm serve` needs none).
- 408, 429, 5xx, timeouts and connection errors are retried up to `max_retries` times with exponential
  backoff and jitter, waiting what a `Retry-After` header asks for when there is one; other 4xx
  fail the request at once. A request that still fails becomes `Result.error`, never an exception.
- Sampling: temperature, top_p, presence_penalty, max_tokens and seed are standard; top_k and
  repetition_penalty are sent only when set (-1 / 1.0 mean unset), as vLLM's extensions — an
  OpenAI endpoint rejects them.
"""

from __future__ import annotations

import base64
import email.utils
import io
import mimetypes
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from avcap.config import Engine as EngineConfig
from avcap.config import Sampling, Vision
from avcap.engines.base import Request, Result, final_answer, video_parts
from avcap.engines.frames import FrameLoader, describe_error

RETRY_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))


class OpenAIEngine:
    name = "openai"

    def __init__(
        self,
        cfg: EngineConfig,
        *,
        vision: Vision,
        model: str,
        factor: int = 32,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ):
        import httpx

        self.cfg = cfg
        self.model = model
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.batch_size = max(cfg.batch_size, cfg.concurrency)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout_s),
            limits=httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency),
        )
        self._pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="avcap-openai")
        self.frames = FrameLoader(vision, factor, capacity=max(32, 2 * cfg.concurrency))
        self.prefetch_videos = self.frames.lookahead

    def __repr__(self) -> str:  # never shows headers
        return f"OpenAIEngine(url={self.url!r}, model={self.model!r})"

    # ------------------------------------------------------------------ interface

    def prefetch(self, requests: list[Request]) -> None:
        self.frames.prefetch(r for r in requests if self._needs_frames(r))

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Result]:
        futures = [self._pool.submit(self._one, req, sampling) for req in requests]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()
        self.frames.close()

    # ------------------------------------------------------------------ one request

    def _needs_frames(self, req: Request) -> bool:
        return self.cfg.video_mode == "frames" or any(Path(str(p["video"])).is_dir() for p in video_parts(req.messages))

    def _one(self, req: Request, sampling: Sampling) -> Result:
        try:
            messages = [self._message(m) for m in req.messages]
        except _BadVideo as exc:
            return Result(key=req.key, text=None, error=str(exc))
        payload = payload_for(self.model, messages, sampling)
        t0 = time.perf_counter()
        data, error, attempts = self._post(payload)
        extra: dict[str, Any] = {"attempts": attempts, "latency_s": round(time.perf_counter() - t0, 3)}
        if error is not None:
            return Result(key=req.key, text=None, error=error, extra=extra)
        try:
            choice = data["choices"][0]
            message = choice["message"]
            content = _text_of(message.get("content"))
        except (KeyError, IndexError, TypeError) as exc:
            return Result(key=req.key, text=None, error=f"unexpected response shape ({exc!r})", extra=extra)
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        raw = f"<think>\n{reasoning}\n</think>\n\n{content}" if reasoning else content
        usage = data.get("usage") or {}
        extra["finish_reason"] = choice.get("finish_reason")
        return Result(
            key=req.key,
            text=final_answer(raw),
            raw_text=raw,
            num_input_tokens=usage.get("prompt_tokens"),
            num_output_tokens=usage.get("completion_tokens"),
            extra=extra,
        )

    def _message(self, m: dict[str, Any]) -> dict[str, Any]:
        content = m.get("content")
        if not isinstance(content, list):
            return {"role": m["role"], "content": content}
        parts: list[dict[str, Any]] = []
        for part in content:
            kind = part.get("type")
            if kind == "video":
                parts.extend(self._video_parts(part))
            elif kind == "text":
                parts.append({"type": "text", "text": part["text"]})
            else:
                parts.append(part)  # image_url etc. pass through
        return {"role": m["role"], "content": parts}

    def _video_parts(self, part: dict[str, Any]) -> list[dict[str, Any]]:
        src = str(part["video"])
        if self.cfg.video_mode == "video_url" and not Path(src).is_dir():
            try:
                return [{"type": "video_url", "video_url": {"url": video_url(src)}}]
            except OSError as exc:
                raise _BadVideo(describe_error(exc, src)) from None
        try:
            vf = self.frames.frames(part)
        except Exception as exc:
            raise _BadVideo(describe_error(exc, src)) from None
        fmt = self.cfg.image_format
        return [{"type": "image_url", "image_url": {"url": image_data_url(f, fmt)}} for f in vf.frames]

    def _post(self, payload: dict[str, Any]) -> tuple[Optional[dict], Optional[str], int]:
        import httpx

        attempts = 0
        while True:
            attempts += 1
            retry_after = None
            try:
                r = self._client.post(self.url, json=payload)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code == 200:
                    try:
                        return r.json(), None, attempts
                    except ValueError:
                        return None, f"HTTP 200 with a body that is not JSON: {r.text[:200]!r}", attempts
                error = f"HTTP {r.status_code}: {' '.join(r.text.split())[:300]}"
                if r.status_code not in RETRY_STATUS:
                    return None, error, attempts
                retry_after = parse_retry_after(r.headers.get("retry-after"))
            if attempts > self.cfg.max_retries:
                return None, f"{error} (gave up after {attempts} attempts)", attempts
            time.sleep(self._delay(attempts, retry_after))

    def _delay(self, attempt: int, retry_after: Optional[float]) -> float:
        if retry_after is not None:
            return min(retry_after, 10 * self.backoff_max_s)
        cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return cap / 2 + random.uniform(0, cap / 2)  # "equal jitter"


class _BadVideo(Exception):
    pass


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise TypeError(f"content is {type(content).__name__}")


def payload_for(model: str, messages: list[dict[str, Any]], s: Sampling) -> dict[str, Any]:
    """The chat-completions body for one request with avcap's engine-neutral sampling."""
    p: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": s.max_tokens, "temperature": s.temperature}
    if s.top_p < 1.0:
        p["top_p"] = s.top_p
    if s.presence_penalty:
        p["presence_penalty"] = s.presence_penalty
    if s.seed is not None:
        p["seed"] = s.seed
    if s.top_k > 0:
        p["top_k"] = s.top_k  # vLLM extension
    if s.repetition_penalty != 1.0:
        p["repetition_penalty"] = s.repetition_penalty  # vLLM extension
    return p


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def image_data_url(frame: Any, fmt: str = "jpeg") -> str:
    """A `data:image/...;base64,` URL of one HxWx3 uint8 frame."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG" if fmt == "jpeg" else "PNG", **({"quality": 90} if fmt == "jpeg" else {}))
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def video_url(src: str) -> str:
    """A URL the server can fetch: http(s)/data URLs as given, a local file as a base64 data URL."""
    if src.startswith(("http://", "https://", "data:")):
        return src
    path = Path(src.removeprefix("file://"))
    mime = mimetypes.guess_type(path.name)[0] or "video/mp4"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
