"""Engines: the OpenAI engine over real HTTP, the transformers engine on the tiny model, the vLLM guard."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import warnings
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from avcap.core.config import Engine as EngineConfig
from avcap.core.config import Sampling, Vision, load_config
from avcap.engines import Request, build_messages, make_engine
from avcap.engines.frames import FrameLoader, video_kwargs

SYSTEM = "You are a helpful assistant."


# ----------------------------------------------------------------------------- a local chat server


class ChatServer:
    """A chat-completions endpoint on 127.0.0.1:<free port>; `script` says what each POST returns."""

    def __init__(self, script):
        self.script = list(script)  # (status, headers, body) per request; the last one repeats
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
                n = len(server.requests) - 1
                status, headers, payload = server.script[min(n, len(server.script) - 1)]
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(text: str, prompt_tokens: int = 11, completion_tokens: int = 3) -> dict:
    return {
        "id": "x", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


def openai_engine(base_url: str, **kw):
    from avcap.engines.openai_engine import OpenAIEngine

    settings = dict(name="openai", base_url=base_url, api_key_env="AVCAP_TEST_KEY", concurrency=2, max_retries=2)
    settings.update(kw)
    cfg = EngineConfig(**settings)
    return OpenAIEngine(cfg, vision=Vision(nframes=4, max_pixels=64 * 96), model="served-model", backoff_base_s=0.01)


def test_openai_retries_429_then_answers_with_frames_and_key(monkeypatch, h264_clip):
    monkeypatch.setenv("AVCAP_TEST_KEY", "sk-test-123")
    script = [(429, {"Retry-After": "0"}, {"error": "slow down"}), (200, {}, completion("<think>hmm</think>\n\nB"))]
    with ChatServer(script) as srv:
        eng = openai_engine(srv.base_url)
        msgs = build_messages(SYSTEM, "Which letter?", str(h264_clip), reasoning_suffix="Think first.")
        [res] = eng.generate([Request(key="k1", messages=msgs)], Sampling(temperature=0, max_tokens=7, top_k=-1))
        eng.close()
    assert res.error is None, res.error
    assert res.text == "B" and res.raw_text.startswith("<think>hmm")
    assert (res.num_input_tokens, res.num_output_tokens, res.extra["attempts"]) == (11, 3, 2)
    assert len(srv.requests) == 2
    req = srv.requests[-1]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test-123"
    body = req["json"]
    assert body["model"] == "served-model" and body["max_tokens"] == 7 and body["temperature"] == 0.0
    assert "top_k" not in body and "repetition_penalty" not in body  # vLLM extensions only when set
    assert body["messages"][0] == {"role": "system", "content": SYSTEM}
    parts = body["messages"][1]["content"]
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == 4 and parts[:4] == images  # media first, one image per sampled frame
    assert all(p["image_url"]["url"].startswith("data:image/jpeg;base64,") for p in images)
    assert base64.b64decode(images[0]["image_url"]["url"].split(",", 1)[1])[:2] == b"\xff\xd8"  # a JPEG
    assert parts[-1] == {"type": "text", "text": "Which letter?\n\nThink first."}
    assert "sk-test-123" not in repr(eng)


def test_openai_gives_up_after_retries_and_does_not_retry_4xx(monkeypatch, h264_clip):
    monkeypatch.delenv("AVCAP_TEST_KEY", raising=False)
    with ChatServer([(503, {}, {"error": "down"})]) as srv:
        eng = openai_engine(srv.base_url, max_retries=2)
        [res] = eng.generate([Request("k", build_messages(SYSTEM, "hi", str(h264_clip)))], Sampling())
        eng.close()
    assert res.text is None and "HTTP 503" in res.error and "gave up after 3 attempts" in res.error
    assert len(srv.requests) == 3
    assert "Authorization" not in srv.requests[0]["headers"]  # no key in the environment: no header
    with ChatServer([(400, {}, {"error": "bad request"})]) as srv:
        eng = openai_engine(srv.base_url)
        [res] = eng.generate([Request("k", build_messages(SYSTEM, "hi", str(h264_clip)))], Sampling())
        eng.close()
    assert "HTTP 400" in res.error and len(srv.requests) == 1


def test_openai_video_url_mode_sampling_extensions_and_bad_video(monkeypatch, h264_clip, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage")
    with ChatServer([(200, {}, completion("ok"))]) as srv:
        eng = openai_engine(srv.base_url, video_mode="video_url", server="vllm")
        s = Sampling(temperature=0.7, top_p=0.8, top_k=20, presence_penalty=1.5, max_tokens=9, seed=3)
        good, missing = eng.generate(
            [Request("a", build_messages(SYSTEM, "hi", str(h264_clip))),
             Request("b", build_messages(SYSTEM, "hi", str(tmp_path / "nope.mp4")))], s)
        eng.close()
        eng2 = openai_engine(srv.base_url, server="vllm")  # frames mode: a corrupt file fails before any HTTP
        [broken] = eng2.generate([Request("c", build_messages(SYSTEM, "hi", str(bad)))], s)
        eng2.close()
    assert good.text == "ok" and missing.error and str(tmp_path / "nope.mp4") in missing.error
    assert broken.text is None and broken.error.startswith(str(bad))
    assert len(srv.requests) == 1
    body = srv.requests[0]["json"]
    video = body["messages"][1]["content"][0]
    assert video["type"] == "video_url"
    assert base64.b64decode(video["video_url"]["url"].split(",", 1)[1]) == h264_clip.read_bytes()
    assert video["video_url"]["url"].startswith("data:video/mp4;base64,")
    assert (body["top_p"], body["top_k"], body["presence_penalty"], body["seed"]) == (0.8, 20, 1.5, 3)
    assert body["repetition_penalty"] == 1.0 and "mm_processor_kwargs" not in body  # no frames: no size hint
    rec = eng.run_record()
    assert rec["representation"]["video_url"]["videos"] == 1 and rec["representation"]["frames"]["frame_size"] == {}
    assert rec["counts"] == {"requests": 2, "answered": 1, "errors": 1, "retries": 0} and rec["errors"] == {"bad video": 1}


def test_openai_server_kinds_send_their_fields_and_drop_with_a_warning(h264_clip):
    """What each `server` kind sends for the recipe's caption sampling and greedy MCQ, the frames' size
    hint, and the settings that cannot be sent: one warning per engine, recorded in run_record."""
    caption = Sampling(temperature=0.7, top_p=0.8, top_k=20, presence_penalty=1.5, max_tokens=9, seed=0)
    greedy = Sampling(temperature=0, max_tokens=3)
    bodies, records = {}, {}
    for server in ("openai", "vllm", "transformers-serve"):
        with ChatServer([(200, {}, completion("ok"))]) as srv:
            eng = openai_engine(srv.base_url, server=server)
            reqs = [Request(k, build_messages(SYSTEM, "hi", str(h264_clip))) for k in ("a", "b")]
            with pytest.warns(UserWarning) if server != "vllm" else _no_warning():
                results = eng.generate(reqs, caption)
            with _no_warning():  # once per engine, and greedy drops nothing
                results += eng.generate(reqs[:1], caption) + eng.generate(reqs[:1], greedy)
            records[server] = eng.run_record()
            eng.close()
        assert all(r.error is None for r in results)
        bodies[server] = [r["json"] for r in srv.requests]
    standard = {"model", "messages", "max_tokens", "temperature", "top_p", "presence_penalty", "seed"}
    for server, body in zip(bodies, (b[0] for b in bodies.values())):
        images = [p for p in body["messages"][1]["content"] if p["type"] == "image_url"]
        assert len(images) == 4 and body["top_p"] == 0.8 and body["seed"] == 0
        assert ("detail" in images[0]["image_url"]) == (server == "openai")
    o, v, t = (bodies[k][0] for k in ("openai", "vllm", "transformers-serve"))
    from PIL import Image

    url = o["messages"][1]["content"][0]["image_url"]["url"]
    w, h = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size  # the sampled size, sent as is
    hint = {"size": {"shortest_edge": w * h, "longest_edge": w * h}}
    assert set(o) == standard and o["presence_penalty"] == 1.5 and o["messages"][1]["content"][0]["image_url"]["detail"] == "auto"
    assert (v["top_k"], v["repetition_penalty"], v["presence_penalty"]) == (20, 1.0, 1.5)
    assert v["mm_processor_kwargs"] == hint
    assert "presence_penalty" not in t and "top_k" not in t and "repetition_penalty" not in t
    assert json.loads(t["generation_config"]) == {"do_sample": True, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.0}
    assert t["chat_template_kwargs"] == {"images_kwargs": hint}
    assert json.loads(bodies["transformers-serve"][-1]["generation_config"])["do_sample"] is False
    assert bodies["vllm"][-1]["top_k"] == -1  # off is sent too: vLLM would take the checkpoint's top_k
    for server, rec in records.items():
        assert rec["server"] == server and rec["counts"]["requests"] == 4 and rec["counts"]["errors"] == 0
        frames = rec["representation"]["frames"]
        assert frames["frame_size"] == {f"{w}x{h}": 4} and frames["frames_per_video"] == {"4": 4}
        assert [e["requests"] for e in rec["sampling"]] == [3, 1]
        assert rec["prompt_tokens"] == {"min": 11, "max": 11, "mean": 11.0}
    assert set(records["openai"]["sampling"][0]["dropped"]) == {"top_k"}
    assert set(records["transformers-serve"]["sampling"][0]["dropped"]) == {"presence_penalty"}
    assert records["vllm"]["sampling"][0]["dropped"] == {} and records["openai"]["sampling"][1]["dropped"] == {}


class _no_warning:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)


def test_server_kind_is_validated(tmp_path):
    from avcap.core.config import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text('[avcap.engine]\nserver = "sglang"\n')
    with pytest.raises(ConfigError, match=r"avcap\.engine\.server: Input should be 'openai', 'vllm' or 'transformers-serve'"):
        load_config(bad)


def test_retry_after_parsing():
    from avcap.engines.openai_engine import parse_retry_after

    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now


# ----------------------------------------------------------------------------- frames


def test_video_kwargs_part_overrides_follow_nframes_xor_fps():
    v = Vision(nframes=16, max_pixels=360000)
    assert video_kwargs(v, {"video": "x"}, 32)["nframes"] == 16
    kw = video_kwargs(v, {"video": "x", "fps": 1.0, "max_pixels": 1000}, 28)
    assert "nframes" not in kw and kw["fps"] == 1.0 and kw["max_pixels"] == 1000 and kw["factor"] == 28
    kw = video_kwargs(Vision(fps=2.0), {"video": "x", "nframes": 8}, 32)
    assert kw["nframes"] == 8 and "fps" not in kw and "min_frames" not in kw


def test_frame_loader_decodes_each_video_once(monkeypatch, h264_clip):
    import avcap.engines.frames

    calls = []
    real = avcap.engines.frames.load_video
    monkeypatch.setattr(avcap.engines.frames, "load_video", lambda path, **kw: calls.append(path) or real(path, **kw))
    loader = FrameLoader(Vision(nframes=4), 32, workers=2)
    reqs = [Request(f"q{i}", build_messages(SYSTEM, f"question {i}", str(h264_clip))) for i in range(12)]
    loader.prefetch(reqs[6:])
    frames = [loader.frames(r.messages[1]["content"][0]) for r in reqs]
    loader.close()
    assert len(calls) == 1 and all(f is frames[0] for f in frames)
    assert frames[0].frames.shape[0] == 4



def test_frame_loader_hold_decodes_only_the_first_videos_until_released(h264_clip):
    """`hold(n)`: the workers start only the next n queued videos (a fresh engine's first batch while it
    imports its libraries); the rest wait in the queue, in order, until `release()`."""
    import time

    loader = FrameLoader(Vision(nframes=4), 32, workers=2)
    try:
        loader.hold(1)
        parts = [{"type": "video", "video": str(h264_clip), "nframes": n} for n in (4, 6, 8)]
        loader.prefetch([Request("a", [{"role": "user", "content": parts}])])
        assert loader.frames(parts[0]).frames.shape[0] == 4
        time.sleep(0.3)  # the second worker is idle, not decoding the held videos
        assert loader.decoded_by["cpu"] == 1 and len(loader._todo) == 2
        assert "released_at_s" not in loader.startup()["held"]
        loader.release()
        assert [loader.frames(p).frames.shape[0] for p in parts] == [4, 6, 8] and loader.decoded_by["cpu"] == 3
        held = loader.startup()["held"]
        assert held["videos"] == 1 and held["released_at_s"] > 0
    finally:
        loader.close()


def test_frame_loader_hold_widens_to_a_larger_first_batch(h264_clip):
    """`widen_hold(n)` while held: up to n videos in all start (a planned first batch larger than
    `first_batch`); it never narrows a hold, and does nothing once released."""
    import time

    loader = FrameLoader(Vision(nframes=4), 32, workers=3)
    try:
        loader.hold(1)
        loader.widen_hold(1)
        parts = [{"type": "video", "video": str(h264_clip), "nframes": n} for n in (4, 6, 8, 10)]
        loader.prefetch([Request("a", [{"role": "user", "content": parts}])])
        loader.widen_hold(3)
        loader.widen_hold(2)
        assert [loader.frames(p).frames.shape[0] for p in parts[:3]] == [4, 6, 8]
        time.sleep(0.3)  # the third worker is idle: the fourth video waits for the release
        assert loader.decoded_by["cpu"] == 3 and len(loader._todo) == 1 and loader.startup()["held"]["videos"] == 3
        loader.release()
        loader.widen_hold(10)
        assert loader.frames(parts[3]).frames.shape[0] == 10 and loader.startup()["held"]["videos"] == 3
    finally:
        loader.close()


def test_frame_loader_processes_survive_a_bad_video_and_a_dead_worker(tmp_path, h264_clip):
    """In worker processes a corrupt video fails only itself (its VideoError crosses the process
    boundary; it used to break the pool for the rest of the run), and a killed worker process costs
    no video: the pool is started again and the video retried."""
    import os
    import signal
    import time

    from avcap.video import load_video

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    loader = FrameLoader(Vision(nframes=4), 32, workers=1, processes=True)
    try:
        with pytest.raises(ValueError, match=f"{broken}: not a video"):
            loader.frames({"video": str(broken)})
        first = loader.frames({"video": str(h264_clip)})
        assert (first.frames == load_video(h264_clip, nframes=4).frames).all()
        pool = loader._procs["cpu"]
        for pid in list(pool._processes):
            os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 30
        while not pool._broken and time.time() < deadline:
            time.sleep(0.05)
        assert pool._broken
        again = loader.frames({"video": str(h264_clip), "nframes": 6})
        assert again.frames.shape[0] == 6 and loader._procs["cpu"] is not pool
    finally:
        loader.close()


# ----------------------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
def hf_engine(varied_model_dir):
    cfg = load_config(None).avcap.engine.model_copy(update={"batch_size": 3, "device": "cpu"})
    eng = make_engine(cfg, vision=Vision(nframes=8, max_pixels=64 * 96), model=str(varied_model_dir))
    yield eng
    eng.close()


def test_transformers_video_tokens_match_avcap_video(hf_engine, h264_clip):
    from avcap.video import num_video_tokens

    [res] = hf_engine.generate([Request("k", build_messages(SYSTEM, "Describe.", str(h264_clip)))], Sampling(max_tokens=3))
    assert res.error is None
    t = res.extra["num_frames"][0]
    h, w = res.extra["frame_size"][0]
    assert (t, h % 32, w % 32) == (8, 0, 0)
    assert res.extra["num_video_tokens"] == num_video_tokens(t, h, w, 16, 2, 2)
    assert 0 < res.num_output_tokens <= 3 and res.num_input_tokens > res.extra["num_video_tokens"]


def test_transformers_processor_keeps_frames_and_timestamps(hf_engine, h264_clip):
    """do_sample_frames=False / do_resize=False: the grid is avcap.video's frames exactly, and the
    prompt's timestamps come from the source fps and the sampled indices."""
    vf = hf_engine.frames.frames({"video": str(h264_clip)})
    req = Request("k", build_messages(SYSTEM, "Describe.", str(h264_clip)))
    inputs = hf_engine.inputs_for([(req, [vf])])
    t, h, w = vf.frames.shape[:3]
    assert inputs["video_grid_thw"].tolist() == [[t // 2, h // 16, w // 16]]
    text = hf_engine.processor.tokenizer.decode(inputs["input_ids"][0])
    idx = vf.frame_indices
    first = (idx[0] + idx[1]) / 2 / vf.fps
    last = (idx[-2] + idx[-1]) / 2 / vf.fps
    assert f"<{first:.1f} seconds>" in text and f"<{last:.1f} seconds>" in text
    assert text.count(" seconds>") == t // 2


REAL_CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "udacity_solidWhiteRight.mp4"


@pytest.mark.skipif(not REAL_CLIP.exists(), reason="../shared/data (real dash-cam clip) is absent")
def test_transformers_on_real_dashcam_footage_with_recipe_vision(varied_model_dir):
    """960x540 at 25 fps, the recipe's nframes=16 / max_pixels=360000: 16 frames at the qwen-vl-utils
    size, one video token per 32x32 pixels per frame pair, timestamps from 25 fps."""
    from avcap.video import load_video, num_video_tokens

    cfg = load_config(None).avcap.engine.model_copy(update={"device": "cpu"})
    vision = Vision(nframes=16, max_pixels=360000)
    eng = make_engine(cfg, vision=vision, model=str(varied_model_dir))
    try:
        [res] = eng.generate([Request("k", build_messages(SYSTEM, "Describe.", str(REAL_CLIP)))], Sampling(max_tokens=2))
        vf = eng.frames.frames({"video": str(REAL_CLIP)})
    finally:
        eng.close()
    ref = load_video(REAL_CLIP, nframes=16, max_pixels=360000, min_pixels=vision.min_pixels, factor=32)
    assert res.error is None and vf.frames.shape == ref.frames.shape and vf.fps == 25
    t, h, w = vf.frames.shape[:3]
    assert res.extra["num_video_tokens"] == num_video_tokens(t, h, w) == t // 2 * (h // 32) * (w // 32)


def test_transformers_batched_equals_single_and_bad_video_fails_alone(hf_engine, infer_data_dir):
    videos = sorted((infer_data_dir / "AV_CAPTION" / "videos").glob("av0000*.mp4"))
    bad = infer_data_dir / "AV_CAPTION" / "videos" / "av99999.mp4"
    reqs = [Request(f"k{i}", build_messages(SYSTEM, f"Describe clip {i}.", str(v))) for i, v in enumerate(videos)]
    reqs.insert(2, Request("bad", build_messages(SYSTEM, "Describe.", str(bad))))
    s = Sampling(temperature=0, max_tokens=6)
    batched = hf_engine.generate(reqs, s)
    assert [r.key for r in batched] == [r.key for r in reqs]
    assert batched[2].text is None and batched[2].error.startswith(str(bad))
    singles = [hf_engine.generate([r], s)[0] for r in reqs]
    assert [r.raw_text for r in batched] == [r.raw_text for r in singles]
    texts = [r.raw_text for r in batched if r.error is None]
    assert len(set(texts)) > 1  # the output depends on the input (else this test could not fail)


def test_transformers_encodes_a_shared_video_once_with_identical_answers(hf_engine, h264_clip, infer_data_dir):
    other = infer_data_dir / "AV_CAPTION" / "videos" / "av00001.mp4"
    reqs = [Request(f"q{i}", build_messages(SYSTEM, f"Question {i}: what happens?", str(h264_clip))) for i in range(4)]
    reqs.insert(1, Request("other", build_messages(SYSTEM, "Question 9: what happens?", str(other))))
    # the fast path's first prefill with videos compares host vision inputs with the plain call
    # (two vision-tower calls) if no test made one yet: done here, outside the count
    hf_engine.generate(reqs[:1], Sampling(temperature=0, max_tokens=1))
    visual = hf_engine.model.model.visual
    seen = []
    real_forward = visual.forward
    visual.forward = lambda pixels, grid_thw=None, **kw: seen.append(len(grid_thw)) or real_forward(pixels, grid_thw=grid_thw, **kw)
    try:
        s = Sampling(temperature=0, max_tokens=6)
        hf_engine.batch_size = 5
        batched = hf_engine.generate(reqs, s)
        assert seen == [2]  # five requests, two distinct videos, one vision-tower call
        hf_engine.batch_size = 1
        singles = [hf_engine.generate([r], s)[0] for r in reqs]
    finally:
        visual.forward = real_forward
        hf_engine.batch_size = 3
    assert [r.raw_text for r in batched] == [r.raw_text for r in singles]
    assert len({r.raw_text for r in batched}) > 1


def test_generate_path_encodes_a_shared_video_once_or_says_why_not(varied_model_dir, h264_clip, infer_data_dir):
    """Plain generate (fast path off): transformers 5.25 takes pre-encoded features, so the vision
    tower runs once per distinct video; 4.57's and 5.17's forward cannot, which is warned once and counted."""
    other = infer_data_dir / "AV_CAPTION" / "videos" / "av00001.mp4"
    cfg = load_config(None).avcap.engine.model_copy(update={"batch_size": 4, "device": "cpu", "fast_generate": False})
    eng = make_engine(cfg, vision=Vision(nframes=8, max_pixels=64 * 96), model=str(varied_model_dir))
    reqs = [Request(f"q{i}", build_messages(SYSTEM, f"Question {i}: what happens?", str(h264_clip))) for i in range(3)]
    reqs.insert(1, Request("other", build_messages(SYSTEM, "Question 9: what happens?", str(other))))
    visual = eng.model.model.visual
    seen = []
    real_forward = visual.forward
    visual.forward = lambda pixels, grid_thw=None, **kw: seen.append(len(grid_thw)) or real_forward(pixels, grid_thw=grid_thw, **kw)
    s = Sampling(temperature=0, max_tokens=6)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batched = eng.generate(reqs, s)
        eng.batch_size = 1
        singles = [eng.generate([r], s)[0] for r in reqs]
    finally:
        visual.forward = real_forward
        eng.close()
    assert {r.extra["path"] for r in batched} == {"generate"}
    assert [r.raw_text for r in batched] == [r.raw_text for r in singles]
    fallbacks = {k: v for k, v in eng.run_record()["fallbacks"].items() if "once per request" in k}
    if eng.share_vision:
        assert seen[:1] == [2] and not fallbacks  # four requests, two distinct videos, one vision-tower call
    else:
        assert seen[:1] == [4] and list(fallbacks.values()) == [4]
        assert len([w for w in caught if "once per request" in str(w.message)]) == 1


def test_generation_config_and_presence_penalty():
    import torch
    from transformers import GenerationConfig

    from avcap.engines.hf.engine import generation_config, presence_penalty_processor

    base = GenerationConfig(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, eos_token_id=[5, 6], pad_token_id=0)
    g = generation_config(Sampling(temperature=0, max_tokens=10), base)
    assert (g.do_sample, g.max_new_tokens, g.num_beams, g.eos_token_id) == (False, 10, 1, [5, 6])
    g = generation_config(Sampling(temperature=0.7, top_p=0.8, top_k=-1, repetition_penalty=1.1), base)
    assert (g.do_sample, g.temperature, g.top_p, g.top_k, g.repetition_penalty) == (True, 0.7, 0.8, 0, 1.1)
    proc = presence_penalty_processor(1.5, prompt_len=2)
    ids = torch.tensor([[1, 2, 3, 3], [4, 1, 2, 2]])
    out = proc(ids, torch.zeros(2, 6))
    assert out[0].tolist() == [0, 0, 0, -1.5, 0, 0]  # 3 generated (twice: once), 1 and 2 only in the prompt
    assert out[1].tolist() == [0, 0, -1.5, 0, 0, 0]


# ----------------------------------------------------------------------------- vllm


def test_vllm_engine_says_how_to_install():
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed here")
    from avcap.engines.vllm_engine import VLLMNotInstalled

    cfg = EngineConfig(name="vllm")
    with pytest.raises(VLLMNotInstalled, match=r"pip install 'avcap\[vllm\]'"):
        make_engine(cfg, vision=Vision(nframes=4), model="whatever")



def test_transformers_loads_in_the_background_and_records_its_load(varied_model_dir, h264_clip, tmp_path, monkeypatch):
    """The constructor returns before the weights are loaded (the frame decoders take the first
    videos meanwhile: the first prefetched batch's, however many that is); `generate` waits for the
    load; run.json's engine_run says where the load's time went."""
    import shutil
    import threading

    # this process has torch imported: the load would end its imports (and the hold) at once
    imports_done, release = threading.Event(), FrameLoader.release
    monkeypatch.setattr(FrameLoader, "release", lambda self: (imports_done.wait(30), release(self)))
    cfg = load_config(None).avcap.engine.model_copy(update={"batch_size": 2, "device": "cpu", "first_batch": 1})
    eng = make_engine(cfg, vision=Vision(nframes=8, max_pixels=64 * 96), model=str(varied_model_dir))
    try:
        req = Request("k", build_messages(SYSTEM, "Describe.", str(h264_clip)))
        other = Request("o", build_messages(SYSTEM, "Describe.", str(shutil.copy(h264_clip, tmp_path / "o.mp4"))))
        eng.prefetch([req, other])  # decoding starts whether or not the model is there yet
        assert eng.frames.startup()["held"] == {"videos": 2}  # first_batch = 1, but the first batch has two
        imports_done.set()
        [res] = eng.generate([req], Sampling(max_tokens=3))
        assert res.error is None and res.num_output_tokens > 0
        rec = eng.run_record()
        load, start = rec["load"], rec["startup"]
        assert set(load) >= {"imports_s", "processor_s", "weights_s", "to_device_s", "setup_s", "waited_s"}
        assert load["direct_to_device"] is False  # on the CPU nothing to put anywhere
        assert all(load[k] >= 0 for k in ("imports_s", "weights_s", "setup_s", "waited_s"))
        # the weights were read during the imports (avcap.engines.hf.weights)
        early = load["early_weights"]
        assert early["used"] is True and early["read_s"] >= 0 and early["waited_s"] >= 0
        assert early["reader"] == "safetensors" and "fallback" not in early  # the host maps the files
        first = start["first_call"]
        # one timeline, seconds from the constructor's start: decoders, constructor, model, first call
        assert start["decoders_started_at_s"] <= start["constructed_at_s"] <= first["called_at_s"]
        assert first["called_at_s"] <= first["frames_ready_at_s"] <= first["model_ready_at_s"] <= first["done_at_s"]
        assert start["model_ready_at_s"] <= first["model_ready_at_s"] and first["requests"] == 1
        assert list(start["frames"]["decoded_at_s"]) == ["1"]  # one video decoded
        # where the first call's time went: the fast path's phases (no compile here: no compile_s)
        assert "compile_s" not in first
        assert first["layer_check_s"] > 0 and first["prefix_s"] > 0 and first["decode_s"] > 0
        assert first["layer_check_s"] + first["prefix_s"] + first["decode_s"] <= first["done_at_s"] - first["called_at_s"]
        assert 0 <= first["step_build_s"] <= first["decode_s"]
    finally:
        eng.close()


def test_closing_an_engine_mid_load_waits_for_the_load(varied_model_dir, monkeypatch):
    """An engine closed while its model loads leaves no load running behind it: transformers builds
    a model under process-wide settings, which a load left running would change under the next model
    built in the process (seen in the suite: another test's models built on the meta device, with
    their init functions no-ops). The weights are held until 1 s after `close()` is called, so the
    close certainly comes mid-load."""
    import threading

    from avcap.engines.hf.engine import TransformersEngine

    go, real = threading.Event(), TransformersEngine._read_weights

    def held(self, *a, **kw):
        go.wait(30)
        return real(self, *a, **kw)

    monkeypatch.setattr(TransformersEngine, "_read_weights", held)
    cfg = load_config(None).avcap.engine.model_copy(update={"device": "cpu", "batch_size": 2})
    eng = make_engine(cfg, vision=Vision(nframes=4, max_pixels=64 * 96), model=str(varied_model_dir))
    try:
        assert not eng._loading.done()
        threading.Timer(1.0, go.set).start()
        eng.close()
        assert eng._loading.done() and eng._loading.exception() is None  # the load ran to its end, then close returned
        assert not any(t.name.startswith("avcap-load") and t.is_alive() for t in threading.enumerate())
    finally:
        go.set()


def test_readahead_asks_for_every_weight_file(varied_model_dir, tmp_path):
    from avcap.engines.hf.engine import readahead

    weights = sum(f.stat().st_size for f in varied_model_dir.glob("*.safetensors"))
    assert weights > 0 and readahead(varied_model_dir) == weights
    assert readahead(tmp_path) == 0  # nothing to read: no error either


def test_auto_device_asks_the_driver_not_torch_and_agrees_with_torch():
    """[avcap.engine] device = "auto" is resolved before the decoders start, without the 2.6 s
    torch import; its answer is torch's."""
    code = ("import sys; from avcap.engines.hf.engine import resolve_device as r; d = r('auto'); "
            "print(d, 'torch' in sys.modules); import torch; print(torch.cuda.is_available())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False"  # torch was not imported to answer
    assert out[0] == ("cuda" if out[2] == "True" else "cpu")


def test_auto_device_reads_the_torch_build_and_defers_to_torch_where_unsure(tmp_path, monkeypatch):
    import importlib.machinery
    import importlib.util

    from avcap.engines.hf import engine

    def layout(*libs: str):
        root = tmp_path / "_".join(libs or ("none",)) / "torch"
        (root / "lib").mkdir(parents=True)
        for name in libs:
            (root / "lib" / name).touch()
        spec = importlib.machinery.ModuleSpec("torch", None, is_package=True)
        spec.submodule_search_locations = [str(root)]
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)

    layout("libtorch_cpu.so")
    assert engine.cuda_devices_without_torch() is False  # a CPU build: torch finds no CUDA
    layout("libtorch_cpu.so", "libtorch_hip.so")
    assert engine.cuda_devices_without_torch() is None  # ROCm: torch is asked
    layout("libtorch_cpu.so", "libtorch_cuda.so")
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    assert engine.cuda_devices_without_torch() is None


def test_the_decoders_start_before_torch_is_imported(tiny_model_dir):
    """A fresh `avcap infer` with compile on: nothing the constructor does before starting the frame
    decoders imports torch (2.6 s on the GPU box; run 58 found the compiler check pulling it in)."""
    code = f"""
import sys
import avcap.engines.hf.engine as E
from avcap.core.config import load_config

class Spy(E.FrameLoader):
    def __init__(self, *a, **k):
        print("torch imported before the decoders:", "torch" in sys.modules, flush=True)
        super().__init__(*a, **k)

E.FrameLoader = Spy
cfg = load_config(None)
engine = E.TransformersEngine(cfg.avcap.engine.model_copy(update={{"compile": True, "device": "auto"}}),
                              vision=cfg.eval_vision, model={str(tiny_model_dir)!r}, decode_workers=1)
engine.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch imported before the decoders: False" in out.stdout


def test_a_failed_batch_runs_request_by_request_and_is_counted(hf_engine, infer_data_dir, monkeypatch):
    """A batch that fails as a whole (here a fault injected below the batch: the model's call raising
    for more than one row) runs its requests one at a time with the same answers, says why once and
    counts it in the run record. Out of memory, the batch is first tried once more whole, after the
    fast path's cache and captured steps are released: once enough, it does not split."""
    videos = sorted((infer_data_dir / "AV_CAPTION" / "videos").glob("av0000*.mp4"))[:3]
    reqs = [Request(f"k{i}", build_messages(SYSTEM, f"Describe clip {i}.", str(v))) for i, v in enumerate(videos)]
    s = Sampling(temperature=0, max_tokens=4)
    hf_engine.new_run()
    expected = [r.raw_text for r in hf_engine.generate(reqs, s)]
    assert hf_engine.run_record()["batch_failures"] == {}
    real = hf_engine._generate_batch
    sizes = []

    import torch

    held = []  # what a failed attempt's frame holds: gone before the batch is tried again

    def failing(error, times):
        def call(chunk, *a, **kw):
            sizes.append(len(chunk))
            assert all(ref() is None for ref in held), "the failed attempt's tensors outlived it"
            if len(chunk) > 1 and sizes.count(len(chunk)) <= times:
                pixels = torch.zeros(4)  # noqa: F841 — a local of the failing frame
                held.append(weakref.ref(pixels))
                raise RuntimeError(error)  # a new one each time: a kept exception keeps its traceback's frames
            return real(chunk, *a, **kw)
        return call

    monkeypatch.setattr(hf_engine, "_generate_batch", failing("the processor broke (injected)", 9))
    hf_engine.new_run()
    with pytest.warns(UserWarning, match=r"a batch of 3 requests failed \(RuntimeError: the processor broke"):
        got = hf_engine.generate(reqs, s)
    assert [r.raw_text for r in got] == expected and all(r.error is None for r in got)
    assert sizes == [3, 1, 1, 1]  # not out of memory: no second try of the whole batch
    record = hf_engine.run_record()
    assert record["batch_failures"] == {"RuntimeError: the processor broke (injected)": 1}
    assert record["counts"]["batch_failure_requests"] == 3

    oom = "CUDA out of memory. Tried to allocate 5.19 GiB (injected)"
    sizes.clear()
    monkeypatch.setattr(hf_engine, "_generate_batch", failing(oom, 1))
    hf_engine.new_run()
    with pytest.warns(UserWarning, match="a batch of 3 requests failed"):
        got = hf_engine.generate(reqs, s)
    assert [r.raw_text for r in got] == expected and sizes == [3, 3]
    assert hf_engine.fast._buffers is not None and hf_engine.fast._buffers["shape"][0] == 3  # released, then rebuilt
    record = hf_engine.run_record()
    assert record["batch_failures"] == {f"RuntimeError: {oom}": 1} and record["counts"]["batch_retried_whole"] == 1
    assert hf_engine.fast.release(unless_rows=3) is False and hf_engine.fast._buffers is not None  # reusable
    assert hf_engine.fast.release(unless_rows=2) is True and hf_engine.fast._buffers is None  # another size: freed
    assert hf_engine.fast._steps == {} and hf_engine.fast.release() is False
    assert len(held) == 2


def test_inputs_that_do_not_fit_beside_the_kept_cache_are_built_again_without_it(hf_engine, infer_data_dir,
                                                                                   monkeypatch):
    """A batch of the last batch's row count keeps its KV cache; when its inputs then run out of
    memory (injected at the processor call), the cache goes and the inputs are built again: same
    answers, said once and counted as a fallback, not a failed batch."""
    videos = sorted((infer_data_dir / "AV_CAPTION" / "videos").glob("av0000*.mp4"))[:4]
    reqs = [Request(f"k{i}", build_messages(SYSTEM, f"Describe clip {i}.", str(v))) for i, v in enumerate(videos)]
    s = Sampling(temperature=0, max_tokens=4)
    hf_engine.new_run()
    expected = [r.raw_text for r in hf_engine.generate(reqs[:2], s) + hf_engine.generate(reqs[2:], s)]
    assert hf_engine.fast.holds_cache
    real = hf_engine.shared_inputs_for
    calls = []

    def once_out_of_memory(chunk):
        calls.append(hf_engine.fast.holds_cache)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 5.66 GiB (injected)")
        return real(chunk)

    monkeypatch.setattr(hf_engine, "shared_inputs_for", once_out_of_memory)
    hf_engine.new_run()
    with pytest.warns(UserWarning, match="did not fit beside the kept KV cache"):
        got = hf_engine.generate(reqs[:2], s)
    assert [r.raw_text for r in got] == expected[:2] and calls == [True, False]
    record = hf_engine.run_record()
    assert record["batch_failures"] == {} and sum(record["fallbacks"].values()) == 2
    [batch] = record["batches"]  # where the batch's time went: the cache built again, its steps too
    assert batch["rows"] == 2 and batch["path"] == "fast" and batch["prepared_ahead"] is False
    assert batch["step_builds"] >= 1 and batch["decode_steps"] == 3 and 0 < batch["prefix_s"] < batch["generate_s"]
