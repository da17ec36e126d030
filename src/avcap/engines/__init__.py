"""Engines: the only code that talks to a model (transformers, vLLM, OpenAI-compatible HTTP).

    from avcap.engines import make_engine, Request, Result, build_messages
    engine = make_engine(cfg.avcap.engine, vision=cfg.eval_vision, model="path-or-id")
    engine.prefetch(next_requests)              # optional: decode their videos in the background
    results = engine.generate(requests, sampling)   # same order as requests
    engine.close()

Every engine has `name`, `batch_size` (how many requests a caller should hand it at once),
`generate`, `prefetch` and `close`. Heavy imports happen when an engine is built. The transformers
engine loads a model directory in the background (its decoders start on the first videos meanwhile);
a failed load raises `ModelLoadError` from `generate`.
"""

from __future__ import annotations

from typing import Optional

from avcap.core.config import Engine as EngineConfig
from avcap.core.config import Vision
from avcap.engines.base import (
    Engine,
    ModelLoadError,
    Request,
    Result,
    build_messages,
    final_answer,
    video_parts,
    video_paths,
)

__all__ = [
    "Engine",
    "ModelLoadError",
    "Request",
    "Result",
    "build_messages",
    "final_answer",
    "make_engine",
    "video_parts",
    "video_paths",
]


def make_engine(
    cfg: EngineConfig,
    *,
    vision: Vision,
    model: Optional[str] = None,
    processor: Optional[str] = None,
    device: Optional[str] = None,
) -> Engine:
    """Build the engine `cfg.name` for `model` (default `cfg.model`).

    `processor`: where the processor/tokenizer/chat template live when the model directory has
    none (a cosmos-rl safetensors export); `device` overrides `cfg.device` (e.g. cuda:LOCAL_RANK).
    """
    model = model or cfg.model
    if not model:
        raise ValueError("no model to load: pass one or set [avcap.engine] model")
    if cfg.name == "transformers":
        from avcap.engines.hf.engine import (
            TransformersEngine,  # an engine's module loads when it is used
        )

        return TransformersEngine(cfg, vision=vision, model=model, processor=processor, device=device)
    if cfg.name == "vllm":
        from avcap.engines.vllm_engine import VLLMEngine  # vllm is an optional extra

        return VLLMEngine(cfg, vision=vision, model=model, processor=processor, device=device)
    if cfg.name == "openai":
        from avcap.engines.openai_engine import (
            OpenAIEngine,  # an engine's module loads when it is used
        )

        return OpenAIEngine(cfg, vision=vision, model=model)
    raise ValueError(f"unknown engine {cfg.name!r} (transformers, openai, vllm)")
