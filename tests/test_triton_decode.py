"""avcap's split-KV decode attention kernel (avcap.engines.hf.triton_decode) on the CPU, through
Triton's interpreter (TRITON_INTERPRET=1 runs the same kernel code on CPU tensors).

The kernel against a float64 softmax over the valid slots (padding inside the cache, a strided view
of a longer cache as the engine's decode step passes it, query heads that do not fill the padded
16 rows, a head size that is not a power of two, stretches with no valid slot); the engine's decode
with `decode_attention = "triton"` against plain `generate` is in test_engine_fast.py. The interpreter cannot multiply
bfloat16 (its products come out as garbage: numpy has no bfloat16), so bfloat16 is checked on the GPU
(benchmarks/bench_decode_attention.py against a float32 reference)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")



def reference(q, kc, vc, valid, scale):
    g = q.shape[1] // kc.shape[1]
    k = kc.double().repeat_interleave(g, 1)
    v = vc.double().repeat_interleave(g, 1)
    s = (q.double() @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~valid[:, None, None, : kc.shape[2]], float("-inf"))
    return torch.softmax(s, -1) @ v


def _case(b, heads, kv, d, total, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, heads, 1, d, generator=g).to(dtype)
    kc = torch.randn(b, kv, total, d, generator=g).to(dtype)
    vc = torch.randn(b, kv, total, d, generator=g).to(dtype)
    valid = torch.zeros(b, total, dtype=torch.bool)
    for r in range(b):  # the engine's layout: [pad | prefix][pad | suffix][new tokens], then unwritten slots
        valid[r, 3 * r: n - 40] = True
        valid[r, n - 40 + r: n - 5] = True
    return q, kc[:, :, :n], vc[:, :, :n], valid  # a view of the first n slots, strided like the engine's


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 3e-3)])
@pytest.mark.parametrize("heads,kv,d", [(8, 2, 32), (6, 2, 24), (4, 4, 16)])
@pytest.mark.parametrize("parts", [None, 1, 3])
def test_kernel_equals_the_softmax_over_valid_slots(interpreted_triton_decode, dtype, tol, heads, kv, d, parts):
    q, kc, vc, valid = _case(3, heads, kv, d, total=300, n=200, dtype=dtype)
    out = interpreted_triton_decode.decode_attention(q, kc, vc, valid, 0.3, parts)
    assert out.shape == q.shape and out.dtype == dtype
    ref = reference(q, kc, vc, valid, 0.3)
    assert float((out.double() - ref).abs().max()) < tol * (1 + float(ref.abs().max()))


@pytest.mark.parametrize("block_n,num_warps,num_stages", [(32, 4, 3), (128, 8, 2)])
def test_launch_settings_keep_the_result(interpreted_triton_decode, block_n, num_warps, num_stages):
    q, kc, vc, valid = _case(2, 8, 2, 32, total=300, n=200, dtype=torch.float32)
    out = interpreted_triton_decode.decode_attention(q, kc, vc, valid, 0.3, block_n=block_n, num_warps=num_warps,
                                                     num_stages=num_stages)
    assert float((out.double() - reference(q, kc, vc, valid, 0.3)).abs().max()) < 1e-5


def test_a_stretch_without_valid_slots_adds_nothing(interpreted_triton_decode):
    """Row 0 sees only its last 10 slots: its first stretches are all padding (log-sum-exp -inf),
    and the result is still the softmax over those 10 slots, finite."""
    q, kc, vc, valid = _case(2, 8, 2, 32, total=256, n=256, dtype=torch.float32)
    valid[0] = False
    valid[0, 246:] = True
    out = interpreted_triton_decode.decode_attention(q, kc, vc, valid, 0.2, parts=4)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), reference(q, kc, vc, valid, 0.2), atol=1e-5)


def test_stretches_fill_the_gpu_but_never_go_below_one_block():
    from avcap.engines.hf.triton_decode import BLOCK_N, PROGRAMS_PER_SM, stretches

    assert stretches(64, 8, 3072, sms=132) == 1  # 8B caption batch: 512 programs already fill 132 SMs
    assert PROGRAMS_PER_SM == 3 and stretches(8, 8, 3072, sms=132) == 7  # a first batch of 8 rows: 64 -> 448 programs
    assert stretches(1, 8, 3072, sms=132) == 3072 // BLOCK_N  # one row: one block per program
    assert stretches(1, 8, 10, sms=132) == 1
    assert stretches(512, 8, 3072, sms=132) == 1


def test_refuses_what_it_does_not_compute(interpreted_triton_decode):
    q, kc, vc, valid = _case(1, 6, 4, 16, total=64, n=64, dtype=torch.float32)
    with pytest.raises(ValueError, match="share"):
        interpreted_triton_decode.decode_attention(q, kc, vc, valid, 1.0)
    with pytest.raises(ValueError, match="valid must be"):
        interpreted_triton_decode.decode_attention(q[:, :4], kc[:, :2], vc[:, :2], valid[:, :32], 1.0)
    q2 = torch.zeros(1, 8, 2, 16)
    with pytest.raises(ValueError, match="one query token"):
        interpreted_triton_decode.decode_attention(q2, kc[:, :2], vc[:, :2], valid, 1.0)
