"""vLLM offline (`LLM.generate`) with the frames avcap.video samples — the optional `avcap[vllm]` extra.

Each request becomes one vLLM prompt:

    {"prompt": processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
     "multi_modal_data": {"video": [(frames, metadata), ...]},      # frames: T x H x W x 3 uint8
     "mm_processor_kwargs": {"do_sample_frames": False, "do_resize": False}}

vLLM's Qwen3-VL processor (`video_needs_metadata=True`) takes each video as a `(frames, metadata)`
tuple; the metadata (source fps, sampled `frames_indices`, `total_num_frames`, `duration`, plus
`do_sample_frames: False`) gives the "<t seconds>" timestamps, and the two processor kwargs keep
avcap.video's frames and size exactly (the same processor call the transformers engine makes).
Sampling maps 1:1 onto `SamplingParams` (vLLM's names are avcap's; presence_penalty is native).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from avcap.core.config import Engine as EngineConfig
from avcap.core.config import Sampling, Vision
from avcap.engines.base import Request, Result, final_answer
from avcap.engines.frames import FrameLoader, load_request_frames, vision_factor

# Heavy libraries (transformers, vllm) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

INSTALL_HINT = "the vllm engine needs vLLM, which is not installed: pip install 'avcap[vllm]'"


class VLLMNotInstalled(ImportError):
    pass


def import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise VLLMNotInstalled(f"{INSTALL_HINT} ({exc})") from None
    return vllm


def sampling_params(s: Sampling):
    from vllm import SamplingParams

    return SamplingParams(
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k if s.top_k > 0 else -1,
        presence_penalty=s.presence_penalty,
        repetition_penalty=s.repetition_penalty,
        max_tokens=s.max_tokens,
        seed=s.seed,
    )


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        cfg: EngineConfig,
        *,
        vision: Vision,
        model: str,
        processor: Optional[str] = None,
        device: Optional[str] = None,
    ):
        if device and device.startswith("cuda:") and "CUDA_VISIBLE_DEVICES" not in os.environ:
            # one vLLM instance per GPU (sharded runs): vLLM places itself on the visible devices
            os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        vllm = import_vllm()
        from transformers import AutoConfig, AutoProcessor

        self.cfg = cfg
        self.batch_size = cfg.batch_size
        self.first_batch = cfg.first_batch
        patch, merge, _ = vision_factor(AutoConfig.from_pretrained(model))
        self.frames = FrameLoader(vision, patch * merge, capacity=max(32, 4 * cfg.batch_size))
        self.prefetch_videos = self.frames.lookahead
        self.processor = AutoProcessor.from_pretrained(processor or model)
        kwargs: dict[str, Any] = dict(
            model=model,
            tokenizer=processor or model,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            dtype="auto" if cfg.dtype == "auto" else cfg.dtype,
            limit_mm_per_prompt={"video": 1, "image": 0},
            max_num_seqs=max(cfg.batch_size, 1),
        )
        if cfg.max_model_len is not None:
            kwargs["max_model_len"] = cfg.max_model_len
        self.llm = vllm.LLM(**kwargs)

    def prefetch(self, requests: list[Request]) -> None:
        self.frames.prefetch(requests)

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Result]:
        self.frames.prefetch(requests)
        results: dict[str, Result] = {}
        prompts, keys = [], []
        for req in requests:
            frames, error = load_request_frames(self.frames, req)
            if error is not None:
                results[req.key] = Result(key=req.key, text=None, error=error)
                continue
            prompt: dict[str, Any] = {
                "prompt": self.processor.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
            }
            if frames:
                prompt["multi_modal_data"] = {
                    "video": [(vf.frames, {**vf.metadata(), "do_sample_frames": False}) for vf in frames]
                }
                prompt["mm_processor_kwargs"] = {"do_sample_frames": False, "do_resize": False}
            prompts.append(prompt)
            keys.append(req.key)
        if prompts:
            try:
                outputs = self.llm.generate(prompts, sampling_params(sampling), use_tqdm=False)
            except Exception as exc:  # a whole-batch failure: every request of it gets the error
                msg = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
                outputs = None
                for key in keys:
                    results[key] = Result(key=key, text=None, error=msg)
            for key, out in zip(keys, outputs or []):
                comp = out.outputs[0]
                results[key] = Result(
                    key=key,
                    text=final_answer(comp.text),
                    raw_text=comp.text,
                    num_input_tokens=len(out.prompt_token_ids or []),
                    num_output_tokens=len(comp.token_ids),
                    extra={"finish_reason": comp.finish_reason},
                )
        return [results[r.key] for r in requests]

    def close(self) -> None:
        self.frames.close()
