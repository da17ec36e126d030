"""The cost model counts exactly the parameters transformers builds for the real architectures."""

import pytest

torch = pytest.importorskip("torch")

from avcap.models.qwen3_vl.cost import Shape, generation_floor, realsize_config, train_flops  # noqa: E402


@pytest.mark.parametrize("name,expected_b", [("2B", 2.13), ("8B", 8.77)])
def test_param_count_matches_model_built_on_meta(name, expected_b):
    from transformers import Qwen3VLForConditionalGeneration

    cfg = realsize_config(name)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(cfg)
    real = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    shape = Shape.from_config(cfg)
    assert shape.total_params() == real
    assert abs(real / 1e9 - expected_b) < 0.02  # published sizes of Qwen3-VL-2B / -8B
    assert shape.vision_params() == sum(p.numel() for p in model.model.visual.parameters())


def test_prefill_flops_are_about_two_per_param_per_token():
    shape = Shape.from_config(realsize_config("8B"))
    f = shape.text_flops(1000, logits_tokens=0)
    linear_params = shape.layers * shape.text_layer_linear()
    assert 2 * linear_params * 1000 < f < 2.2 * linear_params * 1000  # attention adds a few percent


def test_generation_floor_scales_with_batch():
    shape = Shape.from_config(realsize_config("2B"))
    kw = dict(prompt_tokens=2692, new_tokens=16, patches_per_group=1288, groups=8,
              peak_flops=989e12, peak_bytes=3.35e12)
    one, many = generation_floor(shape, batch=1, **kw), generation_floor(shape, batch=32, **kw)
    assert many.prefill_s == pytest.approx(32 * one.prefill_s)
    assert one.decode_s < many.decode_s < 32 * one.decode_s  # weights are read once per step
    assert train_flops(shape, text_tokens=2700, patches_per_group=1288, groups=8) > 3 * 2 * 2e9 * 2700
