"""Real-size Cosmos-Reason2-2B/8B architectures on one GPU: inference and SFT throughput, side by side.

    python benchmarks/bench_gpu.py [--sizes 2B,8B] [--sections peak,sft,decode,infer] [--out DIR]
    python benchmarks/bench_gpu.py --tiny          # CPU smoke run of every code path (tiny model)

Not a test. One command per machine; prints a table at the end and writes `bench_gpu.json` (and a
log) to --out (default: $OUT when set, else benchmarks/). Every section is timed against
--deadline (seconds from start) and skipped, saying so, when too little time is left.

What it measures (random weights, the exact architectures of avcap.models.qwen3_vl.cost.realsize_config, bf16,
sdpa; token ids from avcap's tiny tokenizer, all < the real vocab of 151,936):

- peak:   bf16 8192^3 matmul rate and device-to-device copy bandwidth (bytes read + written):
          the ceilings the floors below use.
- clips:  `avcap.demo.synth.synthesize` H.264 clips at 1936x1220, 30 fps, 30 s (rendered in worker
          processes while the SFT section runs on the GPU), reused cyclically under distinct
          file names so that every request is decoded anew.
- sft:    avcap.train.loop's micro_batch_loss / avcap.train.data.encode + Collator on 4 samples of
          ~2.7k tokens (16 frames 448x736 + caption), gradient checkpointing, AdamW: the trainer's
          setup as it is (fp32 master weights, bf16 autocast) and faster variants; 8B: what fits.
- decode: avcap.engines.frames.FrameLoader alone, threads vs processes: the CPU ceiling.
- infer:  captions (the recipe's caption sampling, 256 new tokens, min_tokens = 256 so every row
          generates them all) and MCQ (12 questions per video, greedy, <= 8 new tokens):
          naive per-request generate loop, plain batched `generate` (batch 32), avcap's
          TransformersEngine (fast path); end to end, decode included; peak GPU memory; and the
          hardware floor (avcap.models.qwen3_vl.cost) from the measured ceilings. Also checks the fast path
          against plain generate on the GPU (greedy tokens) and graph vs eager decode.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, also when imported by path
from bench_log import RunLog  # noqa: E402

RUN = RunLog("bench_gpu", {"sections": {}})
RESULTS = RUN.results
log = RUN.log
save = RUN.save

MCQ_QUESTIONS = [
    ("What is the weather in the video?", ["Clear", "Rain", "Fog", "Snow"]),
    ("What is the ego vehicle doing during the clip?", ["Driving straight ahead", "Turning left", "Stopping at a light", "Reversing"]),
    ("Is there a traffic light visible, and if so what colour is it when the ego vehicle reaches it?", ["Green", "Red", "Yellow", "No traffic light"]),
    ("What kind of road is this?", ["Highway", "Urban street", "Rural road", "Parking lot"]),
    ("Which road user is closest to the ego vehicle at the end of the clip?", ["A car", "A cyclist", "A pedestrian", "A truck"]),
    ("What is the lighting?", ["Daytime", "Dusk", "Night", "Dawn"]),
    ("How many lanes does the road have in the ego vehicle's direction?", ["One", "Two", "Three", "Four or more"]),
    ("Does a pedestrian cross in front of the ego vehicle?", ["Yes, from the left", "Yes, from the right", "No", "Only at the end"]),
    ("What does the lead vehicle do?", ["Brakes", "Turns off the road", "Keeps its speed", "There is no lead vehicle"]),
    ("Which colour is the lead vehicle?", ["White", "Black", "Red", "Blue"]),
    ("Is the ego vehicle at a junction at any time?", ["Yes, an intersection", "Yes, a roundabout", "No", "Yes, a T-junction"]),
    ("How difficult is this driving scenario?", ["Easy", "Moderate", "Hard", "Very hard"]),
]


# ----------------------------------------------------------------------------- small helpers


def left(deadline: float) -> float:
    return deadline - RUN.elapsed()


def section(name: str, need_s: float, deadline: float, fn: Callable[[], Any]) -> Any:
    """Run fn unless less than need_s seconds are left; record its result or its error."""
    if left(deadline) < need_s:
        log(f"{name}: skipped ({left(deadline):.0f}s left, needs ~{need_s:.0f}s)")
        RESULTS["sections"][name] = {"skipped": f"deadline ({left(deadline):.0f}s left, needs ~{need_s:.0f}s)"}
        save()
        return None
    log(f"{name}: start")
    t = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # record and go on with the next section
        tb = traceback.format_exc()
        log(f"{name}: FAILED {type(exc).__name__}: {exc}\n{tb}")
        RESULTS["sections"][name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": tb[-3000:]}
        out = None
    else:
        RESULTS["sections"][name] = out
    if isinstance(RESULTS["sections"][name], dict):
        RESULTS["sections"][name]["section_s"] = round(time.perf_counter() - t, 1)
    log(f"{name}: done in {time.perf_counter() - t:.1f}s")
    _free()
    save()
    return out


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gb() -> Optional[float]:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


# ----------------------------------------------------------------------------- environment + peak


def environment() -> dict[str, Any]:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")}
    try:
        import av

        env["pyav"] = av.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    try:
        info = open("/proc/cpuinfo").read().splitlines()
        env["cpu_model"] = next(l.split(":", 1)[1].strip() for l in info if l.startswith("model name"))
        flags = set(next(l.split(":", 1)[1] for l in info if l.startswith("flags")).split())
        # the SIMD levels FFmpeg's decoders pick from at run time (a VM may hide some)
        env["cpu_simd"] = [f for f in ("ssse3", "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw") if f in flags]
    except (OSError, StopIteration):
        pass
    return env


def measure_peak() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"matmul_flops": 1e12, "copy_bytes_per_s": 1e10, "note": "CPU: placeholders"}
    n = 8192
    a = [torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for x in a:
        x @ b
    times = []
    for i in range(12):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a[i % 3] @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    flops = 2 * n**3 / statistics.median(times)
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    ct = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        dst.copy_(src)
        e.record()
        e.synchronize()
        ct.append(s.elapsed_time(e) / 1e3)
    bw = 2 * src.numel() / statistics.median(ct)
    # the vision patch embedding: Conv3d (stride = kernel) vs the same as one GEMM
    conv = torch.nn.Conv3d(3, 1152, kernel_size=(2, 16, 16), stride=(2, 16, 16), device="cuda", dtype=torch.bfloat16)
    x = torch.randn(8 * 10304, 3 * 2 * 16 * 16, device="cuda", dtype=torch.bfloat16)

    def run_conv():
        return conv(x.view(-1, 3, 2, 16, 16)).view(-1, 1152)

    def run_lin():
        return torch.nn.functional.linear(x, conv.weight.reshape(1152, -1), conv.bias)

    pe = {}
    for name, fn in (("conv3d", run_conv), ("linear", run_lin)):
        fn()
        sync()
        t = time.perf_counter()
        fn()
        sync()
        pe[name + "_ms"] = round((time.perf_counter() - t) * 1e3, 2)
    with torch.no_grad():
        pe["max_abs_diff"] = float((run_conv() - run_lin()).abs().max())
    del a, b, src, dst
    x = None  # freed (run_conv/run_lin, which read it, are not called again)
    return {"matmul_flops": flops, "matmul_tflops": round(flops / 1e12, 1), "copy_bytes_per_s": bw,
            "copy_tb_s": round(bw / 1e12, 2), "patch_embed_8_videos": pe}


# ----------------------------------------------------------------------------- models


def build_tiny_dir(root: Path) -> Path:
    from avcap.demo.tiny_model import build_tiny_model

    d = root / "tiny-model"
    if not (d / "config.json").exists():
        build_tiny_model(d, size="tiny", seed=0)
    return d


def build_model(size: str, tiny_dir: Path, device: str, dtype):
    """Real-size architecture with random weights, token ids of the tiny tokenizer; or the tiny model."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig, Qwen3VLForConditionalGeneration

    from avcap.models.qwen3_vl.cost import realsize_config

    if size == "tiny":
        return AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=dtype).to(device).eval()
    tiny = AutoConfig.from_pretrained(tiny_dir)
    cfg = realsize_config(size)
    for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        setattr(cfg, k, getattr(tiny, k))
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(cfg.text_config, k, getattr(tiny.text_config, k))
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=dtype)
    model.generation_config = GenerationConfig.from_pretrained(tiny_dir)
    return model.eval()


def shape_numbers(model) -> dict[str, Any]:
    from avcap.models.qwen3_vl.cost import Shape

    s = Shape.from_config(model.config)
    return {"params_b": round(s.total_params() / 1e9, 3), "vision_params_b": round(s.vision_params() / 1e9, 3)}


# ----------------------------------------------------------------------------- clips


def render_clips(root: Path, n: int, width: int, height: int, seconds: float, fps: float, workers: int) -> dict[str, Any]:
    from avcap.demo.synth import synthesize

    t = time.perf_counter()
    m = synthesize(root / "world", videos=n, train_videos=0, lingoqa_segments=0, seed=0, width=width, height=height,
                   seconds=seconds, fps=fps, workers=workers)
    vids = sorted((root / "world" / "eval" / "AV_CAPTION" / "videos").glob("*.mp4"))
    return {"clips": [str(v) for v in vids], "render_s": round(time.perf_counter() - t, 1),
            "render_seconds_mean": m.get("render_seconds_mean"),
            "mbytes_each": [round(v.stat().st_size / 1e6, 1) for v in vids]}


def clip_names(root: Path, clips: list[str], count: int, tag: str) -> list[str]:
    """`count` distinct file names (symlinks) cycling over the rendered clips: each is decoded anew."""
    d = root / "names" / tag
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(count):
        p = d / f"v{k:05d}.mp4"
        if not p.exists():
            p.symlink_to(clips[k % len(clips)])
        out.append(str(p))
    return out


# ----------------------------------------------------------------------------- SFT


def sft_samples(processor, clip: str, n: int, nframes: int, max_pixels: int):
    from avcap.core.config import Prompts
    from avcap.train.data import Collator, encode

    p = Prompts()
    words = "The ego vehicle drives straight on a wet urban road behind a white van that brakes twice; a cyclist keeps to the right lane and a pedestrian waits at the crossing. "
    samples = []
    for i in range(n):
        msgs = [{"role": "system", "content": p.system},
                {"role": "user", "content": [{"type": "video", "video": clip, "nframes": nframes, "max_pixels": max_pixels},
                                             {"type": "text", "text": p.caption}]},
                {"role": "assistant", "content": (words * 3)[: 300 + 40 * i]}]
        samples.append(encode(processor, msgs) | {"index": i})
    batch = Collator(processor.tokenizer.pad_token_id)(samples)
    return batch


def sft_variant(model_fn, batch, *, master_fp32: bool, fused: bool, ckpt: bool | str, linear_pe: bool, steps: int,
                warmup: int, micro: int, device: str, peak_flops: float, flops_per_step: float,
                compile: bool = False, pack: bool = False, pin: bool = False, mem_budget: Optional[float] = None,
                profile_path: Optional[Path] = None) -> dict[str, Any]:
    import torch

    from avcap.engines.hf.fast_generate import linear_patch_embed
    from avcap.train.loop import micro_batch_loss

    reset_peak()
    model = model_fn(torch.float32 if master_fp32 else torch.bfloat16)
    model.config.use_cache = False
    model.config.text_config.use_cache = False  # else, without checkpointing, a DynamicCache is built in training
    if ckpt:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if ckpt == "vision":  # recompute only the vision blocks (most activations: ~41k patches per step)
            for m in model.modules():
                if type(m).__name__.endswith("DecoderLayer"):
                    m.gradient_checkpointing = False
    if linear_pe:
        linear_patch_embed(model)
    if compile:  # what avcap.train.loop does for [train] compile = true (and [avcap.train] activation_memory_budget)
        import torch._functorch.config as fconf

        from avcap.models.qwen3_vl.compile import compile_blocks

        torch._dynamo.reset()  # each variant compiles afresh (its first warm-up step says how long)
        fconf.activation_memory_budget = 1.0  # the default, unless this variant sets one
        compile_blocks(model, activation_memory_budget=mem_budget)
    elif pack:
        from avcap.models.qwen3_vl.compile import pack_vision_attention

        pack_vision_attention(model)
    model.train()
    kw = {"fused": True} if fused and device == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.95), weight_decay=0.01, **kw)
    n = batch["input_ids"].shape[0]
    parts = [slice(i, min(i + micro, n)) for i in range(0, n, micro)]
    n_tokens = int((batch["labels"][:, 1:] != -100).sum())
    grid = batch["video_grid_thw"]
    per_row = [int(g.prod()) for g in grid]

    def sub(sl):
        out = {}
        for k, v in batch.items():
            if not hasattr(v, "shape"):
                continue
            if k == "pixel_values_videos":
                start = sum(per_row[: sl.start])
                out[k] = v[start: start + sum(per_row[sl])]
            else:
                out[k] = v[sl]
        return out

    micro_batches = [sub(sl) for sl in parts]
    if pin and device == "cuda":  # page-locked host memory: faster host-to-device copies of the inputs
        micro_batches = [{k: v.pin_memory() for k, v in mb.items()} for mb in micro_batches]
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (master_fp32 and device == "cuda") else _null()
    times = []
    first_steps = []
    losses = []
    for step in range(warmup + steps):
        sync()
        t = time.perf_counter()
        total = 0.0
        for mb in micro_batches:
            with amp:
                loss, _ = micro_batch_loss(model, mb, device, slice_logits=True)
            (loss / n_tokens).backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if step >= warmup:
            times.append(time.perf_counter() - t)
        else:
            first_steps.append(round(time.perf_counter() - t, 2))
        losses.append(round(total / n_tokens, 4))
    dt = statistics.median(times)
    if profile_path is not None:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=acts) as prof:
            for mb in micro_batches:
                with amp:
                    loss, _ = micro_batch_loss(model, mb, device, slice_logits=True)
                (loss / n_tokens).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
        key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
        profile_path.write_text(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=70))
    tokens = int(batch["attention_mask"].sum())
    res = {"step_s": round(dt, 3), "steps_timed": len(times), "step_times": [round(x, 3) for x in times],
           "warmup_step_s": first_steps, "compile": compile, "pack": pack or compile, "pin": pin, "ckpt": ckpt,
           "mem_budget": mem_budget, "tokens_per_step": tokens,
           "tokens_per_s": round(tokens / dt), "mfu": round(flops_per_step / dt / peak_flops, 4),
           "mfu_vs_989": round(flops_per_step / dt / 989e12, 4), "peak_gib": peak_gb(), "losses": losses,
           "micro_batch": micro}
    del model, opt
    _free()
    return res


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def run_sft(args, tiny_dir: Path, clip: str, peak: dict[str, Any], device: str) -> dict[str, Any]:
    import torch
    from transformers import AutoProcessor

    from avcap.models.qwen3_vl.cost import Shape, train_flops
    from avcap.train import loop as train_loop

    processor = AutoProcessor.from_pretrained(tiny_dir)
    batch = sft_samples(processor, clip, 4, args.nframes, args.max_pixels)
    out: dict[str, Any] = {"samples": 4, "tokens_per_sample": batch["attention_mask"].sum(1).tolist(),
                           "labelled_tokens": int((batch["labels"][:, 1:] != -100).sum())}
    sizes = ["tiny"] if args.tiny else [s for s in ("2B", "8B") if s in args.sft_sizes]
    for size in sizes:
        def model_fn(dtype, size=size):
            return build_model(size, tiny_dir, device, dtype)

        m = model_fn(torch.bfloat16) if size == "tiny" else None
        shape = Shape.from_config(m.config if m is not None else _config_of(size, tiny_dir))
        del m
        grid = batch["video_grid_thw"]
        flops = 0.0
        for r in range(batch["input_ids"].shape[0]):
            t, h, w = (int(x) for x in grid[r])
            n_text = int(batch["attention_mask"][r].sum())
            n_lab = int((batch["labels"][r, 1:] != -100).sum())
            flops += train_flops(shape, text_tokens=n_text, patches_per_group=h * w, groups=t, logits_tokens=n_lab)
        res: dict[str, Any] = {"flops_per_step": flops}
        common = dict(batch=batch, steps=args.sft_steps, warmup=args.sft_warmup, device=device,
                      peak_flops=peak["matmul_flops"], flops_per_step=flops)
        catalogue = {
            "trainer_as_is": dict(master_fp32=True, fused=False, ckpt=True, linear_pe=False, micro=4),
            "fused_adamw_linear_pe": dict(master_fp32=True, fused=True, ckpt=True, linear_pe=True, micro=4),
            "bf16_params_fused": dict(master_fp32=False, fused=True, ckpt=True, linear_pe=True, micro=4),
            "no_ckpt_fused_linear_pe": dict(master_fp32=True, fused=True, ckpt=False, linear_pe=True, micro=4),
            "bf16_no_ckpt_fused": dict(master_fp32=False, fused=True, ckpt=False, linear_pe=True, micro=4),
            "bf16_params_fused_ckpt_micro4": dict(master_fp32=False, fused=True, ckpt=True, linear_pe=True, micro=4),
            "bf16_params_fused_ckpt_micro1": dict(master_fp32=False, fused=True, ckpt=True, linear_pe=True, micro=1),
            # avcap.models.qwen3_vl.compile (the trainer's [train] compile = true): packed vision attention, regional compile
            "trainer_packed": dict(master_fp32=True, fused=False, ckpt=True, linear_pe=False, micro=4, pack=True),
            "trainer_compile": dict(master_fp32=True, fused=False, ckpt=True, linear_pe=False, micro=4, compile=True),
            "compile_fused_linear_pe": dict(master_fp32=True, fused=True, ckpt=True, linear_pe=True, micro=4, compile=True),
            "bf16_compile_fused": dict(master_fp32=False, fused=True, ckpt=True, linear_pe=True, micro=4, compile=True),
            "compile_no_ckpt_fused": dict(master_fp32=True, fused=True, ckpt=False, linear_pe=True, micro=4, compile=True),
            "bf16_compile_no_ckpt_fused": dict(master_fp32=False, fused=True, ckpt=False, linear_pe=True, micro=4, compile=True),
            "compile_fused_pinned": dict(master_fp32=True, fused=True, ckpt=True, linear_pe=True, micro=4, compile=True, pin=True),
            "compile_ckpt_vision_fused_pinned": dict(master_fp32=True, fused=True, ckpt="vision", linear_pe=True, micro=4,
                                                     compile=True, pin=True),
            "bf16_compile_ckpt_vision_fused_pinned": dict(master_fp32=False, fused=True, ckpt="vision", linear_pe=True,
                                                          micro=4, compile=True, pin=True),
            "compile_budget05_fused_pinned": dict(master_fp32=True, fused=True, ckpt=False, linear_pe=True, micro=4,
                                                  compile=True, pin=True, mem_budget=0.5),
            "bf16_compile_budget05_fused_pinned": dict(master_fp32=False, fused=True, ckpt=False, linear_pe=True, micro=4,
                                                       compile=True, pin=True, mem_budget=0.5),
            # the trainer with its CUDA defaults (fused AdamW, pinned batches), fp32 master weights + bf16
            # autocast, gradient checkpointing on as the recipe has it; [train] compile = true; and with
            # [avcap.train] activation_memory_budget (checkpointing replaced by selective recompute)
            "trainer_compile_fused_pinned": dict(master_fp32=True, fused=True, ckpt=True, linear_pe=False, micro=4,
                                                 compile=True, pin=True),
            **{f"trainer_compile_budget{int(b * 10):02d}": dict(master_fp32=True, fused=True, ckpt=True, linear_pe=False,
                                                               micro=4, compile=True, pin=True, mem_budget=b)
               for b in (0.3, 0.5, 0.7)},
        }
        names = (args.sft_variants_8b if size == "8B" else args.sft_variants).split(",")
        # "<variant>_mask": the same set-up with the attention mask passed as before (loop.right_padded
        # answers false), to measure what leaving it out of right-padded micro-batches gains
        variants = [(n, {**catalogue[n.removesuffix("_mask")], **({"force_mask": True} if n.endswith("_mask") else {})})
                    for n in names if n]
        if args.sft_profile and size != "8B" and variants:
            names_p = [n for n in args.sft_profile.split(",") if n] if isinstance(args.sft_profile, str) else [variants[0][0]]
            for n, v in variants:
                if n in names_p:
                    v["profile_path"] = RUN.out_dir / f"profile_sft_{size}_{n}.txt"
        for name, v in variants:
            if left(args.deadline) < (60 if size == "8B" else 25):
                res[name] = {"skipped": "deadline"}
                continue
            log(f"sft {size} {name}")
            force_mask = v.pop("force_mask", False)
            plain_right_padded = train_loop.right_padded
            if force_mask:
                train_loop.right_padded = lambda mask: False
            try:
                res[name] = sft_variant(model_fn, **common, **v)
            except torch.OutOfMemoryError as exc:
                res[name] = {"error": f"OutOfMemoryError: {str(exc)[:300]}", "peak_gib": peak_gb()}
            except Exception as exc:
                res[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
            finally:
                train_loop.right_padded = plain_right_padded
            _free()  # after the except block: the traceback no longer holds the model
            log(f"  -> {json.dumps(res[name])[:300]}")
            save()
        out[size] = res
    return out


def _config_of(size: str, tiny_dir: Path):
    from avcap.models.qwen3_vl.cost import realsize_config

    return realsize_config(size)


# ----------------------------------------------------------------------------- decode ceiling


def run_decode(names: list[str], vision, factor: int, setups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Videos/s of FrameLoader alone (no model) for each set-up (label -> FrameLoader keywords): the
    decode ceiling of any end-to-end figure, and how fast this lease's host decodes (hosts of one
    kind differ by ~25 %). Each pool is warmed with one video per worker first (start-up is paid
    once); the other videos are timed."""
    from avcap.engines.base import Request, build_messages
    from avcap.engines.frames import FrameLoader, load_request_frames

    out: dict[str, Any] = {}
    for label, kw in setups.items():
        warm_n = kw.get("workers", 1) + kw.get("nvdec_workers", 0)
        warm, timed = names[:warm_n], names[warm_n:]
        loader = FrameLoader(vision, factor, capacity=len(names) + 1, **kw)
        wreqs = [Request(f"w{i}", build_messages(None, "x", p)) for i, p in enumerate(warm)]
        loader.prefetch(wreqs)
        for r in wreqs:
            load_request_frames(loader, r)
        reqs = [Request(str(i), build_messages(None, "x", p)) for i, p in enumerate(timed)]
        t = time.perf_counter()
        loader.prefetch(reqs)
        errs = [e for _, e in (load_request_frames(loader, r) for r in reqs) if e]
        dt = time.perf_counter() - t
        loader.close()
        out[label] = {"videos": len(reqs), "seconds": round(dt, 2), "videos_per_s": round(len(reqs) / dt, 2),
                      "errors": errs[:3], "loader": {k: str(v) for k, v in kw.items()}}
        log(f"decode {label}: {out[label]}")
    out["best"] = max(setups, key=lambda m: out[m]["videos_per_s"])
    return out


def decode_setups(args, device: str) -> dict[str, dict[str, Any]]:
    """The decode section's set-ups: --decode-mode auto compares CPU decoders in threads and in
    processes (load_video, converted on the CPU); an explicit mode measures what the engine runs
    with resize_on_gpu: CPU decoders, and on a GPU NVDEC workers, both finished on the GPU."""
    n = args.decode_workers
    if args.decode_mode == "auto":
        return {"threads": {"workers": n, "processes": False}, "processes": {"workers": n, "processes": True}}
    proc = args.decode_mode == "processes"
    finish = device if device.startswith("cuda") else None
    out = {f"cpu{n}": {"workers": n, "processes": proc, "finish_device": finish}}
    if finish:
        out[f"nvdec{args.decode_nvdec_workers}"] = {"workers": args.decode_nvdec_workers, "processes": proc,
                                                     "decoder": "nvdec", "finish_device": finish}
    return out


# ----------------------------------------------------------------------------- inference


def caption_sampling(args):
    from avcap.core.config import SamplingTable

    s = SamplingTable().caption
    return s.model_copy(update={"max_tokens": args.caption_tokens})


def mcq_sampling(args):
    from avcap.core.config import Sampling

    return Sampling(temperature=0.0, max_tokens=args.mcq_tokens)


def caption_messages(path: str):
    from avcap.core.config import Prompts
    from avcap.engines.base import build_messages

    p = Prompts()
    return build_messages(p.system, p.caption, path)


def mcq_messages(path: str, k: int):
    from avcap.core.config import Prompts
    from avcap.engines.base import build_messages
    from avcap.eval.tasks import format_mcq

    p = Prompts()
    q, choices = MCQ_QUESTIONS[k % len(MCQ_QUESTIONS)]
    return build_messages(p.system, format_mcq(q, dict(zip("ABCD", choices)), p.mcq_suffix), path)


def hf_inputs(processor, batch: list[tuple[list[dict], Any]]):
    """Plain transformers usage: the processor on the CPU, one video per request."""
    texts = [processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m, _ in batch]
    kw: dict[str, Any] = dict(text=texts, padding=True, return_tensors="pt", videos=[vf.frames for _, vf in batch],
                              video_metadata=[vf.metadata() for _, vf in batch], do_sample_frames=False, do_resize=False)
    vp = processor.video_processor
    if "cap_pixels_per_frame" in getattr(vp.valid_kwargs, "__annotations__", {}):
        kw["cap_pixels_per_frame"] = False
    return processor(**kw)


def hf_generate(model, processor, batch, sampling, min_tokens: int, device: str):
    import torch

    from avcap.engines.hf.engine import generation_config, presence_penalty_processor

    inputs = hf_inputs(processor, batch).to(device)
    plen = inputs["input_ids"].shape[1]
    procs = [presence_penalty_processor(sampling.presence_penalty, plen)] if sampling.presence_penalty else None
    if sampling.seed is not None and sampling.temperature > 0:
        torch.manual_seed(sampling.seed)
    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=generation_config(sampling, model.generation_config,
                                                                           min_new_tokens=min_tokens),
                             logits_processor=procs)
    return out[:, plen:].cpu(), int(inputs["attention_mask"].sum(1).max())


def load(path: str, vision, factor: int):
    from avcap.engines.frames import video_kwargs
    from avcap.video import load_video

    return load_video(path, **video_kwargs(vision, {"video": path}, factor))


def run_naive(model, processor, names, vision, factor, args, device) -> dict[str, Any]:
    """One request at a time: decode its video, run the processor, generate (batch 1)."""
    out = {}
    reset_peak()
    t = time.perf_counter()
    n_tok = []
    for p in names[: args.naive_videos]:
        vf = load(p, vision, factor)
        new, plen = hf_generate(model, processor, [(caption_messages(p), vf)], caption_sampling(args), args.caption_tokens, device)
        n_tok.append(new.shape[1])
    dt = time.perf_counter() - t
    out["caption"] = {"videos": args.naive_videos, "seconds": round(dt, 2), "videos_per_s": round(args.naive_videos / dt, 4),
                      "new_tokens": n_tok, "prompt_tokens": plen, "peak_gib": peak_gb()}
    log(f"naive caption: {out['caption']}")
    save()
    reset_peak()
    t = time.perf_counter()
    p = names[args.naive_videos]
    vf = load(p, vision, factor)  # decoded once for its 12 questions (a generous naive loop)
    n_tok = []
    for k in range(args.questions):
        new, plen = hf_generate(model, processor, [(mcq_messages(p, k), vf)], mcq_sampling(args), 0, device)
        n_tok.append(new.shape[1])
    dt = time.perf_counter() - t
    out["mcq"] = {"videos": 1, "questions": args.questions, "seconds": round(dt, 2), "videos_per_s": round(1 / dt, 4),
                  "new_tokens": n_tok, "prompt_tokens": plen, "peak_gib": peak_gb()}
    log(f"naive mcq: {out['mcq']}")
    return out


def run_plain_batched(model, processor, names, vision, factor, args, device) -> dict[str, Any]:
    """`generate` on batches of --plain-batch requests; videos decoded on a 16-thread pool first."""
    out = {}
    bs = args.plain_batch
    for task in ("caption", "mcq"):
        reset_peak()
        t = time.perf_counter()
        if task == "caption":
            paths = names[:bs]
            with ThreadPoolExecutor(args.decode_workers) as ex:
                frames = list(ex.map(lambda p: load(p, vision, factor), paths))
            batch = [(caption_messages(p), vf) for p, vf in zip(paths, frames)]
            sampling, mt = caption_sampling(args), args.caption_tokens
            videos = len(paths)
        else:
            nv = math.ceil(bs / args.questions)
            paths = names[:nv]
            with ThreadPoolExecutor(args.decode_workers) as ex:
                frames = list(ex.map(lambda p: load(p, vision, factor), paths))
            batch = [(mcq_messages(paths[i // args.questions], i % args.questions), frames[i // args.questions])
                     for i in range(bs)]
            sampling, mt = mcq_sampling(args), 0
            videos = bs / args.questions
        t_dec = time.perf_counter() - t
        t1 = time.perf_counter()
        new, plen = hf_generate(model, processor, batch, sampling, mt, device)
        sync()
        dt = time.perf_counter() - t
        out[task] = {"requests": len(batch), "videos": round(videos, 2), "seconds": round(dt, 2),
                     "decode_s": round(t_dec, 2), "prep_and_generate_s": round(time.perf_counter() - t1, 2),
                     "videos_per_s": round(videos / dt, 3), "videos_per_s_after_decode": round(videos / (dt - t_dec), 3),
                     "new_tokens_max": int(new.shape[1]), "prompt_tokens": plen, "peak_gib": peak_gb()}
        log(f"plain batched {task}: {out[task]}")
        save()
    return out


def make_engine(model, tiny_dir, vision, args, *, batch: int, fast: bool = True, graphs: bool = True,
                processes: bool = False, compile: bool = False, decoder: str | None = None,
                nvdec_workers: int | None = None, decode_workers: int | None = None, resize_on_gpu: bool = False):
    from avcap.core.config import Engine as EngineConfig
    from avcap.engines.hf.engine import TransformersEngine

    cfg = EngineConfig(batch_size=batch, device="cuda" if not args.tiny else "cpu", fast_generate=fast,
                       prefill_batch=args.prefill_batch, cuda_graphs=graphs, compile=compile,
                       decoder=decoder or args.decoder, nvdec_workers=nvdec_workers, resize_on_gpu=resize_on_gpu)
    return TransformersEngine(cfg, vision=vision, model=model, processor=str(tiny_dir),
                              decode_workers=decode_workers or args.decode_workers, decode_processes=processes)


def engine_variant(variant: str, processes: bool) -> dict[str, Any]:
    """make_engine keywords of an --engine-variants entry: "+"-joined tokens, e.g. compile+nvdec.
    compile: [avcap.engine] compile; nvdec: decoder "nvdec" in --decode-mode; nvdecT<N>: decoder
    "nvdec" in N threads of the engine's process; hybrid<N>[c<M>]: decoder "nvdec+cpu" with N NVDEC
    workers and M CPU decoders (default --decode-workers), both in --decode-mode; gpuresize: the CPU
    decoders' pictures are converted and resized on the engine's GPU (resize_on_gpu); w<N>: N decode
    workers (default --decode-workers); si<N>: sys.setswitchinterval(N microseconds) while this variant runs;
    syncchoice: the decode loop as before 2026-11-25 (torch.multinomial with its host syncs, the end
    checked without lag); nohost: the vision tower derives its inputs from a GPU grid (FastGenerator
    host_vision off); eagerfinish: the colour conversion op by op (not compiled); s5: all three, the
    engine as session 5 left it (the same-run baseline); fullprobe: decode workers open videos with
    FFmpeg's full stream probe (it decodes the first picture), as before 2026-11-25; keep: decoders
    return every decoded picture (no AV_PKT_FLAG_DISCARD on reference-only packets), as before
    session 8 (2026-11-25); nvconvert: with gpuresize, NVDEC workers still convert and resize in
    their own CUDA contexts (frames.NVDEC_FINISHED_HERE off), as before session 8."""
    import re

    kw: dict[str, Any] = {"compile": False, "decoder": None, "processes": processes}
    for tok in variant.split("+"):
        if tok == "compile":
            kw["compile"] = True
        elif tok == "nvdec":
            kw["decoder"] = "nvdec"
        elif tok == "gpuresize":  # [avcap.engine] resize_on_gpu
            kw["resize_on_gpu"] = True
        elif m := re.fullmatch(r"nvdecT(\d+)", tok):
            kw.update(decoder="nvdec", processes=False, decode_workers=int(m[1]))
        elif m := re.fullmatch(r"hybrid(\d+)(?:c(\d+))?", tok):
            kw.update(decoder="nvdec+cpu", nvdec_workers=int(m[1]))
            if m[2]:
                kw["decode_workers"] = int(m[2])
        elif m := re.fullmatch(r"w(\d+)", tok):
            kw["decode_workers"] = int(m[1])
        elif m := re.fullmatch(r"si(\d+)", tok):  # Python's GIL switch interval, microseconds
            kw["switch_interval_s"] = int(m[1]) / 1e6
        elif tok in ("syncchoice", "nohost", "eagerfinish", "fullprobe", "keep", "nvconvert"):
            kw[tok] = True
        elif tok == "s5":
            kw.update(syncchoice=True, nohost=True, eagerfinish=True)
        elif tok != "eager":
            raise SystemExit(f"unknown engine variant token {tok!r} in {variant!r}")
    return kw


def video_settings(*, full_probe: bool = False, keep: bool = False):
    """avcap.video's benchmark switches (tokens fullprobe, keep) for this process and the decode worker
    processes it starts from now on (they read them from the environment); returns the undo."""
    from avcap.video import discard, index

    saved = index.full_probe(), discard.enabled()
    if full_probe:  # FFmpeg's stream probe decodes the first picture again
        index.set_full_probe(True)
    if keep:  # every decoded picture returned, no AV_PKT_FLAG_DISCARD
        discard.set_enabled(False)

    def undo():
        index.set_full_probe(saved[0])
        discard.set_enabled(saved[1])

    return undo


def sync_choice():
    """Patch avcap's decode loop back to its host-syncing form; returns the undo."""
    import torch

    from avcap.engines.hf import fast_generate as fg

    saved = fg.draw, fg.StopCheck.__init__

    def init(self, unfinished, *, lag):
        saved[1](self, unfinished, lag=False)

    fg.draw = lambda probs: torch.multinomial(probs, num_samples=1).squeeze(1)
    fg.StopCheck.__init__ = init

    def undo():
        fg.draw, fg.StopCheck.__init__ = saved

    return undo


def run_engine(engine, requests, sampling, min_tokens: int, videos_per_request: float, label: str,
               ahead_videos: int) -> dict[str, Any]:
    """Feed the engine batch by batch, prefetching the next batches until at least
    `ahead_videos` videos are being decoded ahead (avcap infer prefetches one batch ahead)."""
    from avcap.engines.base import video_paths

    bs = engine.batch_size
    chunks = [requests[i: i + bs] for i in range(0, len(requests), bs)]
    fast = getattr(engine, "fast", None)
    t_fast0 = dict(fast.timings) if fast is not None else {}
    reset_peak()
    t = time.perf_counter()
    cpu0 = time.process_time()  # every thread of this (the engine's) process; decode workers not included
    per = []
    results = []
    queued = 0  # chunks handed to prefetch
    for i, chunk in enumerate(chunks):
        queued = max(queued, i + 1)
        ahead = {v for c in chunks[i + 1: queued] for r in c for v in video_paths(r.messages)}
        while queued < len(chunks) and (queued == i + 1 or len(ahead) < ahead_videos):
            engine.prefetch(chunks[queued])
            ahead |= {v for r in chunks[queued] for v in video_paths(r.messages)}
            queued += 1
        c0 = time.perf_counter()
        res = engine.generate(chunk, sampling, min_tokens=min_tokens)
        sync()
        per.append({"seconds": round(time.perf_counter() - c0, 2), "frame_wait_s": round(engine.frame_wait_s, 2),
                    "gpu_s": round(time.perf_counter() - c0 - engine.frame_wait_s, 2)})
        results += res
    dt = time.perf_counter() - t
    engine_cpu_s = time.process_time() - cpu0
    errors = [r.error for r in results if r.error]
    videos = len(requests) * videos_per_request
    steady = per[1:] or per
    steady_videos = sum(len(c) for c in chunks[1:]) * videos_per_request if len(chunks) > 1 else videos
    ok = [r for r in results if r.error is None]
    out = {"requests": len(requests), "videos": round(videos, 2), "batch": bs, "seconds": round(dt, 2),
           "videos_per_s": round(videos / dt, 3),
           "videos_per_s_steady": round(steady_videos / sum(c["seconds"] for c in steady), 3),
           "videos_per_s_gpu_steady": round(steady_videos / max(1e-9, sum(c["gpu_s"] for c in steady)), 3),
           "chunks": per, "errors": errors[:3], "n_errors": len(errors),
           "engine_process_cpu_s": round(engine_cpu_s, 1), "engine_process_cores": round(engine_cpu_s / dt, 2),
           "paths": sorted({r.extra.get("path") for r in ok}),
           "new_tokens_mean": round(statistics.mean(r.num_output_tokens or 0 for r in ok), 1) if ok else None,
           "prompt_tokens": max((r.num_input_tokens or 0) for r in ok) if ok else None,
           "prep_s_per_request": round(statistics.mean(r.extra.get("prep_s", 0) for r in ok), 4) if ok else None,
           "peak_gib": peak_gb()}
    frames = getattr(engine, "frames", None)
    if frames is not None:
        out["decoded_by"] = dict(frames.decoded_by)
        out["nvdec_fallbacks"] = frames.nvdec_fallbacks
    if fast is not None:
        out["fast_phases"] = {k: round(fast.timings[k] - t_fast0[k], 3) for k in fast.timings}
        graph = getattr(fast, "_graph", None)
        if graph is not None and not args_tiny():  # the decode step alone: graph replays back to back
            out["decode_step_replay_ms"] = round(_time_replay(graph["run"]) * 1e3, 3)
        out["prep_s_total"] = round(sum(r.extra.get("prep_s", 0) for r in ok), 3)
        out["host_vision"] = {"on": fast.host_vision, "error": fast.host_vision_error}
        if fast.graph_error:
            out["graph_error"] = fast.graph_error
    log(f"engine {label}: { {k: v for k, v in out.items() if k != 'chunks'} }")
    save()
    return out


def args_tiny() -> bool:
    return bool(RESULTS.get("args", {}).get("tiny"))


def _time_replay(run, n: int = 20) -> float:
    """Median seconds of one decode-step replay (rewrites the current slot: the batch is done)."""
    from bench_decode_attention import time_call  # this directory is on sys.path when run as a script

    return time_call(run, iters=n)


def unpatch(model) -> None:
    """Undo the engine's linear patch embedding, packed vision attention and compiled blocks, so the
    plain baselines run transformers as shipped."""
    pe = model.model.visual.patch_embed
    pe.__dict__.pop("forward", None)
    pe.__dict__.pop("_avcap_linear", None)
    for m in model.modules():
        for flag in ("_avcap_packed", "_avcap_compiled"):
            if m.__dict__.pop(flag, None):
                m.__dict__.pop("forward", None)
    pe.__dict__.pop("_avcap_linear", None)


def check_equivalence(model, tiny_dir, vision, names, args) -> dict[str, Any]:
    """On the GPU at real size: greedy token ids of the fast path (CUDA graphs) vs the fast path
    (eager) vs plain generate; the fast path's first-token logits vs the model's own forward; and
    a profile of the fast path (eager decode) on 8 caption rows."""
    from avcap.core.config import Sampling
    from avcap.engines.base import Request

    reqs = [Request(f"q{k}", mcq_messages(names[0], k)) for k in range(args.questions)]
    reqs += [Request(f"c{i}", caption_messages(names[1 + i])) for i in range(3)]
    s = Sampling(temperature=0.0, max_tokens=args.check_tokens)
    outs: dict[str, Any] = {}
    logits_check: dict[str, Any] = {}
    labels = [("plain", False, False, False), ("fast_eager", True, False, False), ("fast_graph", True, True, False)]
    if args.check_compile:
        labels.append(("fast_compile", True, True, True))
    compile_check: dict[str, Any] = {}
    for label, fast, graphs, comp in labels:
        eng = make_engine(model, tiny_dir, vision, args, batch=len(reqs), fast=fast, graphs=graphs, compile=comp)
        # token ids instead of text: the tiny tokenizer cannot spell most of the real vocabulary
        eng.processor.batch_decode = lambda new, **kw: [" ".join(str(int(t)) for t in row) for row in new]
        try:
            res = eng.generate(reqs, s, min_tokens=args.check_tokens)
            if label == "fast_eager":
                logits_check = _logits_check(eng, reqs[:4] + reqs[-2:], keep=compile_check)
                if not args.check_compile:
                    _profile_fast(eng, [Request(f"p{i}", caption_messages(names[4 + i])) for i in range(8)])
            if label == "fast_compile":  # compiled prefill vs the eager fast path's, same inputs
                kept: dict[str, Any] = {}
                _logits_check(eng, reqs[:4] + reqs[-2:], keep=kept)
                got = kept["got"]
                ref = compile_check["got"]
                d = (got - ref).abs()
                compile_check = {"max_abs_diff": float(d.max()), "ref_abs_max": float(ref.abs().max()),
                                 "rel_max": float(d.max() / ref.abs().max()),
                                 "argmax_equal": int((got.argmax(-1) == ref.argmax(-1)).sum()), "rows": int(got.shape[0])}
        finally:
            eng.close()
            if comp:
                unpatch(model)
        outs[label] = [[int(t) for t in r.raw_text.split()] if r.error is None else None for r in res]
        outs[label + "_paths"] = sorted({r.extra.get("path") for r in res if r.error is None})
        outs[label + "_errors"] = [r.error for r in res if r.error][:2]
        del eng
        _free()

    def agree(a, b):
        same_prefix = []
        for x, y in zip(a, b):
            if x is None or y is None:
                same_prefix.append(None)
                continue
            n = 0
            while n < min(len(x), len(y)) and x[n] == y[n]:
                n += 1
            same_prefix.append(n)
        return same_prefix

    return {"tokens": args.check_tokens, "rows": len(reqs),
            "graph_vs_eager_identical": outs["fast_graph"] == outs["fast_eager"],
            "fast_vs_plain_common_prefix": agree(outs["fast_graph"], outs["plain"]),
            "fast_vs_plain_identical_rows": sum(a == b for a, b in zip(outs["fast_graph"], outs["plain"])),
            "first_ids": {k: [r[:4] if r else None for r in outs[k][:3]] for k in ("plain", "fast_graph")},
            "first_logits": logits_check,
            **({"compile_vs_eager_first_logits": compile_check,
                "compile_vs_graph_common_prefix": agree(outs["fast_compile"], outs["fast_graph"]),
                "compile_vs_graph_identical_rows": sum(a == b for a, b in zip(outs["fast_compile"], outs["fast_graph"])),
                "compile_vs_plain_common_prefix": agree(outs["fast_compile"], outs["plain"])}
               if args.check_compile else {}),
            "paths": {k[0]: outs[k[0] + "_paths"] for k in labels},
            "errors": {k[0]: outs[k[0] + "_errors"] for k in labels}}


def _chunk_of(eng, reqs):
    from avcap.engines.base import video_parts

    return [(r, [eng.frames.frames(p) for p in video_parts(r.messages)]) for r in reqs]


def _logits_check(eng, reqs, keep: dict | None = None) -> dict[str, Any]:
    """Next-token logits: fast prefill (shared prefix + static cache) vs transformers' forward.
    `keep` receives the fast path's logits ("got")."""
    import torch

    chunk = _chunk_of(eng, reqs)
    with torch.inference_mode():
        full = eng.inputs_for(chunk).to(eng.device)
        ref = eng.model(**full, logits_to_keep=1).logits[:, -1].float()
        batch, pixels = eng.shared_inputs_for(chunk)
        got, _ = eng.fast.prefill(batch, [[id(vf) for vf in f] for _, f in chunk], max_new_tokens=4,
                                  video_pixels=pixels, device=eng.device)
    if keep is not None:
        keep["got"] = got
    diff = (got - ref).abs()
    return {"rows": len(reqs), "max_abs_diff": float(diff.max()), "ref_abs_max": float(ref.abs().max()),
            "rel_max": float(diff.max() / ref.abs().max()),
            "argmax_equal": int((got.argmax(-1) == ref.argmax(-1)).sum())}


def _profile_fast(eng, reqs) -> None:
    """Kernel time of one fast-path call (8 caption rows, 8 new tokens, eager decode)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from avcap.core.config import Sampling

    chunk = _chunk_of(eng, reqs)
    eng.batch_size = len(reqs)
    with torch.inference_mode():
        batch, pixels = eng.shared_inputs_for(chunk)
        spec, _ = eng.fast_spec(Sampling(temperature=0.0, max_tokens=8), 8)
        eng.fast.generate(batch, [[id(vf) for vf in f] for _, f in chunk], spec, max_new_tokens=8,
                          video_pixels=pixels, device=eng.device)  # warm
        sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = dict(eng.fast.timings)
            eng.fast.generate(batch, [[id(vf) for vf in f] for _, f in chunk], spec, max_new_tokens=8,
                              video_pixels=pixels, device=eng.device)
            sync()
    phases = {k: round(eng.fast.timings[k] - t0[k], 4) for k in ("prefix_s", "suffix_s", "decode_s")}
    text = f"phases: {phases}\n" + prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70)
    (RUN.out_dir / f"profile_infer_{RESULTS.get('current_size', 'x')}.txt").write_text(text)


def floors(model, peak, prompt_tokens: int, suffix_tokens: int, args, batch: int) -> dict[str, Any]:
    """Hardware floors per video from avcap.models.qwen3_vl.cost with the measured ceilings."""
    from avcap.models.qwen3_vl.cost import Shape, generation_floor

    s = Shape.from_config(model.config)
    g, ppg = args.nframes // 2, (args.height_px // 16) * (args.width_px // 16)
    f = generation_floor(s, batch=batch, prompt_tokens=prompt_tokens, new_tokens=args.caption_tokens,
                         patches_per_group=ppg, groups=g, peak_flops=peak["matmul_flops"],
                         peak_bytes=peak["copy_bytes_per_s"])
    cap = {"prefill_s_per_video": f.prefill_s / batch, "decode_s_per_video": f.decode_s / batch,
           "videos_per_s": batch / f.total_s}
    # MCQ with a shared prefix: vision + prefix once, 12 suffixes, <= mcq_tokens decode steps
    q = args.questions
    prefix = prompt_tokens - suffix_tokens
    pre = s.vision_flops(ppg, g) + s.text_flops(prefix, logits_tokens=0) + q * s.text_flops(suffix_tokens, prefix)
    rows = args.mcq_batch
    steps = args.mcq_tokens
    dec_bytes = sum(s.decode_weight_bytes() + rows * s.kv_bytes(prompt_tokens + i) for i in range(steps))
    dec = dec_bytes / peak["copy_bytes_per_s"] * q / rows
    mcq = {"prefill_s_per_video": pre / peak["matmul_flops"], "decode_s_per_video": dec,
           "videos_per_s": 1 / (pre / peak["matmul_flops"] + dec)}
    return {"caption": {k: round(v, 4) for k, v in cap.items()}, "mcq": {k: round(v, 4) for k, v in mcq.items()},
            "caption_batch": batch, "mcq_rows": rows}


def run_infer(size: str, args, tiny_dir: Path, names: dict[str, list[str]], peak, decode_best: str,
              device: str) -> dict[str, Any]:
    import torch
    from transformers import AutoProcessor

    from avcap.core.config import Vision
    from avcap.engines.base import Request

    res: dict[str, Any] = {}
    RESULTS["current_size"] = size
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t = time.perf_counter()
    model = build_model(size, tiny_dir, device, dtype)
    sync()
    res["build_s"] = round(time.perf_counter() - t, 1)
    res["shape"] = shape_numbers(model)
    vision = Vision(nframes=args.nframes, max_pixels=args.max_pixels)
    factor = 32
    processor = AutoProcessor.from_pretrained(tiny_dir)
    processor.tokenizer.padding_side = "left"
    log(f"{size}: built in {res['build_s']}s {res['shape']}")
    pool = names["infer"]
    processes = decode_best == "processes"
    cap_batch = args.caption_batch_8b if size == "8B" else args.caption_batch
    offset = 0
    if "engine" in args.paths:  # avcap's engine first: it is what the targets are about
        variants = (args.engine_variants_8b or args.engine_variants) if size == "8B" else args.engine_variants
        for variant in variants.split(","):  # eager, compile: [avcap.engine] compile
            tag = "" if variant == "eager" else f"_{variant}"
            if left(args.deadline) <= args.need_engine:
                res[f"engine_caption{tag}"] = {"skipped": "deadline"}
                continue
            kw = engine_variant(variant, processes)
            switch = sys.getswitchinterval()
            sys.setswitchinterval(kw.pop("switch_interval_s", switch))
            restore_choice = sync_choice() if kw.pop("syncchoice", False) else (lambda: None)
            restore_video = video_settings(full_probe=kw.pop("fullprobe", False), keep=kw.pop("keep", False))
            from avcap.engines import frames as frames_mod

            finished_here = frames_mod.NVDEC_FINISHED_HERE
            frames_mod.NVDEC_FINISHED_HERE = not kw.pop("nvconvert", False)

            def restore():
                restore_choice()
                restore_video()
            nohost = kw.pop("nohost", False)
            from avcap.video import colour as video_colour

            video_colour.reset_compiled(eager=kw.pop("eagerfinish", False))
            eng = make_engine(model, tiny_dir, vision, args, batch=cap_batch, **kw)
            if nohost and eng.fast is not None:
                eng.fast.host_vision = False
            try:
                n = cap_batch * (args.caption_chunks_2b or args.caption_chunks if size == "2B" else args.caption_chunks)
                reqs = [Request(f"c{i}", caption_messages(p)) for i, p in enumerate(pool[offset: offset + n])]
                offset += n
                res[f"engine_caption{tag}"] = _guard(lambda: run_engine(
                    eng, reqs, caption_sampling(args), args.caption_tokens, 1.0, f"{size} caption {variant}",
                    2 * args.decode_workers))
                _free()
                if left(args.deadline) > args.need_engine_mcq and "mcq" in args.engine_tasks:
                    eng.batch_size = args.mcq_batch
                    nv = (args.mcq_batch // args.questions) * args.mcq_chunks
                    reqs = [Request(f"v{v}q{k}", mcq_messages(p, k)) for v, p in enumerate(pool[offset: offset + nv])
                            for k in range(args.questions)]
                    offset += nv
                    res[f"engine_mcq{tag}"] = _guard(lambda: run_engine(
                        eng, reqs, mcq_sampling(args), 0, 1 / args.questions, f"{size} mcq {variant}",
                        2 * args.decode_workers))
                else:
                    res[f"engine_mcq{tag}"] = {"skipped": "deadline or not asked"}
            finally:
                sys.setswitchinterval(switch)
                restore()
                frames_mod.NVDEC_FINISHED_HERE = finished_here
                video_colour.reset_compiled()
                eng.close()
                del eng
                unpatch(model)
            _free()
            save()
    rest = pool[offset:]
    if "check" in args.paths and size in args.check_sizes.split(",") and left(args.deadline) > args.need_check:
        res["check"] = _guard(lambda: check_equivalence(model, tiny_dir, vision, rest, args))
        log(f"{size} check: {res['check']}")
        _free()
        save()
    unpatch(model)
    rest = rest[8:]
    if "plain" in args.paths and left(args.deadline) > args.need_plain:
        res["plain_batched"] = _guard(lambda: run_plain_batched(model, processor, rest, vision, factor, args, device))
    else:
        res["plain_batched"] = {"skipped": "not asked or deadline"}
    _free()
    save()
    rest = rest[args.plain_batch:]
    if "naive" in args.paths and size in args.naive_sizes.split(",") and left(args.deadline) > args.need_naive:
        res["naive"] = _guard(lambda: run_naive(model, processor, rest, vision, factor, args, device))
    else:
        res["naive"] = {"skipped": "not asked or deadline"}
    save()
    ec = res.get("engine_caption") or {}
    plen = ec.get("prompt_tokens") or ((res.get("plain_batched") or {}).get("caption") or {}).get("prompt_tokens")
    if plen:
        res["floor"] = floors(model, peak, plen, args.suffix_tokens, args, cap_batch)
    model = None  # freed before _free() (the _guard lambdas that read it have run)
    _free()
    return res


def _guard(fn):
    try:
        return fn()
    except Exception as exc:
        tb = traceback.format_exc()
        log(f"FAILED {type(exc).__name__}: {exc}\n{tb}")
        _free()
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": tb[-3000:]}


# ----------------------------------------------------------------------------- table


def _s(x) -> str:
    return "-" if x is None else str(x)


def table() -> str:
    S = RESULTS["sections"]
    lines = []
    env = S.get("env") or {}
    peak = S.get("peak") or {}
    lines.append(f"device: {env.get('gpu', 'cpu')}  torch {env.get('torch')}  transformers {env.get('transformers')}  "
                 f"cpus {env.get('cpus')}  date {env.get('date')}")
    if "matmul_tflops" in peak:
        lines.append(f"measured peak: bf16 matmul {peak['matmul_tflops']} TFLOP/s, copy {peak['copy_tb_s']} TB/s; "
                     f"patch embed {peak.get('patch_embed_8_videos')}")
    dec = S.get("decode") or {}
    measured = [m for m, r in dec.items() if isinstance(r, dict) and "videos_per_s" in r]
    if measured:
        lines.append("decode ceiling, decoders alone (no model): "
                     + ", ".join(f"{m} {dec[m]['videos_per_s']} videos/s" for m in measured))
    lines.append("")
    lines.append(f"{'model':5} {'task':8} {'path':26} {'videos/s':>9} {'steady':>8} {'GPU-only':>9} {'peak GiB':>9}  floor v/s")
    for size in ("tiny", "2B", "8B"):
        r = S.get(f"infer_{size}")
        if not isinstance(r, dict):
            continue
        fl = r.get("floor") or {}
        for task in ("caption", "mcq"):
            rows = [("naive loop (batch 1)", (r.get("naive") or {}).get(task, r.get("naive"))),
                    (f"plain generate (batch {RESULTS.get('args', {}).get('plain_batch')})",
                     (r.get("plain_batched") or {}).get(task, r.get("plain_batched"))),
                    ("avcap engine", r.get(f"engine_{task}"))]
            rows += [(f"avcap engine, {k[len(f'engine_{task}_'):]}", v) for k, v in r.items()
                     if k.startswith(f"engine_{task}_")]
            for name, v in rows:
                if not isinstance(v, dict) or "videos_per_s" not in v:
                    why = (v.get("error") or v.get("skipped")) if isinstance(v, dict) else "-"
                    lines.append(f"{size:5} {task:8} {name:26} {'-':>9}  ({str(why)[:60]})")
                    continue
                gpu = v.get("videos_per_s_gpu_steady", v.get("videos_per_s_after_decode"))
                lines.append(f"{size:5} {task:8} {name:26} {_s(v['videos_per_s']):>9} {_s(v.get('videos_per_s_steady')):>8} "
                             f"{_s(gpu):>9} {_s(v.get('peak_gib')):>9}  {_s((fl.get(task) or {}).get('videos_per_s'))}")
    sft = S.get("sft") or {}
    for size in ("tiny", "2B", "8B"):
        r = sft.get(size)
        if not isinstance(r, dict):
            continue
        for name, v in r.items():
            if not isinstance(v, dict):
                continue
            if "tokens_per_s" in v:
                lines.append(f"SFT {size} {name:32} {v['tokens_per_s']:>7} tok/s  MFU {v['mfu']:.3f} (vs 989: {v['mfu_vs_989']:.3f})"
                             f"  step {v['step_s']}s  peak {v['peak_gib']} GiB")
            else:
                lines.append(f"SFT {size} {name:32} {str(v.get('error') or v.get('skipped'))[:90]}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="8B,2B")
    ap.add_argument("--sft-sizes", default="2B,8B")
    ap.add_argument("--sections", default="peak,clips,sft,decode,infer")
    ap.add_argument("--paths", default="naive,plain,check,engine")
    ap.add_argument("--naive-sizes", default="8B", help="sizes that get the (slow) naive loop")
    ap.add_argument("--check-sizes", default="8B", help="sizes that get the fast-vs-generate token check")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny model, small clips, few requests")
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks")
    ap.add_argument("--work", default="/tmp/avcap-bench")
    ap.add_argument("--deadline", type=float, default=570.0, help="seconds from start; sections that would overrun are skipped")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--render-workers", type=int, default=12)
    ap.add_argument("--decode-workers", type=int, default=15)
    ap.add_argument("--naive-videos", type=int, default=1)
    ap.add_argument("--plain-batch", type=int, default=32)
    ap.add_argument("--caption-batch", type=int, default=64)
    ap.add_argument("--caption-batch-8b", type=int, default=64)
    ap.add_argument("--caption-chunks", type=int, default=2)
    ap.add_argument("--caption-chunks-2b", type=int, default=None, help="default: --caption-chunks")
    ap.add_argument("--decode-nvdec-workers", type=int, default=8, help="decode section: NVDEC workers measured")
    ap.add_argument("--decode-rounds", type=int, default=3,
                    help="decode section: videos per worker (the first round warms the pool, the rest are timed)")
    ap.add_argument("--decode-mode", default="auto", choices=["auto", "threads", "processes"],
                    help="auto: the faster one in the decode section (threads without it)")
    ap.add_argument("--sft-variants", default="trainer_as_is,fused_adamw_linear_pe,bf16_params_fused")
    ap.add_argument("--sft-variants-8b", default="bf16_params_fused_ckpt_micro4")
    ap.add_argument("--sft-profile", nargs="?", const=True, default=False,
                    help="profile one step of the first 2B variant (or of the comma-separated variants named)")
    ap.add_argument("--mcq-batch", type=int, default=48)
    ap.add_argument("--mcq-chunks", type=int, default=3)
    ap.add_argument("--prefill-batch", type=int, default=8)
    ap.add_argument("--engine-variants", default="eager", help="comma-separated: eager, compile ([avcap.engine] compile), nvdec ([avcap.engine] decoder), "
                         "compile+nvdec")
    ap.add_argument("--engine-variants-8b", default=None, help="default: --engine-variants")
    ap.add_argument("--engine-tasks", default="caption,mcq")
    ap.add_argument("--check-compile", action="store_true", help="the check path also runs the compiled engine")
    ap.add_argument("--decoder", default="cpu", help="[avcap.engine] decoder for the engine runs (cpu | nvdec)")
    ap.add_argument("--questions", type=int, default=12)
    ap.add_argument("--caption-tokens", type=int, default=256)
    ap.add_argument("--mcq-tokens", type=int, default=8)
    ap.add_argument("--check-tokens", type=int, default=24)
    ap.add_argument("--sft-steps", type=int, default=3)
    ap.add_argument("--sft-warmup", type=int, default=2)
    ap.add_argument("--nframes", type=int, default=16)
    ap.add_argument("--max-pixels", type=int, default=360000)
    args = ap.parse_args(argv)
    if args.tiny:
        args.sizes = args.naive_sizes = args.check_sizes = "tiny"
        args.clips, args.decode_workers, args.naive_videos, args.plain_batch = 2, 2, 1, 4
        args.caption_batch = args.caption_batch_8b = 3
        args.mcq_batch, args.mcq_chunks, args.questions, args.caption_tokens, args.check_tokens = 6, 2, 3, 12, 6
        args.sft_steps, args.sft_warmup, args.render_workers, args.nframes = 1, 1, 2, 8
        args.deadline = 10_000.0
        width, height, seconds, fps = 96, 64, 2.0, 8.0
    else:
        width, height, seconds, fps = 1936, 1220, 30.0, 30.0
    from avcap.video import resized_size

    args.height_px, args.width_px = resized_size(height, width, args.nframes, factor=32, min_pixels=3136,
                                                 max_pixels=args.max_pixels, total_pixels=None)
    args.suffix_tokens = 0
    args.need_naive, args.need_plain, args.need_engine, args.need_engine_mcq, args.need_check = (
        (45, 70, 50, 15, 30) if not args.tiny else (0, 0, 0, 0, 0))
    RUN.use_out_dir(args.out)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    RESULTS["args"] = {k: v for k, v in vars(args).items()}
    sections = args.sections.split(",")

    import torch

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    RESULTS["sections"]["env"] = environment()
    log(f"env: {RESULTS['sections']['env']}")
    tiny_dir = build_tiny_dir(work)
    from transformers import AutoProcessor

    args.suffix_tokens = _suffix_tokens(AutoProcessor.from_pretrained(tiny_dir), args)

    clips_box: dict[str, Any] = {}
    render = None
    if "clips" in sections or "infer" in sections or "decode" in sections:
        existing = sorted((work / "world" / "eval" / "AV_CAPTION" / "videos").glob("*.mp4"))
        manifest = work / "world" / "manifest.json"
        if len(existing) >= args.clips and manifest.exists() and json.loads(manifest.read_text()).get("status") == "complete":
            clips_box["result"] = {"clips": [str(v) for v in existing[: args.clips]], "reused": True}
        else:
            def _render():
                try:
                    clips_box["result"] = render_clips(work, args.clips, width, height, seconds, fps, args.render_workers)
                except Exception as exc:
                    clips_box["result"] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}

            render = threading.Thread(target=_render, daemon=True)
            render.start()
            log("clips: rendering in the background")

    peak = {"matmul_flops": 1e12, "copy_bytes_per_s": 1e10}
    if "peak" in sections:
        peak = section("peak", 10, args.deadline, measure_peak) or peak

    # an SFT clip of our own (the synth clips may still be rendering)
    if "sft" in sections:
        def _sft():
            clip = _quick_clip(work, width, height)
            return run_sft(args, tiny_dir, clip, peak, device)

        section("sft", 40, args.deadline, _sft)

    if render is not None:
        log("clips: waiting for the render")
        render.join()
    clips = clips_box.get("result") or {}
    RESULTS["sections"]["clips"] = clips
    save()
    log(f"clips: {({k: v for k, v in clips.items() if k != 'traceback'})}")
    if not clips.get("clips"):
        log("no clips: inference skipped")
        print(table())
        return 1

    names_infer = clip_names(work, clips["clips"], 2400, "infer")
    decode_best = args.decode_mode if args.decode_mode != "auto" else "threads"
    if "decode" in sections:  # --decode-mode auto: both modes, the faster one for inference
        names_dec = clip_names(work, clips["clips"], args.decode_rounds * args.decode_workers, "decode")
        from avcap.core.config import Vision

        d = section("decode", 40, args.deadline,
                    lambda: run_decode(names_dec, Vision(nframes=args.nframes, max_pixels=args.max_pixels), 32,
                                       decode_setups(args, device)))
        if d and args.decode_mode == "auto":
            decode_best = d["best"]
    offset = 0
    for size in (args.sizes.split(",") if "infer" in sections else []):
        # each size gets its own file names (no decoded video is ever reused across sections)
        pool = names_infer[offset:]
        offset += 1200 if not args.tiny else 80
        section(f"infer_{size}", 60, args.deadline,
                lambda size=size, pool=pool: run_infer(size, args, tiny_dir, {"infer": pool}, peak, decode_best, device))
    print(table())
    (RUN.out_dir / "bench_gpu_table.txt").write_text(table() + "\n")
    save()
    return 0


def _suffix_tokens(processor, args) -> int:
    """Tokens after the shared video prefix in a typical MCQ prompt (for the MCQ floor)."""
    from avcap.eval.tasks import format_mcq
    from avcap.core.config import Prompts

    p = Prompts()
    q, ch = MCQ_QUESTIONS[0]
    text = format_mcq(q, dict(zip("ABCD", ch)), p.mcq_suffix)
    return len(processor.tokenizer(text + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])


def _quick_clip(work: Path, width: int, height: int) -> str:
    """A 64-frame H.264 clip of moving gradients at the benchmark's frame size (SFT samples)."""
    from avcap.video import write_video

    path = work / f"sft_clip_{width}x{height}.mp4"
    if path.exists():
        return str(path)
    yy, xx = np.mgrid[0:height, 0:width]

    def frames():
        for i in range(64):
            f = np.stack([(xx // 3 + i * 5) % 256, (yy // 2 + i * 3) % 256, ((xx + yy) // 4 + i * 7) % 256], -1)
            yield f.astype(np.uint8)

    write_video(path, frames(), 30, gop=30)
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
