"""`avcap tiny-model` — a tiny Qwen3-VL built offline: random weights, a locally trained tokenizer.

The directory it writes is a Hugging Face `save_pretrained` checkpoint of the real architecture
(`Qwen3VLForConditionalGeneration`: interleaved mRoPE, DeepStack, patch 16, spatial merge 2,
temporal patch 2), with the Qwen3-VL special tokens, the Qwen3-VL chat template and a
`Qwen3VLProcessor` (image + video processor). It loads like a hub checkpoint:

    model = AutoModelForImageTextToText.from_pretrained(DIR, local_files_only=True)
    processor = AutoProcessor.from_pretrained(DIR, local_files_only=True)

Processor call (pre-sampled frames from `avcap.video.load_video`; works for this model and for
Cosmos-Reason2 / Qwen3-VL checkpoints alike):

    vf = avcap.video.load_video(path, nframes=16, max_pixels=...)      # resized to multiples of 32
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": [{"type": "video", "video": path},
                                             {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], videos=[vf.frames], video_metadata=[vf.metadata()],
                       do_sample_frames=False, do_resize=False, return_tensors="pt", padding=True)
    out = model.generate(**inputs, max_new_tokens=..., do_sample=False)

- `videos`: one `T×H×W×3` uint8 array per video (T even; the processor pads an odd T by repeating
  the last frame); `do_sample_frames=False` keeps exactly these frames; `do_resize=False` keeps
  avcap.video's qwen-vl-utils resize (the video processor would otherwise re-resize by its own
  T·H·W budget); H and W must then be multiples of 32 (patch 16 × merge 2).
- `video_metadata`: `{"fps", "frames_indices", "total_num_frames", ...}` of the source clip; the
  per-group "<t seconds>" timestamps in the prompt come from it (without it: 24 fps assumed).
- The prompt gets, per 2-frame group, `<t seconds><|vision_start|>` + (H/32)·(W/32)
  `<|video_pad|>` + `<|vision_end|>`; e.g. 16 frames of 96×160 → 8 groups × 15 = 120 video tokens.
  transformers 5.x leaves the template's outer `<|vision_start|>…<|vision_end|>` around them; 4.57
  replaces it.
- generation_config holds the real Qwen3-VL defaults (sampling, temperature 0.7, top_p 0.8, top_k 20;
  eos `<|im_end|>` / `<|endoftext|>`): pass `do_sample=False` for greedy decoding.
- Several videos in one batch: pass lists of equal length to `text`, `videos`, `video_metadata`;
  set `processor.tokenizer.padding_side = "left"` for batched generation.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from avcap.core.config import Prompts

# Heavy libraries (safetensors, tokenizers, torch, transformers) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

# --------------------------------------------------------------------------- tokens and sizes

# Qwen3-VL's added tokens in their real order (ids follow the BPE vocabulary, as in the real
# tokenizer). `special` as in the real tokenizer: special tokens are dropped by
# `decode(skip_special_tokens=True)`, the others (<think>, <tool_call>, ...) are kept.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

SIZES: dict[str, dict] = {
    # ~1.6M parameters (design.md: a model of this shape learned easy visual questions on a CPU);
    # DeepStack taps intermediate vision blocks, as the real [8, 16, 24] of 27 do
    "tiny": dict(
        bpe_vocab=4096,
        text=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, mrope_section=[6, 5, 5]),
        vision=dict(depth=2, hidden_size=96, intermediate_size=384, num_heads=4,
                    num_position_embeddings=256, deepstack_visual_indexes=[0]),
    ),
    "small": dict(
        bpe_vocab=6144,
        text=dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, mrope_section=[12, 10, 10]),
        vision=dict(depth=4, hidden_size=192, intermediate_size=768, num_heads=4,
                    num_position_embeddings=576, deepstack_visual_indexes=[0, 1, 2]),
    ),
}

PATCH_SIZE = 16
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2

# Qwen2's pre-tokenizer split (the same regex `Qwen2Tokenizer` rebuilds its backend with)
_QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def chat_template() -> str:
    """The Qwen3-VL (Instruct) chat template, verbatim."""
    return (Path(__file__).with_name("chat_template.jinja")).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- corpus


def builtin_corpus(seed: int = 0, n: int = 3000) -> list[str]:
    """Dash-cam sentences, captions and MCQ-shaped questions, generated from word lists."""
    rng = random.Random(seed)
    colors = ["red", "blue", "white", "black", "silver", "grey", "green", "yellow", "orange", "brown"]
    vehicles = ["car", "sedan", "SUV", "truck", "van", "bus", "pickup truck", "motorcycle", "taxi"]
    weather = ["clear", "overcast", "rainy", "foggy", "cloudy", "sunny"]
    lighting = ["daytime", "dusk", "night", "dawn", "bright daylight", "low light"]
    motion = ["drives straight", "turns left", "turns right", "changes lanes to the left",
              "changes lanes to the right", "slows down", "comes to a stop", "accelerates",
              "stays stopped", "keeps a steady speed"]
    actors = ["a pedestrian", "two pedestrians", "a cyclist", "a child", "a person with an umbrella"]
    actor_acts = ["crosses the road", "waits at the crosswalk", "walks on the sidewalk",
                  "rides along the bike lane", "stands near the curb"]
    places = ["an intersection", "a crosswalk", "a stop sign", "a traffic light", "a highway ramp",
              "a residential street", "a two-lane road", "a roundabout", "a parking lot"]
    lights = ["red", "green", "yellow", "off"]
    openers = ["The ego vehicle", "Our car", "The vehicle with the camera", "The ego car"]
    when = ["At the start of the clip", "At the end of the video", "Midway through",
            "In the first seconds", "Later", "Throughout the clip", "First", "Then", "Finally"]
    out: list[str] = []
    for i in range(n):
        c, v, m = rng.choice(colors), rng.choice(vehicles), rng.choice(motion)
        kind = i % 8
        if kind == 0:
            out.append(f"{rng.choice(openers)} {m} on {rng.choice(places)} in {rng.choice(weather)} "
                       f"weather during {rng.choice(lighting)}.")
        elif kind == 1:
            out.append(f"A {c} {v} is ahead of the ego vehicle and {rng.choice(motion)}. "
                       f"{rng.choice(actors).capitalize()} {rng.choice(actor_acts)}.")
        elif kind == 2:
            out.append(f"{rng.choice(when)}, the traffic light is {rng.choice(lights)} and "
                       f"{rng.choice(openers).lower()} {m}.")
        elif kind == 3:
            opts = rng.sample(colors, 4)
            out.append(f"What color is the lead vehicle?\nA. {opts[0]}\nB. {opts[1]}\nC. {opts[2]}\n"
                       f"D. {opts[3]}\nAnswer with the option's letter from the given choices directly.")
            out.append(rng.choice("ABCD"))
        elif kind == 4:
            caption = {
                "weather": rng.choice(weather), "lighting": rng.choice(lighting),
                "road_conditions": rng.choice(["dry", "wet", "icy"]),
                "traffic_light": rng.choice(lights), "traffic_sign": rng.choice(["stop sign", "none"]),
                "road_type": rng.choice(["urban", "highway", "rural"]),
                "junction_type": rng.choice(["intersection", "none", "T-junction"]),
                "lane_type": rng.choice(["single lane", "multi-lane"]),
                "driving_difficulty": rng.choice(["easy", "medium", "hard"]),
                "safety_analysis": f"The ego vehicle {m}. A {c} {v} is ahead.",
                "critical_object": [{"type": v, "color": c, "box": [rng.randint(0, 320),
                                     rng.randint(0, 200), rng.randint(0, 320), rng.randint(0, 200)]}],
            }
            out.append(json.dumps(caption, indent=rng.choice([None, 2])))
        elif kind == 5:
            out.append(f"<think>\nThe {c} {v} is visible in front. It {rng.choice(motion)}.\n</think>\n\n"
                       f"The answer is {rng.choice('ABCD')}.")
        elif kind == 6:
            out.append(f"Q: Is there {rng.choice(actors)} in the scene? A: {rng.choice(['Yes', 'No'])}, "
                       f"{rng.choice(actors)} {rng.choice(actor_acts)} near {rng.choice(places)}.")
        else:
            out.append(f"There are {rng.randint(0, 12)} vehicles and {rng.randint(0, 5)} people; "
                       f"speed {rng.randint(0, 120)} km/h at {rng.randint(0, 29)}.{rng.randint(0, 9)} seconds.")
    return out


def _prompt_texts() -> list[str]:
    p = Prompts()
    return [p.system, p.caption, p.mcq_suffix, p.lingoqa, p.reasoning_suffix,
            "0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz",
            '{"": [], ": ", ", " } ] \n```json\n```']


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """Byte-level BPE in Qwen2's layout, then the Qwen3-VL added tokens; returns a Qwen2Tokenizer
    (transformers 5) or a Qwen2TokenizerFast (4.57): the same vocabulary, merges and special tokens."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import AddedToken, Qwen2Tokenizer

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: any text tokenizes
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = dict(model["vocab"])
    for text, _ in ADDED_TOKENS:  # ids in the real order, right after the BPE vocabulary
        vocab[text] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    specials = [t for t, special in ADDED_TOKENS if special and t != "<|endoftext|>"]
    common = dict(unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                  errors="replace", clean_up_tokenization_spaces=False, split_special_tokens=False,
                  model_max_length=262144)
    if "vocab" in inspect.signature(Qwen2Tokenizer.__init__).parameters:  # transformers 5: built from memory
        tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, extra_special_tokens=specials, **common)
    else:  # transformers 4.x: the fast tokenizer converts vocab.json + merges.txt (Qwen2Converter)
        tokenizer = _tokenizer_from_files(vocab, merges, specials, common)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t, special in ADDED_TOKENS if not special])
    return tokenizer


def _tokenizer_from_files(vocab: dict, merges: list, specials: list[str], common: dict):
    """transformers 4.x's Qwen2TokenizerFast from a vocab.json and a merges.txt (it converts the
    slow tokenizer: the same BPE, NFC, Qwen2 split and byte-level pre-tokenizer and decoder);
    4.x names the extra special tokens `additional_special_tokens`."""

    from transformers import Qwen2TokenizerFast

    with tempfile.TemporaryDirectory(prefix="avcap-tokenizer-") as tmp:
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        return Qwen2TokenizerFast(vocab_file=str(vocab_file), merges_file=str(merges_file),
                                  additional_special_tokens=specials, **common)


# --------------------------------------------------------------------------- model


def make_config(tokenizer, size: str = "tiny"):
    from transformers import Qwen3VLConfig, Qwen3VLTextConfig

    spec = SIZES[size]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t, _ in ADDED_TOKENS}
    vocab_size = -(-len(tokenizer) // 64) * 64  # padded, like the real 151936 > 151669 tokens
    t = dict(spec["text"])
    mrope = t.pop("mrope_section")
    if sum(mrope) * 2 != t["head_dim"]:
        raise ValueError(f"mrope_section {mrope} must sum to head_dim/2 = {t['head_dim'] // 2}")
    text_config = dict(
        t, vocab_size=vocab_size, hidden_act="silu", max_position_embeddings=262144,
        rms_norm_eps=1e-6, attention_bias=False, attention_dropout=0.0, initializer_range=0.02,
        use_cache=True, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    rope = {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": mrope, "mrope_interleaved": True}
    if "rope_parameters" in inspect.signature(Qwen3VLTextConfig.__init__).parameters:  # transformers 5
        text_config["rope_parameters"] = rope
    else:  # transformers 4.x: rope_theta + rope_scaling; the text config decides weight tying
        rope = dict(rope)
        text_config.update(rope_theta=rope.pop("rope_theta"), rope_scaling=rope, tie_word_embeddings=True)
    v = dict(spec["vision"])
    if max(v["deepstack_visual_indexes"]) >= v["depth"] or len(v["deepstack_visual_indexes"]) > t["num_hidden_layers"]:
        raise ValueError("deepstack_visual_indexes must name vision blocks and fit the text layers")
    vision_config = dict(
        v, hidden_act="gelu_pytorch_tanh", in_channels=3, patch_size=PATCH_SIZE,
        spatial_merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE,
        out_hidden_size=t["hidden_size"], initializer_range=0.02,
    )
    return Qwen3VLConfig(
        text_config=text_config, vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def make_processor(tokenizer):
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    common = dict(patch_size=PATCH_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE, merge_size=MERGE_SIZE,
                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    # the real Qwen3-VL preprocessor sizes (pixel budgets)
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 65536, "longest_edge": 16777216}, **common)
    video_processor = Qwen3VLVideoProcessor(size={"shortest_edge": 4096, "longest_edge": 25165824}, **common)
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                            video_processor=video_processor, chat_template=chat_template())


def build_tiny_model(out, *, size: str = "tiny", seed: int = 0, corpus: Optional[Iterable[str]] = None) -> Path:
    """Write a tiny Qwen3-VL checkpoint directory to `out` and return its path. The tokenizer is
    trained on `corpus` (default: `builtin_corpus(seed)`) plus avcap's prompts; the embedded
    default's model adds the synthetic world's text (`avcap.demo.tiny_model`)."""
    import torch
    from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    out = Path(out)
    texts = list(corpus) if corpus is not None else builtin_corpus(seed)
    texts += _prompt_texts()
    tokenizer = train_tokenizer(texts, SIZES[size]["bpe_vocab"])
    config = make_config(tokenizer, size)

    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).to(torch.float32).eval()
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    # the real Qwen3-VL generation defaults
    model.generation_config = GenerationConfig(
        bos_token_id=eos[1], eos_token_id=eos, pad_token_id=eos[1],
        do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.0,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    make_processor(tokenizer).save_pretrained(out)
    _hub_keys(out)
    return out


def _hub_keys(out: Path) -> None:
    """Write the config keys the way the hub's Qwen3-VL checkpoints spell them.

    transformers 5 reads both spellings; transformers 4.57 (vLLM 0.11, cosmos-rl) reads only the
    hub's: `rope_theta` + `rope_scaling` (not `rope_parameters`), `tie_word_embeddings` in
    `text_config` too, and `additional_special_tokens` (a list; 4.57's `extra_special_tokens` is a dict).
    """
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    text = cfg["text_config"]
    if "rope_parameters" in text:  # transformers 5 wrote its own spelling (4.x writes the hub's)
        rope = dict(text.pop("rope_parameters"))
        text["rope_theta"] = rope.pop("rope_theta")
        text["rope_scaling"] = rope
    text["tie_word_embeddings"] = cfg["tie_word_embeddings"]
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tok_path = out / "tokenizer_config.json"
    tok = json.loads(tok_path.read_text(encoding="utf-8"))
    extra = tok.pop("extra_special_tokens", None)
    if isinstance(extra, list):  # transformers 5's list; 4.x already wrote additional_special_tokens
        tok["additional_special_tokens"] = extra
    tok_path.write_text(json.dumps(tok, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def count_parameters(path) -> int:
    """Parameters stored in a checkpoint directory's safetensors files (tied weights once)."""
    from safetensors import safe_open

    n = 0
    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            for k in st.keys():
                shape = st.get_slice(k).get_shape()
                n += math.prod(shape)
    return n
