"""The OpenAI engine against real servers on loopback, no mock: `transformers serve` serving the
tiny model (avcap infer through it, caption + mcq), and a stdlib server that echoes the request's
headers in its 401 body, as some proxies do (the API key must never be kept)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from avcap.core.config import load_config
from avcap.engines import Request, build_messages
from avcap.core.records import read_records

KEY = "sk-avcap-test-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(path: Path, data: Path, engine: dict, model: str) -> Path:
    lines = [f'{k} = {json.dumps(v)}' for k, v in {"name": "openai", "concurrency": 2, "max_retries": 0, **engine}.items()]
    path.write_text(f"""
[policy]
model_name_or_path = "{model}"
[custom.vision]
nframes = 4
max_pixels = 6144
[avcap.engine]
{chr(10).join(lines)}
[avcap.sampling.caption]
temperature = 0.7
top_p = 0.8
top_k = 20
presence_penalty = 1.5
seed = 0
max_tokens = 8
[avcap.sampling.mcq]
max_tokens = 3
[avcap.datasets.AV_CAPTION]
kind = "av_caption"
root = "{data / 'AV_CAPTION'}"
""")
    return path


# ----------------------------------------------------------------------------- transformers serve


@pytest.fixture(scope="module")
def served_tiny(tiny_model_dir, tmp_path_factory):
    """`transformers serve <tiny model>` on 127.0.0.1:<free port>, CPU: (base_url, log path)."""
    from transformers.utils.import_utils import is_accelerate_available, is_serve_available

    if not (is_serve_available() and is_accelerate_available()):
        pytest.skip("transformers serve needs fastapi, uvicorn, openai and accelerate (pip install -e '.[dev]')")
    import httpx

    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "transformers.cli.transformers", "serve", str(tiny_model_dir),
             "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            stdout=fh, stderr=subprocess.STDOUT, env=env,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not up after 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_avcap_infer_through_transformers_serve(served_tiny, tiny_model_dir, infer_data_dir, tmp_path):
    base_url, log = served_tiny
    cfg_path = _config(tmp_path / "recipe.toml", infer_data_dir,
                       {"base_url": base_url, "server": "transformers-serve", "api_key_env": "AVCAP_SERVE_TEST_KEY"},
                       str(tiny_model_dir))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "avcap", "infer", "--config", str(cfg_path), "--dataset", "AV_CAPTION",
         "--tasks", "caption,mcq", "--limit", "2", "--model-name", "served", "--outputs-dir", str(out), "--no-progress"],
        env={**os.environ, "AVCAP_SERVE_TEST_KEY": KEY, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr + log.read_text()[-3000:]
    # the caption recipe's presence_penalty has no equivalent in transformers serve: said once, loudly
    assert proc.stderr.count("presence_penalty = 1.5 not sent") == 1, proc.stderr
    d = out / "served" / "base" / "AV_CAPTION"
    caption, mcq = read_records(d / "caption.jsonl"), read_records(d / "mcq.jsonl")
    assert len(caption) == 2 and len(mcq) == 6  # 2 videos, 3 questions each
    assert [r["error"] for r in caption + mcq] == [None] * 8
    assert all(r["num_output_tokens"] and 0 < r["num_input_tokens"] < 1000 for r in caption + mcq)

    run = json.loads((d / "run.json").read_text())
    er = run["engine_run"]
    assert run["engine"]["server"] == "transformers-serve" and er["server"] == "transformers-serve"
    frames = er["representation"]["frames"]
    assert er["representation"]["video_mode"] == "frames" and frames["part"] == "image_url" and frames["format"] == "jpeg"
    assert frames["size_hint"] == "chat_template_kwargs.images_kwargs.size" and frames["frames_per_video"] == {"4": 8}
    [(size, n)] = frames["frame_size"].items()
    assert n == 8
    width, height = map(int, size.split("x"))
    assert er["counts"] == {"requests": 8, "answered": 8, "errors": 0, "retries": 0} and er["errors"] == {}
    cap_entry = next(e for e in er["sampling"] if e["sent"]["temperature"] == 0.7)
    assert json.loads(cap_entry["sent"]["generation_config"])["top_k"] == 20 and cap_entry["requests"] == 2
    assert set(cap_entry["dropped"]) == {"presence_penalty"}
    for f in d.iterdir():
        assert KEY not in f.read_text()

    # The server processed each frame at the sampled size: a video request costs exactly what the same
    # text costs plus, per frame, its (W/32)x(H/32) merged patches between <|vision_start|>/<|vision_end|>
    # (without the size hint, Qwen3-VL's image processor would upscale each to 65536 pixels: 64 each)
    from avcap.engines.openai_engine import OpenAIEngine

    cfg = load_config(cfg_path)
    eng = OpenAIEngine(cfg.avcap.engine, vision=cfg.eval_vision, model=str(tiny_model_dir))
    video = sorted((infer_data_dir / "AV_CAPTION" / "videos").glob("av0000*.mp4"))[0]
    with_video, text_only = eng.generate(
        [Request("v", build_messages("You are a helpful assistant.", "Describe.", str(video))),
         Request("t", build_messages("You are a helpful assistant.", "Describe."))],
        cfg.avcap.sampling.mcq,
    )
    eng.close()
    assert with_video.error is None and text_only.error is None
    per_frame = (width // 32) * (height // 32) + 2
    assert with_video.num_input_tokens - text_only.num_input_tokens == 4 * per_frame


# ----------------------------------------------------------------------------- the key never kept


class EchoHeaders401:
    """A loopback server that answers every POST with 401 and the request's headers in the body."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                body = json.dumps({"error": {"message": "invalid api key", "request_headers": dict(self.headers),
                                             "hint": f"got {self.headers.get('Authorization')}"}}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_error_records_never_hold_the_key(infer_data_dir, tmp_path, monkeypatch, capsys):
    from avcap.eval.infer import run_inference

    monkeypatch.setenv("AVCAP_ECHO_KEY", KEY)
    with EchoHeaders401() as base_url:
        cfg = load_config(_config(tmp_path / "recipe.toml", infer_data_dir,
                                  {"base_url": base_url, "api_key_env": "AVCAP_ECHO_KEY", "model": "served-model"},
                                  "served-model"))
        run_inference(cfg, dataset="AV_CAPTION", tasks=["caption"], limit=2, model_name="api", engine_name="openai",
                      outputs_dir=tmp_path / "out", progress=False)
    d = tmp_path / "out" / "api" / "base" / "AV_CAPTION"
    recs = read_records(d / "caption.jsonl")
    assert len(recs) == 2 and all(r["error"].startswith("HTTP 401: ") for r in recs)
    assert all("invalid api key" in r["error"] and "[REDACTED]" in r["error"] for r in recs)  # the server's words stay
    for f in d.iterdir():
        assert KEY not in f.read_text() and KEY[3:15] not in f.read_text(), f
    assert json.loads((d / "run.json").read_text())["engine_run"]["errors"] == {"HTTP 401": 2}
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err


def test_redact_values_and_credential_patterns(monkeypatch):
    from avcap.core.secrets import redact

    monkeypatch.setenv("AVCAP_SOME_KEY", "k-live-abcdefgh")
    text = ('HTTP 401: {"authorization": "Bearer sk-zzz.yyy", "x-api-key": "abc123", "note": "k-live-abcdefgh"} '
            "GET /v1?api_key=q1w2e3r4&page=2 Authorization: Basic dXNlcjpwYXNz password=hunter22 "
            "POST https://me:s3cr3tpw@proxy.local/v1 prompt_tokens: 149, max_tokens=5, token budget")
    out = redact(text, ["sk-zzz.yyy"], env_names=["AVCAP_SOME_KEY", "AVCAP_UNSET_VAR"])
    for secret in ("sk-zzz.yyy", "abc123", "k-live-abcdefgh", "q1w2e3r4", "dXNlcjpwYXNz", "hunter22", "s3cr3tpw"):
        assert secret not in out
    assert "Bearer [REDACTED]" in out and "api_key=[REDACTED]&page=2" in out and "https://[REDACTED]@proxy.local/v1" in out
    assert "prompt_tokens: 149, max_tokens=5, token budget" in out  # ordinary words and numbers stay
    assert redact("abc", ["abc"]) == "abc"  # too short to search for
