"""avcap.models.qwen3_vl.cost's SFT memory estimate: the activation terms equal what transformers' Qwen3-VL blocks
really save for backward (traced with saved-tensor hooks), the parameter split is exact, and the
recipe's 8B setup fits 8 H200s but not one."""

import pytest

torch = pytest.importorskip("torch")

from avcap.models.qwen3_vl.cost import (
    GIB,
    Shape,
    realsize_config,
    root_params,
    sft_memory,
    text_block_params,
    text_block_saved_bytes,
    vision_block_params,
    vision_block_saved_bytes,
)

H200_BYTES = 139 * GIB  # what the device tool's nvidia-h200 kinds offer


def small_config():
    """A Qwen3-VL config with small, distinct dimensions (fast on CPU; no two sizes coincide)."""
    from transformers import Qwen3VLConfig

    text = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, head_dim=32,
                intermediate_size=160, vocab_size=512,
                rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [8, 4, 4],
                                 "mrope_interleaved": True})
    vision = dict(depth=2, hidden_size=64, intermediate_size=144, num_heads=4, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=96, num_position_embeddings=64, deepstack_visual_indexes=[0])
    cfg = Qwen3VLConfig(text_config=text, vision_config=vision)
    cfg.text_config._attn_implementation = "sdpa"
    cfg.vision_config._attn_implementation = "sdpa"
    return cfg


def saved_bytes(module, inputs: torch.Tensor, run) -> int:
    """Bytes of the distinct storages autograd saves during `run()`, except parameters and the input."""
    skip = {p.untyped_storage().data_ptr() for p in module.parameters()} | {inputs.untyped_storage().data_ptr()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


def test_text_block_saved_bytes_match_the_real_layer():
    from transformers.models.qwen3_vl.modeling_qwen3_vl import (
        Qwen3VLTextDecoderLayer,
        Qwen3VLTextRotaryEmbedding,
    )

    cfg = small_config()
    tc = cfg.text_config
    layer = Qwen3VLTextDecoderLayer(tc, 0).to(torch.bfloat16)
    tokens = 48
    x = torch.randn(1, tokens, tc.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(tokens)[None].expand(3, 1, tokens)
    cos, sin = Qwen3VLTextRotaryEmbedding(tc)(x, pos)
    got = saved_bytes(layer, x, lambda: layer(x, attention_mask=None, position_embeddings=(cos, sin),
                                              position_ids=pos[0]))
    assert got == tokens * text_block_saved_bytes(Shape.from_config(cfg))


def test_vision_block_saved_bytes_match_the_real_block():
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionBlock

    cfg = small_config()
    vc = cfg.vision_config
    block = Qwen3VLVisionBlock(vc).to(torch.bfloat16)
    n = 40
    x = torch.randn(n, vc.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    emb = torch.randn(n, vc.hidden_size // vc.num_heads)
    cu = torch.tensor([0, n], dtype=torch.int32)
    got = saved_bytes(block, x, lambda: block(x, cu_seqlens=cu, position_embeddings=(emb.cos(), emb.sin())))
    assert got == n * vision_block_saved_bytes(Shape.from_config(cfg), heads=vc.num_heads)


@pytest.mark.parametrize("name", ["2B", "8B"])
def test_parameter_split_is_exact(name):
    from transformers import Qwen3VLForConditionalGeneration

    cfg = realsize_config(name)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(cfg)
    s = Shape.from_config(cfg)
    layer = model.model.language_model.layers[0]
    block = model.model.visual.blocks[0]
    assert text_block_params(s) == sum(p.numel() for p in layer.parameters())
    assert vision_block_params(s) == sum(p.numel() for p in block.parameters())
    inner = {id(p) for m in (*model.model.language_model.layers, *model.model.visual.blocks) for p in m.parameters()}
    assert root_params(s) == sum(p.numel() for p in model.parameters() if id(p) not in inner)


def test_recipe_8b_fits_eight_h200_but_not_one():
    """The recipe's per-GPU settings: mini_batch 4, sequences up to model_max_length 4096, 16 frames
    at 736x448 (a 1936x1220 clip at max_pixels 360000) = 10,304 patches, gradient checkpointing,
    32 samples per step = 8 accumulated micro-batches."""
    s = Shape.from_config(realsize_config("8B"))
    kw = dict(micro_batch=4, seq_len=4096, video_patches=8 * 28 * 46, grad_accumulation=8)
    by_gpus = {g: sft_memory(s, gpus=g, **kw) for g in (1, 2, 4, 8)}
    p = s.total_params()
    for g, m in by_gpus.items():
        assert m.sharded_states * g == pytest.approx(16 * p)  # fp32 weights + grads + 2 AdamW moments
        assert m.accumulated_grads == (4 * p if g > 1 else 0)  # unsharded fp32 grads between syncs
    assert by_gpus[8].fits(H200_BYTES) and by_gpus[2].fits(H200_BYTES)
    assert not by_gpus[1].fits(H200_BYTES)  # 16 bytes x 8.77e9 parameters alone exceed one GPU
    assert by_gpus[8].total < by_gpus[4].total < by_gpus[2].total < by_gpus[1].total
    # no gradient accumulation: no unsharded gradients held; no checkpointing: far more activations
    assert sft_memory(s, gpus=8, **{**kw, "grad_accumulation": 1}).accumulated_grads == 0
    assert sft_memory(s, gpus=8, **kw, gradient_checkpointing=False).checkpoints > 5 * by_gpus[8].checkpoints
    assert set(by_gpus[8].as_gib()) >= {"sharded_states", "accumulated_grads", "total", "gpus"}
