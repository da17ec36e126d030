"""YUV 4:2:0 -> RGB on any torch device, bit for bit what avcap's CPU decode path produces.

avcap's CPU path turns each decoded yuv420p frame into RGB with PyAV's `frame.to_ndarray(format=
"rgb24")`, i.e. FFmpeg's swscale (`sws_scale_frame`, default flags). For an unscaled yuv420p ->
rgb24 conversion of even height swscale uses its special converter `ff_yuv2rgb_get_func_ptr`; on
x86 with SSSE3 (every server CPU) that is `yuv420_rgb24_ssse3` (libswscale/x86/yuv_2_rgb.asm), and
this module repeats its arithmetic exactly:

* chroma is upsampled by repetition (each U/V sample covers a 2 x 2 block, no interpolation);
* every sample is shifted left by 3; 128 * 8 is subtracted from U and V, the luma offset
  (16 * 8 limited range, 0 full range) from Y;
* each term is a `pmulhw` (16 x 16-bit signed multiply keeping the high 16 bits, i.e. floor of
  a * b / 65536) with 16-bit coefficients `roundToInt16(c << 13)`, from FFmpeg's
  `ff_yuv2rgb_c_init_tables` at default brightness/contrast/saturation;
* R = Y' + v2r(V), G = Y' + u2g(U) + v2g(V), B = Y' + u2b(U), clipped to [0, 255].

The matrix comes from the frame's colorspace tag via swscale's `ff_yuv2rgb_coeffs` table:
BT.709 -> BT.709; *unspecified*, BT.470BG, SMPTE 170M -> BT.601 (what swscale does for untagged
H.264, which is what most dash-cams write); FCC, SMPTE 240M, BT.2020 non-constant -> their own.
The range tag: JPEG (full) -> full range, MPEG or unspecified -> limited.

Tests compare this with PyAV's rgb24 conversion on every (colorspace, range) pair and on real
clips: equal bit for bit. Odd frame sizes go through another swscale path and are refused.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass

# Heavy libraries (torch) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

# FFmpeg libswscale/yuv2rgb.c ff_yuv2rgb_coeffs: {crv, cbu, cgu, cgv} by AVColorSpace value
_BT601 = (104597, 132201, 25675, 53279)
SWSCALE_MATRICES: dict[int, tuple[int, int, int, int]] = {
    1: (117489, 138438, 13975, 34925),  # BT.709
    2: _BT601,  # unspecified: swscale's default, BT.601
    4: (104448, 132798, 24759, 53109),  # FCC
    5: _BT601,  # BT.470BG (BT.601 625)
    6: _BT601,  # SMPTE 170M (BT.601 525)
    7: (117579, 136230, 16907, 35559),  # SMPTE 240M
    9: (110013, 140363, 12277, 42626),  # BT.2020 non-constant luminance
}
COLORSPACE_NAMES = {0: "rgb", 1: "bt709", 2: "unspecified", 3: "reserved", 4: "fcc", 5: "bt470bg",
                    6: "smpte170m", 7: "smpte240m", 8: "ycgco", 9: "bt2020nc", 10: "bt2020c"}
RANGE_JPEG = 2  # AVCOL_RANGE_JPEG (full); 0 unspecified and 1 MPEG are limited range


class UnsupportedColour(ValueError):
    """A frame whose colour tags or size this module does not reproduce swscale for."""


@dataclass(frozen=True)
class Yuv2Rgb:
    """swscale's 16-bit coefficients for one (colorspace, range): applied with `pmulhw`."""

    y: int
    y_offset: int
    v2r: int
    u2g: int
    v2g: int
    u2b: int


def _round_to_int16(f: int) -> int:
    r = (f + (1 << 15)) >> 16
    return max(-0x7FFF, min(0x7FFF, r))


def _trunc_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def swscale_coefficients(colorspace: int, color_range: int) -> Yuv2Rgb:
    """The coefficients swscale's yuv2rgb uses for a frame tagged (colorspace, color_range)."""
    colorspace, color_range = int(colorspace), int(color_range)
    if colorspace not in SWSCALE_MATRICES:
        raise UnsupportedColour(f"colorspace {COLORSPACE_NAMES.get(colorspace, colorspace)} is not reproduced "
                                f"(supported: {', '.join(COLORSPACE_NAMES[c] for c in SWSCALE_MATRICES)})")
    crv, cbu, cgu, cgv = SWSCALE_MATRICES[colorspace]
    cgu, cgv = -cgu, -cgv
    cy, oy = 1 << 16, 0
    if color_range != RANGE_JPEG:
        cy, oy = (cy * 255) // 219, 16 << 16
    else:
        crv, cbu, cgu, cgv = (_trunc_div(c * 224, 255) for c in (crv, cbu, cgu, cgv))
    # contrast = saturation = 1 << 16, brightness 0 (swscale's defaults)
    cy = (cy * (1 << 16)) >> 16
    crv, cbu, cgu, cgv = ((c * (1 << 32)) >> 32 for c in (crv, cbu, cgu, cgv))
    return Yuv2Rgb(y=_round_to_int16(cy << 13), y_offset=_round_to_int16(oy << 3), v2r=_round_to_int16(crv << 13),
                   u2g=_round_to_int16(cgu << 13), v2g=_round_to_int16(cgv << 13), u2b=_round_to_int16(cbu << 13))


def crop_nv12(y, uv, height: int, width: int):
    """The visible (height x width) part of NV12 planes that may be padded (pitch, coded size).

    `y`: rows x cols uint8; `uv`: rows x cols/2 x 2 (interleaved U, V) or rows x cols (raw bytes).
    Returns (y: height x width, uv: height/2 x width/2 x 2). Strided views, nothing copied.
    """
    if height % 2 or width % 2:
        raise UnsupportedColour(f"odd frame size {width}x{height}: swscale converts it through another path")
    if uv.dim() == 2:
        uv = uv[:, : uv.shape[1] // 2 * 2].unflatten(1, (uv.shape[1] // 2, 2))
    if y.shape[0] < height or y.shape[1] < width or uv.shape[0] < height // 2 or uv.shape[1] < width // 2 \
            or uv.shape[2] != 2:
        raise UnsupportedColour(f"planes {tuple(y.shape)} / {tuple(uv.shape)} smaller than the {width}x{height} frame")
    return y[:height, :width], uv[: height // 2, : width // 2]


def interleave_uv(u, v):
    """NV12's chroma plane (h/2 x w/2 x 2) from yuv420p's separate U and V planes."""
    import torch

    return torch.stack([u, v], dim=-1)


def _mulhi(a, c: int):
    """x86 `pmulhw`: (a * c) >> 16, floor (a holds small int32 values, c an int16 constant)."""
    return (a * c) >> 16


def nv12_to_rgb(y, uv, coeffs: Yuv2Rgb):
    """3 x H x W uint8 RGB from NV12 planes (y: H x W uint8, uv: H/2 x W/2 x 2 uint8), on their device;
    with leading dimensions (y: N x H x W, uv: N x H/2 x W/2 x 2) N x 3 x H x W, frame by frame the same.

    Integer arithmetic in int32, exactly swscale's `yuv420_rgb24_ssse3` (module docstring).
    """
    import torch

    h, w = y.shape[-2:]
    lead = tuple(y.shape[:-2])
    if tuple(uv.shape) != lead + (h // 2, w // 2, 2) or h % 2 or w % 2:
        raise UnsupportedColour(f"NV12 planes {tuple(y.shape)} / {tuple(uv.shape)} do not form an even-sized frame")
    luma = _mulhi((y.to(torch.int32) << 3) - coeffs.y_offset, coeffs.y)  # ... x H x W
    c = (uv.to(torch.int32) << 3) - (128 << 3)
    u, v = c[..., 0], c[..., 1]  # ... x H/2 x W/2
    chroma = torch.stack([_mulhi(v, coeffs.v2r), _mulhi(u, coeffs.u2g) + _mulhi(v, coeffs.v2g),
                          _mulhi(u, coeffs.u2b)], dim=-3)  # ... x 3 x H/2 x W/2
    chroma = chroma[..., :, None, :, None].expand(*lead, 3, h // 2, 2, w // 2, 2).reshape(*lead, 3, h, w)  # 2 x 2
    return (luma.unsqueeze(-3) + chroma).clamp_(0, 255).to(torch.uint8)


_compiled: dict[str, object] = {}
_compile_lock = threading.RLock()
# benchmarks' A/B switch: "0" converts eagerly from the start (no compile in a fresh process's first
# frames, which otherwise compile under avcap.core.imports' lock beside the engine's imports)
COMPILE = os.environ.get("AVCAP_COLOUR_COMPILE", "1") != "0"


def compiled_nv12_to_rgb():
    """`nv12_to_rgb` through torch.compile (one per process), or None once compiling has failed."""
    with _compile_lock:
        if "fn" not in _compiled:
            import torch

            _compiled["fn"] = torch.compile(nv12_to_rgb, dynamic=None) if COMPILE else None
        return _compiled["fn"]


def reset_compiled(*, eager: bool = False) -> None:
    """Forget this process's compiled conversion: the next `nv12_to_rgb_fast` on CUDA tensors compiles
    afresh, or with `eager=True` converts eagerly from now on (the state after a failed compile).
    For benchmarks comparing the two (benchmarks/bench_finish.py, bench_gpu.py's eagerfinish)."""
    with _compile_lock:
        _compiled.clear()
        if eager:
            _compiled["fn"] = None


def nv12_to_rgb_fast(y, uv, coeffs: Yuv2Rgb):
    """`nv12_to_rgb`, compiled for CUDA tensors: its ~20 integer passes over the frame fused into two
    kernels (GPU time per 16 frames of 1936x1220 2.5 -> 0.2 ms, benchmarks/bench_finish.py), the
    same integers (integer arithmetic; bench_finish.py and the tests compare). Eager on the CPU, and
    from the first time compiling fails (said once).

    Its callers are frame threads beside a model that may be compiling on its own thread. torch
    2.11 keeps "FX is tracing" per process (2.14 per thread), so there a compiled call made while
    another thread compiles raises (an engine's compile failed a video's frames this way,
    benchmarks/runs/gpu_run65). So the first call compiles under a lock (the threads do not compile
    at once), and a call refused for another thread's tracing converts eagerly: the same integers,
    counted (`eager_conversions`)."""
    fn = compiled_nv12_to_rgb() if getattr(y, "is_cuda", False) else None
    if fn is None:
        return nv12_to_rgb(y, uv, coeffs)
    if not _compiled.get("ran"):
        with _compile_lock:
            if not _compiled.get("ran"):
                return _first_compiled_call(fn, y, uv, coeffs)
    try:
        return fn(y, uv, coeffs)  # compiled fine once: other errors (out of memory, ...) are the caller's
    except RuntimeError as exc:
        if not another_thread_traces(exc):
            raise
        _note_eager_conversion(exc)
        return nv12_to_rgb(y, uv, coeffs)


def _first_compiled_call(fn, y, uv, coeffs: Yuv2Rgb):
    """The first compiled conversion (with `_compile_lock` held): it compiles; if that fails the
    process converts eagerly from now on (said once); if another thread's tracing refused it, only
    this call does."""
    try:
        rgb = fn(y, uv, coeffs)
    except UnsupportedColour:
        raise
    except Exception as exc:  # noqa: BLE001 — no compiler, an inductor bug: the eager function is the same
        if isinstance(exc, RuntimeError) and another_thread_traces(exc):
            _note_eager_conversion(exc)
        else:
            _compiled["fn"] = None
            warnings.warn(f"avcap.video.colour: compiling the colour conversion failed, converting eagerly "
                          f"({type(exc).__name__}: {exc})")
        return nv12_to_rgb(y, uv, coeffs)
    _compiled["ran"] = True
    return rgb


def another_thread_traces(exc: BaseException) -> bool:
    """Whether `exc` is torch refusing a compiled call because FX is tracing: in this process's
    frame threads that is another thread compiling (torch 2.11 shares the flag across threads)."""
    return "symbolically trace a dynamo-optimized function" in str(exc)


def _note_eager_conversion(exc: BaseException) -> None:
    with _compile_lock:
        _compiled["eager_conversions"] = _compiled.get("eager_conversions", 0) + 1
        first = _compiled["eager_conversions"] == 1
    if first:
        warnings.warn(f"avcap.video.colour: a compiled colour conversion was refused while another thread "
                      f"compiled ({exc}); such calls convert eagerly, the same integers (counted: "
                      f"avcap.video.colour.eager_conversions())")


def eager_conversions() -> int:
    """Calls of this process that converted eagerly because another thread was compiling."""
    return int(_compiled.get("eager_conversions", 0))
