"""Any OpenAI-compatible chat-completions endpoint (GPT-class APIs, `vllm serve`, `transformers serve`).

- `POST {base_url}/chat/completions`, one HTTP request per `Request`, at most `concurrency` in
  flight (a thread pool over one pooled `httpx.Client`).
- `[avcap.engine] server` names the server kind; it decides which request fields go beyond the
  standard chat-completions ones (`SERVERS`):
  - "openai" (default): standard fields only — model, messages, max_tokens, temperature, top_p,
    presence_penalty, seed — and each image part's `detail` (`image_detail`). top_k > 0 and
    repetition_penalty != 1 have no chat-completions field: they are not sent.
  - "vllm": also top_k (-1 = off) and repetition_penalty, always sent, so the server's defaults
    from the model's generation_config.json (vLLM applies them to unset fields) never decide;
    frames' size hint in `mm_processor_kwargs` (HF processor kwargs, vLLM's per-request field).
  - "transformers-serve": top_k / top_p / repetition_penalty / do_sample in `generation_config`
    (a JSON string; every field set, as avcap's own transformers engine does, since the server
    otherwise starts from the checkpoint's generation_config.json: Qwen3-VL's samples with top_k 20
    and top_p 0.8); frames' size hint in `chat_template_kwargs.images_kwargs.size`. presence_penalty
    has no equivalent there (the server ignores it): not sent. `transformers serve` (5.x) answers
    HTTP 422 to any field it does not know (top_k, repetition_penalty, mm_processor_kwargs).
  A setting that cannot be sent to the named server is named in one warning per engine and in
  `run_record()["sampling"]` ("dropped", with the reason); it never silently changes results.
- Videos: `video_mode = "frames"` sends the frames `avcap.video` samples (the same frames every
  engine sees) as base64 `image_url` data URLs (`image_format` jpeg|png), each at the sampled
  size, with the size hint above so that the server keeps that size (without one, a Qwen-VL
  server resizes each image by its image processor's own pixel bounds: Qwen3-VL's raise every
  image to at least 65536 pixels, so a 96x64 frame costs 64 visual tokens instead of 6). An image
  costs the visual tokens of two video frames (Qwen-VL repeats an image over the temporal patch),
  so frames as images take about twice the visual tokens that the same frames take as a video in
  avcap's own engines (tiny Qwen3-VL, 16 frames of 96x64: 165 prompt tokens through transformers
  serve with the hint, 1189 without, 149 in avcap's transformers engine).
  `"video_url"` sends the file itself as a `video_url` part (a `data:video/...;base64` URL, or the
  URL as given when it is already http(s)/data) and lets the server sample it — a directory of
  frames has no single file, so it is sent as frames in either mode. `transformers serve` (5.x)
  cannot take `video_url` for Qwen3-VL: it classes the model as multimodal (audio too) and loads
  the audio track of every video, which fails without torchcodec on the server (HTTP 500, "soundfile
  cannot decode" the mp4); a request cannot turn that off (`chat_template_kwargs.load_audio_from_video` collides
  with the server's own argument: TypeError, HTTP 500 too). Use frames with that server.
- The key is read from the environment variable named by `api_key_env` when the engine is built,
  sent only as the `Authorization: Bearer` header, never logged or written anywhere; with the
  variable unset no Authorization header is sent (a local `vllm serve` needs none). Every error
  text kept or shown (a server's body echoing the request's headers, an exception) goes through
  `avcap.core.secrets.redact` first.
- 408, 429, 5xx, timeouts and connection errors are retried up to `max_retries` times with exponential
  backoff and jitter, waiting what a `Retry-After` header asks for when there is one; other 4xx
  fail the request at once. A request that still fails becomes `Result.error`, never an exception.
- `run_record()` (run.json's "engine_run"): server kind, representation (frames: part, format,
  WxH and frames per video, size hint; or video_url), the sampling fields sent and dropped per
  distinct setting, request / answer / error / retry counts, errors by kind, prompt-token range.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import mimetypes
import os
import random
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from avcap.core.config import Engine as EngineConfig
from avcap.core.config import Sampling, Vision
from avcap.core.secrets import redact
from avcap.engines.base import Request, Result, final_answer, video_parts
from avcap.engines.frames import FrameLoader, describe_error

# Heavy libraries (PIL, httpx) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

SERVERS = ("openai", "vllm", "transformers-serve")
# where each server kind takes the frames' size hint
SIZE_HINT = {
    "openai": "image_url.detail",
    "vllm": "mm_processor_kwargs.size",
    "transformers-serve": "chat_template_kwargs.images_kwargs.size",
}

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

        if cfg.server not in SERVERS:  # the config validates it; a hand-built config may not
            raise ValueError(f"[avcap.engine] server: unknown server kind {cfg.server!r} ({', '.join(SERVERS)})")
        self.cfg = cfg
        self.server = cfg.server
        self.model = model
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.batch_size = max(cfg.batch_size, cfg.concurrency)
        self.first_batch = cfg.first_batch
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(cfg.api_key_env)
        self._secrets = [key] if key else []
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
        # what the run did (run_record), updated from the pool's threads
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._errors: Counter = Counter()
        self._frame_sizes: Counter = Counter()
        self._frames_per_video: Counter = Counter()
        self._sampling: dict[str, dict[str, Any]] = {}
        self._prompt_tokens: list[int] = []
        self._warned: set[str] = set()
        if cfg.video_mode == "video_url" and cfg.server == "transformers-serve":
            warnings.warn(
                "avcap openai engine: transformers serve loads the audio track of every video_url sent to a model it "
                "classes as multimodal (Qwen3-VL is) and answers HTTP 500 when it cannot (no torchcodec on the "
                'server); no request field turns that off. video_mode = "frames" avoids it.',
                stacklevel=2,
            )

    def __repr__(self) -> str:  # never shows headers
        return f"OpenAIEngine(url={self.url!r}, model={self.model!r}, server={self.server!r})"

    # ------------------------------------------------------------------ interface

    def prefetch(self, requests: list[Request]) -> None:
        self.frames.prefetch(r for r in requests if self._needs_frames(r))

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Result]:
        params, dropped = sampling_params(sampling, self.server)
        self._note_sampling(params, dropped, len(requests))
        futures = [self._pool.submit(self._one, req, params) for req in requests]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()
        self.frames.close()

    def run_record(self) -> dict[str, Any]:
        with self._lock:
            frames: dict[str, Any] = {
                "part": "image_url",
                "format": self.cfg.image_format,
                "size_hint": SIZE_HINT[self.server],
                "frame_size": dict(self._frame_sizes),  # "WxH" -> videos sent at that size
                "frames_per_video": {str(k): v for k, v in sorted(self._frames_per_video.items())},
            }
            if self.server == "openai":
                frames["detail"] = self.cfg.image_detail
            representation: dict[str, Any] = {"video_mode": self.cfg.video_mode, "frames": frames}
            if self.cfg.video_mode == "video_url":
                representation["video_url"] = {"part": "video_url", "url": "the file as a base64 data URL (http(s)/data URLs as given)",
                                                "videos": self._counts["video_url_parts"]}
            tokens = self._prompt_tokens
            return {
                "server": self.server,
                "representation": representation,
                "sampling": list(self._sampling.values()),
                "counts": {k: self._counts[k] for k in ("requests", "answered", "errors", "retries")},
                "errors": dict(self._errors),
                "prompt_tokens": ({"min": min(tokens), "max": max(tokens), "mean": round(sum(tokens) / len(tokens), 1)}
                                  if tokens else None),
            }

    # ------------------------------------------------------------------ bookkeeping

    def _note_sampling(self, params: dict[str, Any], dropped: dict[str, str], n: int) -> None:
        sig = json.dumps(params, sort_keys=True)
        with self._lock:
            entry = self._sampling.setdefault(sig, {"sent": dict(params), "dropped": dict(dropped), "requests": 0})
            entry["requests"] += n
            new = [name for name in dropped if name not in self._warned]
            self._warned.update(new)
        for name in new:
            warnings.warn(
                f"avcap openai engine (server = {self.server!r}): {dropped[name]} "
                "(recorded in run.json's engine_run.sampling)",
                stacklevel=3,
            )

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _failed(self, req: Request, kind: str, error: str, extra: Optional[dict] = None) -> Result:
        with self._lock:
            self._counts["errors"] += 1
            self._errors[kind] += 1
        return Result(key=req.key, text=None, error=redact(error, self._secrets), extra=extra or {})

    # ------------------------------------------------------------------ one request

    def _needs_frames(self, req: Request) -> bool:
        return self.cfg.video_mode == "frames" or any(Path(str(p["video"])).is_dir() for p in video_parts(req.messages))

    def _one(self, req: Request, params: dict[str, Any]) -> Result:
        self._count("requests")
        sizes: list[tuple[int, int]] = []
        try:
            messages = [self._message(m, sizes) for m in req.messages]
        except _BadVideo as exc:
            return self._failed(req, "bad video", str(exc))
        payload = {"model": self.model, "messages": messages, **params, **self._size_hint(sizes)}
        t0 = time.perf_counter()
        data, error, attempts = self._post(payload)
        self._count("retries", attempts - 1)
        extra: dict[str, Any] = {"attempts": attempts, "latency_s": round(time.perf_counter() - t0, 3)}
        if error is not None:
            return self._failed(req, error[0], error[1], extra)
        try:
            choice = data["choices"][0]
            message = choice["message"]
            content = _text_of(message.get("content"))
        except (KeyError, IndexError, TypeError) as exc:
            return self._failed(req, "bad response", f"unexpected response shape ({exc!r})", extra)
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        raw = f"<think>\n{reasoning}\n</think>\n\n{content}" if reasoning else content
        usage = data.get("usage") or {}
        extra["finish_reason"] = choice.get("finish_reason")
        prompt_tokens = usage.get("prompt_tokens")
        with self._lock:
            self._counts["answered"] += 1
            if isinstance(prompt_tokens, int):
                self._prompt_tokens.append(prompt_tokens)
        return Result(
            key=req.key,
            text=final_answer(raw),
            raw_text=raw,
            num_input_tokens=prompt_tokens,
            num_output_tokens=usage.get("completion_tokens"),
            extra=extra,
        )

    def _message(self, m: dict[str, Any], sizes: list[tuple[int, int]]) -> dict[str, Any]:
        content = m.get("content")
        if not isinstance(content, list):
            return {"role": m["role"], "content": content}
        parts: list[dict[str, Any]] = []
        for part in content:
            kind = part.get("type")
            if kind == "video":
                parts.extend(self._video_parts(part, sizes))
            elif kind == "text":
                parts.append({"type": "text", "text": part["text"]})
            else:
                parts.append(part)  # image_url etc. pass through
        return {"role": m["role"], "content": parts}

    def _video_parts(self, part: dict[str, Any], sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        src = str(part["video"])
        if self.cfg.video_mode == "video_url" and not Path(src).is_dir():
            try:
                url = video_url(src)
            except OSError as exc:
                raise _BadVideo(describe_error(exc, src)) from None
            self._count("video_url_parts")
            return [{"type": "video_url", "video_url": {"url": url}}]
        try:
            vf = self.frames.frames(part)
        except Exception as exc:
            raise _BadVideo(describe_error(exc, src)) from None
        height, width = int(vf.frames.shape[1]), int(vf.frames.shape[2])
        sizes.append((height, width))
        with self._lock:
            self._frame_sizes[f"{width}x{height}"] += 1
            self._frames_per_video[len(vf.frames)] += 1
        fmt = self.cfg.image_format
        image: dict[str, Any] = {}
        if self.server == "openai":
            image["detail"] = self.cfg.image_detail
        return [{"type": "image_url", "image_url": {"url": image_data_url(f, fmt), **image}} for f in vf.frames]

    def _size_hint(self, sizes: list[tuple[int, int]]) -> dict[str, Any]:
        """Request fields that keep the frames at their size on servers that resize images by pixel bounds."""
        if not sizes or self.server == "openai":
            return {}
        pixels = [h * w for h, w in sizes]
        size = {"shortest_edge": min(pixels), "longest_edge": max(pixels)}
        if self.server == "vllm":
            return {"mm_processor_kwargs": {"size": size}}
        return {"chat_template_kwargs": {"images_kwargs": {"size": size}}}

    def _post(self, payload: dict[str, Any]) -> tuple[Optional[dict], Optional[tuple[str, str]], int]:
        """(response JSON, None, attempts) or (None, (error kind, error text), attempts)."""
        import httpx

        attempts = 0
        while True:
            attempts += 1
            retry_after = None
            try:
                r = self._client.post(self.url, json=payload)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                kind, error = type(exc).__name__, f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code == 200:
                    try:
                        return r.json(), None, attempts
                    except ValueError:
                        return None, ("bad response", f"HTTP 200 with a body that is not JSON: {r.text[:200]!r}"), attempts
                kind = f"HTTP {r.status_code}"
                error = f"HTTP {r.status_code}: {' '.join(redact(r.text, self._secrets).split())[:300]}"
                if r.status_code not in RETRY_STATUS:
                    return None, (kind, error), attempts
                retry_after = parse_retry_after(r.headers.get("retry-after"))
            if attempts > self.cfg.max_retries:
                return None, (kind, f"{error} (gave up after {attempts} attempts)"), attempts
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


def sampling_params(s: Sampling, server: str = "openai") -> tuple[dict[str, Any], dict[str, str]]:
    """The chat-completions sampling fields for avcap's engine-neutral `s` on a `server` kind
    (`SERVERS`), and the settings that cannot be sent there: {name: why}."""
    p: dict[str, Any] = {"max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p}
    if s.seed is not None:
        p["seed"] = s.seed
    dropped: dict[str, str] = {}
    if server == "openai":
        p["presence_penalty"] = s.presence_penalty
        why = ("has no chat-completions field, not sent (a plain OpenAI endpoint rejects it); name the "
               "server in [avcap.engine] server if it takes it (vllm, transformers-serve)")
        if s.top_k > 0:
            dropped["top_k"] = f"top_k = {s.top_k} {why}"
        if s.repetition_penalty != 1.0:
            dropped["repetition_penalty"] = f"repetition_penalty = {s.repetition_penalty} {why}"
    elif server == "vllm":
        p.update(presence_penalty=s.presence_penalty, top_k=s.top_k if s.top_k > 0 else -1,
                 repetition_penalty=s.repetition_penalty)
    elif server == "transformers-serve":
        sample = s.temperature > 0
        gen = {"do_sample": sample, "top_k": s.top_k if sample and s.top_k > 0 else 0, "top_p": s.top_p,
               "repetition_penalty": s.repetition_penalty}
        p["generation_config"] = json.dumps(gen, sort_keys=True)
        if s.presence_penalty:
            dropped["presence_penalty"] = (
                f"presence_penalty = {s.presence_penalty} not sent: transformers serve ignores it (HF generate has "
                "no presence penalty), so the server samples without it"
            )
    else:
        raise ValueError(f"unknown server kind {server!r} ({', '.join(SERVERS)})")
    return p, dropped


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
