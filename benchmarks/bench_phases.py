"""Where a real-size caption batch spends its GPU time, phase by phase, and how fast a process starts.

    python benchmarks/bench_phases.py --size 8B --out $OUT            # on the GPU (about 4 minutes at 8B)
    python benchmarks/bench_phases.py --tiny --out /tmp/phases        # CPU smoke run (tiny model)

Not a test. No video decoding: one clip's frames, copied under distinct identities, make `--rows`
caption requests of distinct videos, so the engine's fast path (avcap.engines.hf.fast_generate) runs
exactly a caption batch's prefill and 256-token decode and nothing waits for frames. Measures:

- first call: the engine's first batch in this process (compilation, CUDA graph captures), with
  torch's compile counters (FX graph and AOTAutograd cache hits and misses);
- phases of the steady calls (prefix, suffix, decode) for each `--decode-attention` variant, and
  the vision tower alone on `prefill_batch` videos, with achieved TFLOP/s from
  avcap.models.qwen3_vl.cost;
- a decode step's attention alone at the batch's cache size: masked sdpa vs FlexAttention, GB/s;
- greedy tokens and first-step logits of the variants against each other;
- with `--second-process`: the same first call in a fresh process started after this one (the
  compile caches this one left behind), its wall time from the process's start.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

T_START = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gpu as bg  # noqa: E402
from bench_env import REPO, ensure_deps  # noqa: E402
from bench_decode_attention import time_call  # noqa: E402


def counters() -> dict[str, int]:
    from torch._dynamo.utils import counters as c

    out = {}
    for group in ("inductor", "aot_autograd"):
        for k, v in c[group].items():
            if "cache" in k:
                out[f"{group}.{k}"] = int(v)
    return out


def attention_alone(model, rows: int, kv_len: int) -> dict[str, Any]:
    """One decode step's attention over a (rows, kv_heads, kv_len, D) cache: sdpa (folded, masked) vs flex."""
    import torch
    import torch.nn.functional as F

    from avcap.engines.hf.fast_generate import flex_decode

    tc = model.config.text_config
    heads, kvh, d = tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim
    g = heads // kvh
    dev = "cuda"
    kc = torch.randn(rows, kvh, kv_len, d, device=dev, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    q = torch.randn(rows, heads, 1, d, device=dev, dtype=torch.bfloat16)
    valid = torch.ones(rows, kv_len, dtype=torch.bool, device=dev)
    valid[:, :40] = False  # left padding of some rows
    mask = valid[:, None, None, :].repeat(1, 1, g, 1)
    scale = d ** -0.5

    def sdpa():
        return F.scaled_dot_product_attention(q.reshape(rows, kvh, g, d), kc, vc, attn_mask=mask, scale=scale)

    flex = flex_decode(valid)
    out = {"rows": rows, "kv_len": kv_len, "kv_gb": round(2 * kc.numel() * 2 / 1e9, 3)}
    ref = sdpa().reshape(rows, heads, 1, d).float()
    for name, fn in (("sdpa", sdpa), ("flex", lambda: flex(q, kc, vc, scale))):
        try:
            ms = 1e3 * time_call(fn, iters=20)
            got = fn().reshape(rows, heads, 1, d).float()
            out[name] = {"ms": round(ms, 3), "GB_per_s": round(out["kv_gb"] / ms * 1e3, 1),
                         "max_abs_diff_vs_sdpa": float((got - ref).abs().max())}
        except Exception as exc:  # noqa: BLE001 — a variant that fails is a result too
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    return out


def overlap(model, eng, gen, batch, pixels, args) -> dict[str, Any]:
    """Wall time of N decode-step replays (the batch's largest captured step) and of the vision tower
    on all the batch's videos (prefill_batch at a time), alone and at once from two threads on two
    streams: how much of the compute-bound vision work hides under the bandwidth-bound decode."""
    import threading

    import torch

    step = max(gen._steps.values(), key=lambda e: e["kv_len"])
    n_steps = 255
    chunks = []
    n = args.prefill_batch
    for lo in range(0, args.rows, n):
        chunks.append((torch.cat(list(pixels[lo:lo + n])).to(eng.device), batch["video_grid_thw"][lo:lo + n].to(eng.device)))
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()

    def decode():
        with torch.cuda.stream(s1), torch.inference_mode():
            for _ in range(n_steps):
                step["run"]()
        s1.synchronize()

    def vision():
        with torch.cuda.stream(s2), torch.inference_mode():
            for pix, g in chunks:
                model.model.get_video_features(pixel_values_videos=pix, video_grid_thw=g)
        s2.synchronize()

    def timed(fns):
        torch.cuda.synchronize()
        t = time.perf_counter()
        threads = [threading.Thread(target=f) for f in fns]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        torch.cuda.synchronize()
        return time.perf_counter() - t

    timed([decode]), timed([vision])  # warm
    out = {"decode_steps": n_steps, "vision_videos": args.rows}
    for k in range(2):
        out[f"decode_alone_s_{k}"] = round(timed([decode]), 3)
        out[f"vision_alone_s_{k}"] = round(timed([vision]), 3)
        out[f"together_s_{k}"] = round(timed([decode, vision]), 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="8B")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/bench_phases")
    ap.add_argument("--work", default="/tmp/avcap-bench")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", default="sdpa:library,sdpa:transcribed,flex:transcribed",
                    help="decode attention:prefix layers, comma-separated")
    ap.add_argument("--batches", type=int, default=1, help="--first-only: batches run (whole-run rate)")
    ap.add_argument("--engine-variant", default="sdpa:transcribed", help="the engine's own fast path")
    ap.add_argument("--prefill-batch", type=int, default=8)
    ap.add_argument("--first-only", action="store_true", help="build, run one batch, report, exit")
    ap.add_argument("--second-process", action="store_true")
    ap.add_argument("--overlap", action="store_true",
                    help="decode-step replays and the vision tower alone and at once, on two streams")
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    ensure_deps(REPO / ".whl")  # src/ on the path; on a bare device image the carried wheels (run 63 failed without)
    import torch

    from avcap.core.config import Sampling, Vision
    from avcap.engines.base import Request
    from avcap.engines.hf.fast_generate import FastGenerator
    from avcap.models.qwen3_vl.cost import Shape

    res: dict[str, Any] = {"argv": sys.argv[1:], "env": bg.environment(), "t_import_s": round(time.perf_counter() - T_START, 2)}
    name = "first" if args.first_only else "phases"
    path = out_dir / f"bench_phases_{name}.json"

    def save():
        path.write_text(json.dumps(res, indent=1))

    size = "tiny" if args.tiny else args.size
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    tiny_dir = bg.build_tiny_dir(work)
    t = time.perf_counter()
    model = bg.build_model(size, tiny_dir, device, dtype)
    res["build_s"] = round(time.perf_counter() - t, 2)
    ns = argparse.Namespace(prefill_batch=args.prefill_batch, tiny=args.tiny, decoder="cpu", decode_workers=2)
    vision = Vision(nframes=16 if not args.tiny else 4, max_pixels=360000 if not args.tiny else 64 * 96)
    clip = bg._quick_clip(work, 1936 if not args.tiny else 96, 1220 if not args.tiny else 64)
    eng = bg.make_engine(model, tiny_dir, vision, ns, batch=args.rows, compile=True)
    attn0, prefix0 = args.engine_variant.split(":")
    eng.fast.decode_attention, eng.fast.prefix = attn0, prefix0
    from avcap.engines.base import video_parts

    msgs = bg.caption_messages(clip)
    frames0 = eng.frames.frames(video_parts(msgs)[0])
    chunk = [(Request(f"c{i}", msgs), [copy.copy(frames0)]) for i in range(args.rows)]
    row_videos = [[i] for i in range(args.rows)]
    caption = Sampling(temperature=0.7, top_p=0.8, top_k=20, presence_penalty=1.5, max_tokens=args.tokens, seed=1)
    greedy = Sampling(temperature=0.0, max_tokens=32)
    with torch.inference_mode():
        batch, pixels = eng.shared_inputs_for(chunk)
    res["prompt_tokens"] = int(batch["attention_mask"][0].sum())
    res["t_ready_s"] = round(time.perf_counter() - T_START, 2)

    def call(gen, sampling, min_tokens):
        spec, _ = eng.fast_spec(sampling, min_tokens)
        before = dict(gen.timings)
        bg.sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            torch.manual_seed(sampling.seed or 0)
            toks = gen.generate(batch, row_videos, spec, max_new_tokens=sampling.max_tokens, video_pixels=pixels,
                                device=eng.device)
        bg.sync()
        wall = time.perf_counter() - t0
        ph = {k: round(gen.timings[k] - before[k], 3) for k in ("prefix_s", "suffix_s", "decode_s", "decode_steps")}
        return toks, {"wall_s": round(wall, 3), **ph}

    # the first batch of this process
    c0 = counters()
    t_first = time.perf_counter()
    _, first = call(eng.fast, caption, args.tokens)
    res["first_call"] = {**first, "since_process_start_s": round(time.perf_counter() - T_START, 2),
                         "compile_counters": {k: v - c0.get(k, 0) for k, v in counters().items()},
                         "compile_cache": eng.compile_cache.get("dir")}
    if args.first_only and args.batches > 1:
        later = [call(eng.fast, caption, args.tokens)[1] for _ in range(args.batches - 1)]
        now = time.perf_counter()
        res["whole_run"] = {"videos": args.rows * args.batches, "later_batches": later,
                            "engine_s": round(now - t_first, 2), "process_s": round(now - T_START, 2),
                            "videos_per_s_engine": round(args.rows * args.batches / (now - t_first), 3),
                            "videos_per_s_process": round(args.rows * args.batches / (now - T_START), 3)}
        print("whole run:", {k: v for k, v in res["whole_run"].items() if k != "later_batches"}, flush=True)
    try:
        from torch._dynamo.utils import compile_times

        res["first_call"]["compile_times"] = compile_times(repr="str", aggregate=True)[-3000:]
    except Exception as exc:  # noqa: BLE001
        res["first_call"]["compile_times"] = f"{type(exc).__name__}: {exc}"
    print("first call:", res["first_call"], flush=True)
    save()
    if args.first_only:
        return 0

    shape = Shape.from_config(model.config)
    grid = batch["video_grid_thw"][0].tolist()
    vflops = shape.vision_flops(grid[1] * grid[2], grid[0])
    tflops = shape.text_flops(res["prompt_tokens"] - 1)
    res["flops_per_video"] = {"vision_T": round(vflops / 1e12, 3), "text_T": round(tflops / 1e12, 3)}
    res["variants"] = {}
    gens = {args.engine_variant: eng.fast}
    logits = {}
    for variant in args.variants.split(","):
        gen = gens.get(variant)
        for name_, g in gens.items():  # one KV cache at a time
            if name_ != variant:
                g._buffers, g._steps, g._graph = None, {}, None
        torch.cuda.empty_cache() if device == "cuda" else None
        if gen is None:
            attn, prefix = variant.split(":")
            gen = gens[variant] = FastGenerator(model, pad_token_id=eng.fast.pad, eos_token_ids=eng.fast.eos,
                                                prefill_batch=args.prefill_batch, compile=True,
                                                decode_attention=attn, prefix=prefix)
            _, warm = call(gen, caption, args.tokens)
        else:
            warm = None
        with torch.inference_mode():
            lg, _ = gen.prefill(batch, row_videos, max_new_tokens=args.tokens, video_pixels=pixels, device=eng.device)
        logits[variant] = lg[:16].float().cpu()
        del lg
        runs = [call(gen, caption, args.tokens)[1] for _ in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        v = {"first_call": warm, "runs": runs, "videos_per_s": round(args.rows / med["wall_s"], 3),
             "prefix_ms_per_video": round(1e3 * med["prefix_s"] / args.rows, 2),
             "decode_ms_per_step": round(1e3 * med["decode_s"] / max(1, med["decode_steps"]), 3),
             "prefill_TFLOPs_per_s": round((vflops + tflops) * args.rows / med["prefix_s"] / 1e12, 1)}
        toks, _ = call(gen, greedy, 32)
        v["greedy_tokens"] = toks.tolist()
        res["variants"][variant] = v
        print(variant, {k: x for k, x in v.items() if k not in ("greedy_tokens", "runs")}, flush=True)
        save()
    names = list(res["variants"])
    if len(names) > 1:
        a, b = (torch.tensor(res["variants"][n]["greedy_tokens"]) for n in names[:2])
        same_rows = int((a == b).all(-1).sum())
        first_diff = [int((a[r] != b[r]).nonzero()[0]) if not bool((a[r] == b[r]).all()) else None for r in range(a.shape[0])]
        # the rows show one clip under N identities: they are usually one sequence, so say how many differ
        distinct = len({tuple(r) for r in a.tolist()})
        res["greedy_compare"] = {"variants": names[:2], "rows_identical": same_rows, "rows": a.shape[0],
                                 "distinct_sequences": distinct, "first_differing_step": first_diff}
        print("greedy:", same_rows, "of", a.shape[0], f"rows identical ({distinct} distinct sequence(s) of {names[0]})",
              flush=True)
        ref = logits[names[0]]
        res["logits_compare"] = {}
        for n_ in names[1:]:
            d = (logits[n_] - ref).abs()
            res["logits_compare"][f"{n_} vs {names[0]}"] = {
                "rows": ref.shape[0], "max_abs_diff": float(d.max()), "ref_abs_max": float(ref.abs().max()),
                "rel_max": float(d.max() / ref.abs().max()),
                "argmax_equal": int((logits[n_].argmax(-1) == ref.argmax(-1)).sum())}
        for n_ in names[1:]:
            a, b = (torch.tensor(res["variants"][m]["greedy_tokens"]) for m in (names[0], n_))
            res["greedy_compare"][f"{n_} vs {names[0]}"] = int((a == b).all(-1).sum())
        print("logits:", res["logits_compare"], flush=True)
    for v in res["variants"].values():
        v.pop("greedy_tokens", None)
    save()

    if device == "cuda" and args.overlap:
        res["overlap"] = overlap(model, eng, gens[args.variants.split(",")[-1]], batch, pixels, args)
        print("overlap:", res["overlap"], flush=True)
        save()
    if device == "cuda":
        # the vision tower alone on one prefill call's videos (compiled blocks, as the engine runs it)
        n = args.prefill_batch
        pix = torch.cat(list(pixels[:n])).to(eng.device)
        g = batch["video_grid_thw"][:n].to(eng.device)
        with torch.inference_mode():
            ms = 1e3 * time_call(lambda: model.model.get_video_features(pixel_values_videos=pix, video_grid_thw=g),
                                  iters=1, repeats=3)
        res["vision_alone"] = {"videos": n, "ms": round(ms, 2), "ms_per_video": round(ms / n, 2),
                               "TFLOPs_per_s": round(vflops * n / ms / 1e9, 1)}
        print("vision alone:", res["vision_alone"], flush=True)
        for g_ in gens.values():
            g_._buffers, g_._steps, g_._graph = None, {}, None
        torch.cuda.empty_cache()
        with torch.inference_mode():
            res["attention_alone"] = [attention_alone(model, args.rows, kv) for kv in (1024, 2944, 3072)]
        print("attention alone:", res["attention_alone"], flush=True)
        save()
    eng.close()
    eng = model = gens = None  # the second process needs the GPU memory
    if args.second_process:
        cmd = [sys.executable, __file__, "--first-only", "--out", str(out_dir / "second"), "--work", str(work),
               "--rows", str(args.rows), "--tokens", str(args.tokens), "--size", args.size]
        if args.tiny:
            cmd.append("--tiny")
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        res["second_process"] = {"rc": p.returncode, "wall_s": round(time.perf_counter() - t, 2),
                                 "tail": (p.stdout + p.stderr)[-1500:]}
        try:
            res["second_process"]["first"] = json.loads((out_dir / "second" / "bench_phases_first.json").read_text())["first_call"]
        except (OSError, ValueError, KeyError) as exc:
            res["second_process"]["first"] = f"unreadable: {exc}"
        print("second process:", res["second_process"], flush=True)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
