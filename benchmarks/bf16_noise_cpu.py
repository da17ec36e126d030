"""How far apart bf16 logits land anyway: the yardstick for the fast path's bf16 differences.

    python benchmarks/bf16_noise_cpu.py [--layers 6] [--work /tmp/avcap-noise]

CPU, minutes. A Qwen3-VL with the real 2B widths (avcap.models.qwen3_vl.cost.realsize_config) but `--layers` text
layers and vision blocks, random weights, bf16; five requests (four questions about one clip, a
caption of another; avcap.demo.synth clips). Next-token logits, as max |difference| / max |logit|:

- plain batched vs the same requests one at a time (transformers' forward): bf16's own noise,
- the engine's fast path (shared prefix, static cache) vs plain batched,
- each against the same model in float32.

Not a test (too slow for CI); the figures are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    import torch
    from transformers import AutoConfig, GenerationConfig, Qwen3VLForConditionalGeneration

    from avcap.core.config import Vision, load_config
    from avcap.engines.base import Request
    from avcap.engines.hf.engine import TransformersEngine
    from avcap.models.qwen3_vl.cost import realsize_config
    from avcap.demo.synth import synthesize
    from avcap.demo.tiny_model import build_tiny_model
    from bench_gpu import _chunk_of, caption_messages, mcq_messages

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--work", default="/tmp/avcap-noise")
    args = ap.parse_args(argv)
    work = Path(args.work)
    tiny = work / "tiny-model"
    if not (tiny / "config.json").exists():
        build_tiny_model(tiny, size="tiny", seed=0)
    world = work / "world"
    if not (world / "manifest.json").exists():
        synthesize(world, videos=2, train_videos=0, lingoqa_segments=0, seed=0, width=320, height=192,
                   seconds=2.0, fps=8)
    clips = sorted((world / "eval" / "AV_CAPTION" / "videos").glob("*.mp4"))

    tc = AutoConfig.from_pretrained(tiny)
    cfg = realsize_config("2B")
    cfg.text_config.num_hidden_layers = args.layers
    cfg.vision_config.depth = args.layers
    cfg.vision_config.deepstack_visual_indexes = [i for i in (1, 3, 5) if i < args.layers]
    for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        setattr(cfg, k, getattr(tc, k))
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(cfg.text_config, k, getattr(tc.text_config, k))
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16).eval()
    model.generation_config = GenerationConfig.from_pretrained(tiny)
    ecfg = load_config(None).avcap.engine.model_copy(update={"device": "cpu", "batch_size": 8})
    eng = TransformersEngine(ecfg, vision=Vision(nframes=4, max_pixels=360000), model=model, processor=str(tiny))
    reqs = [Request(f"q{k}", mcq_messages(str(clips[0]), k)) for k in range(4)]
    reqs.append(Request("c", caption_messages(str(clips[1]))))
    chunk = _chunk_of(eng, reqs)
    with torch.inference_mode():
        full = eng.inputs_for(chunk)
        ref = model(**full, logits_to_keep=1).logits[:, -1].float()
        singles = torch.cat([model(**eng.inputs_for([c]), logits_to_keep=1).logits[:, -1].float() for c in chunk])
        batch, pixels = eng.shared_inputs_for(chunk)
        fast, _ = eng.fast.prefill(batch, [[id(vf) for vf in f] for _, f in chunk], max_new_tokens=4, video_pixels=pixels)
        ref32 = model.float()(**full, logits_to_keep=1).logits[:, -1].float()
    eng.close()

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max())

    def same(a, b):
        return int((a.argmax(-1) == b.argmax(-1)).sum())

    n = len(reqs)
    print(f"prompt tokens {full['input_ids'].shape[1]}, text layers {args.layers}, max |logit| {float(ref.abs().max()):.2f}")
    print(f"plain batched vs one at a time (bf16): {rel(ref, singles):.4f}  argmax equal {same(ref, singles)}/{n}")
    print(f"fast path vs plain batched (bf16):     {rel(fast, ref):.4f}  argmax equal {same(fast, ref)}/{n}")
    print(f"plain bf16 vs float32:                 {rel(ref, ref32):.4f}  argmax equal {same(ref, ref32)}/{n}")
    print(f"fast bf16 vs float32:                  {rel(fast, ref32):.4f}  argmax equal {same(fast, ref32)}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
