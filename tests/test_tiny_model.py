"""avcap tiny-model: a real-architecture Qwen3-VL that loads, prompts, generates and trains like a hub checkpoint."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from avcap.core.config import Prompts  # noqa: E402
from avcap.models.qwen3_vl.tiny import ADDED_TOKENS  # noqa: E402


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, local_files_only=True)
    processor = AutoProcessor.from_pretrained(tiny_model_dir, local_files_only=True)
    return model.eval(), processor


def _clip(n=16, h=96, w=160, seed=0):
    """Pre-sampled frames of a 30 fps, 90-frame clip and their transformers video_metadata."""
    frames = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    indices = [int(i) for i in np.linspace(0, 89, n).round()]
    return frames, {"fps": 30.0, "frames_indices": indices, "total_num_frames": 90, "duration": 3.0}


def _messages(question, answer=None):
    msgs = [
        {"role": "system", "content": Prompts().system},
        {"role": "user", "content": [{"type": "video", "video": "clip.mp4"}, {"type": "text", "text": question}]},
    ]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def _inputs(processor, texts, clips):
    return processor(
        text=texts, videos=[f for f, _ in clips], video_metadata=[m for _, m in clips],
        do_sample_frames=False, do_resize=False, return_tensors="pt", padding=True,
    )


def test_loads_through_auto_classes_like_a_hub_checkpoint(tiny_model_dir, loaded):
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

    model, processor = loaded
    assert type(model) is Qwen3VLForConditionalGeneration
    assert type(processor) is Qwen3VLProcessor
    assert type(processor.video_processor) is Qwen3VLVideoProcessor
    assert model.dtype == torch.float32
    vp = processor.video_processor
    assert (vp.patch_size, vp.temporal_patch_size, vp.merge_size) == (16, 2, 2)
    cfg = model.config
    assert cfg.vision_config.patch_size == 16 and cfg.vision_config.spatial_merge_size == 2
    assert cfg.vision_config.temporal_patch_size == 2
    assert cfg.vision_config.out_hidden_size == cfg.text_config.hidden_size
    tc = cfg.text_config  # transformers 5: rope_parameters; 4.57: rope_scaling + rope_theta
    rope = getattr(tc, "rope_parameters", None) or {**tc.rope_scaling, "rope_theta": tc.rope_theta}
    assert rope["mrope_interleaved"] and sum(rope["mrope_section"]) * 2 == cfg.text_config.head_dim
    # special tokens are wired into the config and the generation config
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t, _ in ADDED_TOKENS}
    assert len(set(ids.values())) == len(ADDED_TOKENS) and tok.unk_token_id not in ids.values()
    assert cfg.video_token_id == ids["<|video_pad|>"] and cfg.image_token_id == ids["<|image_pad|>"]
    assert cfg.vision_start_token_id == ids["<|vision_start|>"]
    assert cfg.vision_end_token_id == ids["<|vision_end|>"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert model.generation_config.pad_token_id == ids["<|endoftext|>"]
    assert max(ids.values()) < cfg.text_config.vocab_size
    # weights are tied and stored once, in float32 safetensors
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    on_disk = json.loads((tiny_model_dir / "config.json").read_text())
    assert on_disk["dtype"] == "float32"
    # the hub's spelling, which transformers 4.57 (vLLM, cosmos-rl) also reads
    assert on_disk["text_config"]["rope_scaling"]["mrope_section"] == rope["mrope_section"]
    assert on_disk["text_config"]["rope_theta"] == rope["rope_theta"]
    assert on_disk["text_config"]["tie_word_embeddings"] is True
    tok_cfg = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert "<|video_pad|>" in tok_cfg["additional_special_tokens"]
    assert (tiny_model_dir / "model.safetensors").is_file()


def test_tokenizer_round_trips_any_text_and_keeps_think_tags(loaded):
    _, processor = loaded
    tok = processor.tokenizer
    p = Prompts()
    for text in (p.caption, p.mcq_suffix, p.reasoning_suffix, "Ünïcode 日本 😀 {\"k\": [1, 2.5]}\t~`|\\"):
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.decode(ids) == text
    # the prompts are words of the vocabulary, not bytes
    assert len(tok(p.caption).input_ids) < len(p.caption) / 3
    # special tokens stay whole; <think> is not special, so skip_special_tokens keeps it
    text = "<|im_start|>assistant\n<think>\nred car\n</think>\n\nB<|im_end|>"
    ids = tok(text).input_ids
    assert tok.convert_tokens_to_ids("<think>") in ids and tok.convert_tokens_to_ids("<|im_start|>") in ids
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n<think>\nred car\n</think>\n\nB"


def test_chat_template_is_qwen3_vl(loaded):
    _, processor = loaded
    text = processor.apply_chat_template(_messages("What is ahead?", "A red car."), tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What is ahead?<|im_end|>\n"
        "<|im_start|>assistant\nA red car.<|im_end|>\n"
    )
    prompt = processor.apply_chat_template(_messages("What is ahead?"), tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_processor_expands_presampled_frames_to_video_tokens(loaded):
    model, processor = loaded
    prompt = processor.apply_chat_template(_messages("What is ahead?"), tokenize=False, add_generation_prompt=True)
    frames, meta = _clip(n=16, h=96, w=160)
    inputs = _inputs(processor, [prompt], [(frames, meta)])
    # 16 frames / temporal patch 2 = 8 groups of (96/32)*(160/32) = 15 merged tokens
    assert inputs["video_grid_thw"].tolist() == [[8, 6, 10]]
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 8 * 15
    assert inputs["pixel_values_videos"].shape == (8 * 6 * 10, 3 * 2 * 16 * 16)
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    # one "<t seconds>" per 2-frame group, from the metadata (frame indices / fps, group mean)
    idx = meta["frames_indices"]
    stamps = [f"<{(idx[i] + idx[i + 1]) / 2 / 30.0:.1f} seconds>" for i in range(0, 16, 2)]
    assert [s for s in stamps if s in text] == stamps
    assert text.count("<|vision_start|>") >= 8


def test_processor_call_with_load_video(loaded, h264_clip):
    """The documented recipe: avcap.video frames + metadata, do_sample_frames=False, do_resize=False."""
    from avcap.video import load_video, num_video_tokens

    model, processor = loaded
    vf = load_video(h264_clip, nframes=8)
    prompt = processor.apply_chat_template(_messages("What is ahead?"), tokenize=False, add_generation_prompt=True)
    inputs = _inputs(processor, [prompt], [(vf.frames, vf.metadata())])
    t, h, w = vf.frames.shape[:3]
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == num_video_tokens(t, h, w)
    assert inputs["video_grid_thw"].tolist() == [[t // 2, h // 16, w // 16]]
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    idx = vf.frame_indices
    stamps = [f"<{(idx[i] + idx[i + 1]) / 2 / vf.fps:.1f} seconds>" for i in range(0, t, 2)]
    assert [s for s in stamps if s in text] == stamps


def test_generate_from_a_synthetic_video(loaded, h264_clip):
    from avcap.video import load_video

    model, processor = loaded
    vf = load_video(h264_clip, nframes=8)
    prompt = processor.apply_chat_template(_messages("Describe the scene."), tokenize=False, add_generation_prompt=True)
    inputs = _inputs(processor, [prompt], [(vf.frames, vf.metadata())])
    n = inputs["input_ids"].shape[1]
    out = model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert out.shape == (1, n + 12)
    again = model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert torch.equal(out, again)  # greedy is deterministic
    assert isinstance(processor.batch_decode(out[:, n:], skip_special_tokens=True)[0], str)


def test_loss_falls_on_one_batch(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, local_files_only=True).train()
    processor = AutoProcessor.from_pretrained(tiny_model_dir, local_files_only=True)
    q = "What color is the lead vehicle?\nA. red\nB. blue\nC. white\nD. black\n" + Prompts().mcq_suffix
    texts = [processor.apply_chat_template(_messages(q, "ABCD"[i]), tokenize=False) for i in range(4)]
    inputs = _inputs(processor, texts, [_clip(n=4, h=64, w=96, seed=i) for i in range(4)])
    labels = inputs["input_ids"].clone()
    labels[inputs["attention_mask"] == 0] = -100
    labels[labels == model.config.video_token_id] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


def test_same_seed_same_weights_and_tokenizer(tmp_path, tiny_model_dir):
    from avcap.demo.tiny_model import build_tiny_model

    again = build_tiny_model(tmp_path / "m", size="tiny", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    other = build_tiny_model(tmp_path / "s1", size="tiny", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_model_dir / "model.safetensors").read_bytes()


def test_cli_rejects_bad_arguments(tmp_path):
    from typer.testing import CliRunner

    from avcap.cli import app

    result = CliRunner().invoke(app, ["tiny-model", "--out", str(tmp_path / "m"), "--size", "huge"])
    assert result.exit_code == 2
    assert "--size" in result.output
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(app, ["tiny-model", "--out", str(tmp_path / "file")])
    assert result.exit_code == 2
    assert "not a directory" in result.output
