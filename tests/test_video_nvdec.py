"""decoder="nvdec": the colour conversion, plane cropping and GPU-side resize, tested on CPU tensors.

The NV12 -> RGB conversion (avcap.video.colour) must reproduce what avcap's CPU path gets from
PyAV's `to_ndarray(format="rgb24")` (FFmpeg swscale): the tests feed it the software decoder's own
yuv420p planes, re-laid out as NV12 with padded rows (as NVDEC surfaces are), and require equality
bit for bit — on every colorspace/range tag, on encoded clips and on real dash-cam footage. The
part that needs a GPU (opening NVDEC, DLPack of CUDA surfaces) is measured by
benchmarks/bench_nvdec.py on the device.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from avcap import video as V
from avcap.video import cpu as VC
from avcap.video import index as VI
from avcap.video import nvdec as VN
from avcap.video.colour import (
    SWSCALE_MATRICES,
    UnsupportedColour,
    crop_nv12,
    interleave_uv,
    nv12_to_rgb,
    swscale_coefficients,
)

REAL_CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "udacity_solidWhiteRight.mp4"
PAD = 32  # extra bytes per row, as a surface pitch adds


def _random_frame(width: int, height: int, colorspace: int, color_range: int, seed: int = 0):
    import av

    rng = np.random.default_rng(seed)
    fr = av.VideoFrame(width, height, "yuv420p")
    for p in fr.planes:
        p.update(rng.integers(0, 256, (p.height, p.line_size), dtype=np.uint8))
    fr.colorspace, fr.color_range = colorspace, color_range
    return fr


def padded_nv12(frame):
    """The software frame's planes as NV12 laid out like a decoder surface: rows padded by PAD bytes,
    the chroma plane as raw interleaved bytes (rows x pitch)."""
    y, u, v = (torch.from_dlpack(p) for p in frame.planes)
    h, w = frame.height, frame.width
    uv = interleave_uv(u[: h // 2, : w // 2], v[: h // 2, : w // 2]).reshape(h // 2, w)
    y_pad = torch.full((h + 2, w + PAD), 7, dtype=torch.uint8)
    uv_pad = torch.full((h // 2 + 1, w + PAD), 9, dtype=torch.uint8)
    y_pad[:h, :w] = y[:h, :w]
    uv_pad[: h // 2, :w] = uv
    return y_pad, uv_pad


def _convert(frame) -> np.ndarray:
    y, uv = padded_nv12(frame)
    rgb = VN.rgb_from_nv12(Path("x.mp4"), y, uv, frame.colorspace, frame.color_range, frame.height, frame.width)
    return rgb.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("size", [(64, 48), (100, 50), (1936, 6)])
@pytest.mark.parametrize("colorspace", sorted(SWSCALE_MATRICES))
@pytest.mark.parametrize("color_range", [0, 1, 2])
def test_nv12_to_rgb_equals_swscale_for_every_tag(size, colorspace, color_range):
    """Random planes (every Y/U/V combination is likely at 64x48 and above): exact equality."""
    fr = _random_frame(*size, colorspace, color_range, seed=colorspace * 3 + color_range)
    assert np.array_equal(_convert(fr), fr.to_ndarray(format="rgb24"))


def test_every_yuv_value_converts_like_swscale():
    """All 256 luma levels against all 256 x 256 chroma pairs (BT.601 and BT.709, limited range)."""
    import av

    w, h = 512, 512
    for cs in (1, 2):
        fr = av.VideoFrame(w, h, "yuv420p")
        y = np.tile(np.arange(256, dtype=np.uint8).repeat(2), (h, 1))
        u = np.tile(np.arange(256, dtype=np.uint8), (h // 2, 1))
        v = np.tile(np.arange(256, dtype=np.uint8)[:, None], (1, w // 2))
        for p, a in zip(fr.planes, (y, u, v)):
            p.update(np.pad(a, ((0, 0), (0, p.line_size - a.shape[1]))))
        fr.colorspace = cs
        assert np.array_equal(_convert(fr), fr.to_ndarray(format="rgb24")), cs


class OnGpu(torch.Tensor):  # a CPU tensor that says it is on CUDA: only the colour conversion's dispatch is tested
    @property
    def is_cuda(self):
        return True


def test_compiled_conversion_gives_the_same_integers():
    """What the engine runs on CUDA tensors (nv12_to_rgb through torch.compile) equals the eager
    function on a batch of random planes for each colour matrix and range; here on the CPU, where
    inductor needs a C compiler."""
    import shutil

    from avcap.video import colour as video_colour

    if not any(shutil.which(c) for c in ("c++", "g++", "gcc", "clang")):
        pytest.skip("torch.compile on the CPU needs a C compiler on PATH")
    fn = video_colour.compiled_nv12_to_rgb()
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 256, (3, 24, 40), dtype=torch.uint8, generator=g)
    uv = torch.randint(0, 256, (3, 12, 20, 2), dtype=torch.uint8, generator=g)
    for cs, rng in ((1, 0), (2, 0), (2, 2), (9, 1)):
        c = swscale_coefficients(cs, rng)
        assert torch.equal(fn(y, uv, c), video_colour.nv12_to_rgb(y, uv, c)), (cs, rng)
    assert torch.equal(video_colour.nv12_to_rgb_fast(y, uv, c), video_colour.nv12_to_rgb(y, uv, c))  # CPU: eager


def test_the_colour_compile_switch_converts_eagerly_from_the_start(monkeypatch):
    """AVCAP_COLOUR_COMPILE=0 (benchmarks' A/B of a fresh process's start): no compiled conversion at
    all, CUDA tensors included; the same integers, and no eager conversion counted as refused."""
    from avcap.video import colour as video_colour

    monkeypatch.setattr(video_colour, "COMPILE", False)
    video_colour.reset_compiled()
    try:
        assert video_colour.compiled_nv12_to_rgb() is None
        y = torch.randint(0, 256, (2, 8, 12), dtype=torch.uint8).as_subclass(OnGpu)
        uv = torch.randint(0, 256, (2, 4, 6, 2), dtype=torch.uint8)
        c = swscale_coefficients(1, 0)
        assert torch.equal(video_colour.nv12_to_rgb_fast(y, uv, c), video_colour.nv12_to_rgb(y, uv, c))
        assert video_colour.eager_conversions() == 0
    finally:
        video_colour.reset_compiled()


def test_a_conversion_that_fails_to_compile_falls_back_to_eager_once(monkeypatch):
    """The compiled path's first call failing (no compiler, an inductor bug) warns once and converts
    eagerly from then on; UnsupportedColour is the caller's error either way."""
    from avcap.video import colour as video_colour

    calls = []

    def broken(*a):
        calls.append(1)
        raise RuntimeError("no compiler")

    monkeypatch.setattr(video_colour, "_compiled", {"fn": broken})
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 256, (2, 8, 12), dtype=torch.uint8, generator=g)
    uv = torch.randint(0, 256, (2, 4, 6, 2), dtype=torch.uint8, generator=g)
    c = swscale_coefficients(1, 0)
    with pytest.warns(UserWarning, match="compiling the colour conversion failed"):
        first = video_colour.nv12_to_rgb_fast(y.as_subclass(OnGpu), uv.as_subclass(OnGpu), c)
    assert torch.equal(first.as_subclass(torch.Tensor), video_colour.nv12_to_rgb(y, uv, c))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = video_colour.nv12_to_rgb_fast(y.as_subclass(OnGpu), uv.as_subclass(OnGpu), c)
    assert torch.equal(again.as_subclass(torch.Tensor), first.as_subclass(torch.Tensor)) and calls == [1]


def test_a_conversion_refused_while_another_thread_traces_converts_eagerly(monkeypatch):
    """torch 2.11 keeps "FX is tracing" per process, so a frame thread's compiled conversion made while
    the model's thread compiles raises torch's nested-trace error (seen on the GPU, gpu_run65). Such a
    call converts eagerly (the same integers), is counted, warns once and keeps the compiled function.
    The flag is set here on this thread, which is what such a call sees under torch 2.11."""
    from torch.fx import _symbolic_trace

    from avcap.video import colour as video_colour

    tracing = getattr(_symbolic_trace, "_is_fx_tracing_context", None)
    if tracing is None:
        pytest.skip("this torch has no per-thread FX tracing flag to set")

    compiled = torch.compile(video_colour.nv12_to_rgb)  # refused before it compiles anything
    monkeypatch.setattr(video_colour, "_compiled", {"fn": compiled})
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 256, (2, 8, 12), dtype=torch.uint8, generator=g)
    uv = torch.randint(0, 256, (2, 4, 6, 2), dtype=torch.uint8, generator=g)
    c = swscale_coefficients(1, 0)
    eager = video_colour.nv12_to_rgb(y, uv, c)
    with tracing(True):
        with pytest.warns(UserWarning, match="refused while another thread compiled"):
            first = video_colour.nv12_to_rgb_fast(y.as_subclass(OnGpu), uv.as_subclass(OnGpu), c)  # its first call
        video_colour._compiled["ran"] = True  # as after a first call that compiled
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            later = video_colour.nv12_to_rgb_fast(y.as_subclass(OnGpu), uv.as_subclass(OnGpu), c)
    assert torch.equal(first.as_subclass(torch.Tensor), eager) and torch.equal(later.as_subclass(torch.Tensor), eager)
    assert video_colour.eager_conversions() == 2 and video_colour._compiled["fn"] is compiled
    monkeypatch.setitem(video_colour._compiled, "fn", lambda *a: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError, match="out of memory"):  # any other error stays the caller's
        video_colour.nv12_to_rgb_fast(y.as_subclass(OnGpu), uv.as_subclass(OnGpu), c)
    assert video_colour.eager_conversions() == 2


def test_coefficients_are_swscales():
    """BT.601 limited range, the untagged H.264 case, as FFmpeg's ff_yuv2rgb_c_init_tables gives them."""
    c = swscale_coefficients(2, 0)
    assert (c.y, c.y_offset, c.v2r, c.u2g, c.v2g, c.u2b) == (9539, 128, 13075, -3209, -6660, 16525)
    assert swscale_coefficients(6, 1) == c == swscale_coefficients(5, 0)
    assert swscale_coefficients(2, 2).y_offset == 0


def test_unsupported_tags_and_sizes_are_refused():
    with pytest.raises(UnsupportedColour, match="ycgco"):
        swscale_coefficients(8, 0)
    with pytest.raises(UnsupportedColour, match="rgb"):
        swscale_coefficients(0, 0)
    y = torch.zeros(6, 8, dtype=torch.uint8)
    with pytest.raises(UnsupportedColour, match="odd frame size"):
        crop_nv12(y, torch.zeros(3, 8, dtype=torch.uint8), 5, 8)
    with pytest.raises(UnsupportedColour, match="smaller"):
        crop_nv12(y, torch.zeros(3, 8, dtype=torch.uint8), 8, 8)
    with pytest.raises(V.VideoError, match="x.mp4: decoder='nvdec': colorspace ycgco"):
        VN.rgb_from_nv12(Path("x.mp4"), y, torch.zeros(3, 4, 2, dtype=torch.uint8), 8, 0, 6, 8)
    with pytest.raises(UnsupportedColour):
        nv12_to_rgb(y, torch.zeros(3, 3, 2, dtype=torch.uint8), swscale_coefficients(1, 0))


def test_crop_takes_views_of_padded_planes():
    y = torch.arange(6 * 12, dtype=torch.uint8).reshape(6, 12)
    uv_raw = torch.arange(4 * 12, dtype=torch.uint8).reshape(4, 12)
    cy, cuv = crop_nv12(y, uv_raw, 4, 8)
    assert cy.shape == (4, 8) and cuv.shape == (2, 4, 2)
    assert torch.equal(cuv[1, 2], uv_raw[1, 4:6]) and cy.data_ptr() == y.data_ptr()
    cy3, cuv3 = crop_nv12(y, uv_raw[:, :12].reshape(4, 6, 2), 4, 8)  # PyAV's DLPack layout: rows x w/2 x 2
    assert torch.equal(cuv3, cuv)


def _sampled_nv12_frames(path, nframes):
    """load_video(decoder="cpu")'s sampled frames converted the nvdec way (NV12 -> our RGB ->
    resize_chw), with the same sparse decoder, on CPU tensors."""
    ref = V.load_video(path, nframes=nframes)
    c = VI.open_video(path)
    try:
        s = c.streams.video[0]
        index = VI.build_index(path, c, s)
        size = lambda hw: (ref.resized_height, ref.resized_width)  # noqa: E731
        rgb_equal = []

        def convert(frame):
            rgb_equal.append(np.array_equal(_convert(frame), frame.to_ndarray(format="rgb24")))
            y, uv = padded_nv12(frame)
            return VN.nv12_resized(path, y, uv, frame.colorspace, frame.color_range, frame.height, frame.width, size)

        got = VC.decode_sparse(path, c, s, index, ref.frame_indices, convert=convert)
    finally:
        c.close()
    return ref, np.stack([got[i] for i in ref.frame_indices]), rgb_equal


def test_nvdec_conversion_path_equals_cpu_load_video(tmp_path, make_frames):
    path = tmp_path / "clip.mp4"
    V.write_video(path, make_frames(40, 120, 160, seed=3), 30, gop=10)
    ref, frames, rgb_equal = _sampled_nv12_frames(path, 8)
    assert rgb_equal and all(rgb_equal)
    assert frames.shape == ref.frames.shape and np.array_equal(frames, ref.frames)


def test_nvdec_conversion_path_on_real_dashcam_footage():
    if not REAL_CLIP.exists():
        pytest.skip(f"real footage not present ({REAL_CLIP}; see /work/shared/data/README.md)")
    ref, frames, rgb_equal = _sampled_nv12_frames(REAL_CLIP, 8)  # BT.601 (smpte170m), limited range
    assert len(rgb_equal) >= 8 and all(rgb_equal)
    assert np.array_equal(frames, ref.frames)


def test_unknown_decoder_is_refused(h264_clip):
    with pytest.raises(ValueError, match="decoder must be one of cpu, nvdec"):
        V.load_video(h264_clip, nframes=4, decoder="gpu")


def test_nvdec_without_a_gpu_says_so(h264_clip):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: benchmarks/bench_nvdec.py measures the nvdec path there")
    with pytest.raises(V.VideoError, match=r"clip\.mp4: decoder='nvdec' needs a CUDA GPU"):
        V.load_video(h264_clip, nframes=4, decoder="nvdec")


def test_cpu_decoder_is_the_default(h264_clip):
    a, b = V.load_video(h264_clip, nframes=4), V.load_video(h264_clip, nframes=4, decoder="cpu")
    assert np.array_equal(a.frames, b.frames) and a.notes == b.notes


# ----------------------------------------------------------------------------- config and FrameLoader


def test_engine_decoder_key(tmp_path):
    from avcap.core.config import ConfigError, load_config

    assert load_config().avcap.engine.decoder == "cpu"
    p = tmp_path / "r.toml"
    p.write_text('[avcap.engine]\ndecoder = "nvdec"\n')
    assert load_config(p).avcap.engine.decoder == "nvdec"
    p.write_text('[avcap.engine]\ndecoder = "gpu"\n')
    with pytest.raises(ConfigError, match="decoder"):
        load_config(p)


def test_frame_loader_passes_the_decoder_to_its_workers(h264_clip):
    """A spawned worker process gets decoder="cpu" explicitly and returns the default path's frames;
    decoder="nvdec" reaches load_video (on a machine without a GPU: its clear error)."""
    from avcap.core.config import Vision
    from avcap.engines.frames import FrameLoader

    part = {"type": "video", "video": str(h264_clip)}
    default = V.load_video(h264_clip, nframes=4)
    loader = FrameLoader(Vision(nframes=4), 32, workers=1, processes=True, decoder="cpu")
    try:
        assert np.array_equal(loader.frames(part).frames, default.frames)
        assert loader.decoded_by == {"cpu": 1}
    finally:
        loader.close()
    with pytest.raises(ValueError, match="decoder must be one of"):
        FrameLoader(Vision(nframes=4), 32, decoder="gpu")
    if not torch.cuda.is_available():
        nv = FrameLoader(Vision(nframes=4), 32, workers=1, decoder="nvdec")
        try:
            with pytest.raises(V.VideoError, match="decoder='nvdec' needs a CUDA GPU"):
                nv.frames(part)
        finally:
            nv.close()


@pytest.mark.parametrize("processes,finish_device", [(False, None), (True, None), (True, "cpu")])
def test_nvdec_and_cpu_lanes_share_one_queue_and_fall_back_to_the_cpu(tmp_path, processes, finish_device):
    """decoder="nvdec+cpu": NVDEC threads and CPU decoders take videos from one queue; a video NVDEC
    cannot decode (here: no GPU) goes to the CPU decoders, with one warning, and decodes to the CPU
    path's frames. A broken video still fails with its own error, once. With a finish device both
    lanes only decode (`decode_video`) and the loader's finishers convert."""
    from avcap.core.config import Vision
    from avcap.engines.base import Request
    from avcap.engines.frames import FrameLoader, load_request_frames

    clips = []
    for i in range(5):
        clips.append(tmp_path / f"c{i}.mp4")
        V.write_video(clips[-1], np.full((6, 64, 96, 3), 40 * i, dtype=np.uint8), fps=6)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    loader = FrameLoader(Vision(nframes=4), 32, workers=2, processes=processes, decoder="nvdec+cpu", nvdec_workers=2,
                         finish_device=finish_device)
    assert loader.lanes == [("nvdec", processes, 2), ("cpu", processes, 2)]
    reqs = [Request(f"r{i}", [{"role": "user", "content": [{"type": "video", "video": str(c)}]}])
            for i, c in enumerate(clips + [broken])]
    try:
        gpu = torch.cuda.is_available()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loader.prefetch(reqs)
            got = [load_request_frames(loader, r) for r in reqs]
        for (frames, err), clip in zip(got[:-1], clips):
            assert err is None
            ref = V.load_video(clip, nframes=4).frames
            assert np.abs(frames[0].frames.astype(int) - ref).max() <= (1 if gpu else 0)
        frames, err = got[-1]
        assert frames == [] and err.startswith(str(broken)) and "not a video" in err
        assert sum(loader.decoded_by.values()) == len(clips)
        if not gpu:
            assert loader.decoded_by == {"nvdec": 0, "cpu": len(clips)}
            # each video NVDEC took went on to the CPU (the broken one too, if NVDEC took it)
            assert 1 <= loader.nvdec_fallbacks <= len(clips) + 1
            msgs = [str(w.message) for w in caught if "nvdec+cpu" in str(w.message)]
            assert len(msgs) == 1 and "needs a CUDA GPU" in msgs[0]
    finally:
        loader.close()


def test_frame_loader_close_cancels_waiting_videos(tmp_path):
    from avcap.core.config import Vision
    from avcap.engines.frames import FrameLoader

    clip = tmp_path / "c.mp4"
    V.write_video(clip, np.zeros((6, 64, 96, 3), dtype=np.uint8), fps=6)
    loader = FrameLoader(Vision(nframes=4), 32, workers=1)
    parts = [{"type": "video", "video": str(clip), "nframes": n} for n in (2, 4, 6, 8, 10, 12)]
    futs = [loader.future(p) for p in parts]
    loader.close()
    # the one worker decodes one video at a time: the videos still waiting are cancelled, one it
    # had started finishes with its frames
    cancelled = [f for f in futs if f.cancelled()]
    assert cancelled and cancelled == futs[len(futs) - len(cancelled):]
    for f in futs[: len(futs) - len(cancelled)]:
        assert f.result(timeout=60).frames.shape[0] > 0
    with pytest.raises(RuntimeError, match="closed"):
        loader.future({"type": "video", "video": str(clip), "nframes": 8})


def test_batched_nv12_conversion_and_resize_equal_frame_by_frame(h264_clip):
    """The NVDEC path can convert and resize several frames per call; each frame's result equals its
    own conversion (nv12_to_rgb and resize on a batch are per-frame operations), batches split where
    the size or the colour tags change, and a picture sampled twice is converted once."""
    import av

    frames = []
    with av.open(str(h264_clip)) as c:
        for i, fr in enumerate(c.decode(video=0)):
            if i < 11:
                frames.append(fr)
    size = lambda hw: (64, 96)  # noqa: E731
    copies = []
    for k, fr in enumerate(frames):
        y, uv = padded_nv12(fr)
        y, uv = VN.cropped_nv12(Path("x.mp4"), y, uv, fr.height, fr.width)
        cs = 1 if k < 9 else 5  # the tags change after frame 9: a batch of 8, one of 1, one of 2
        copies.append(VN.NV12(y.clone(), uv.clone(), cs, fr.color_range, fr.height, fr.width))
    batched = VN.nv12_batch_resized(Path("x.mp4"), copies, size, batch=8)  # the module default is 1 (see its comment)
    alone = [VN.nv12_batch_resized(Path("x.mp4"), [c], size)[0] for c in copies]
    assert len(batched) == 11 and all(np.array_equal(a, b) for a, b in zip(batched, alone))
    rgb = VN.rgb_from_nv12(Path("x.mp4"), copies[0].y, copies[0].uv, 1, frames[0].color_range,
                           frames[0].height, frames[0].width)
    assert np.array_equal(alone[0], V.resize_chw(rgb, 64, 96).permute(1, 2, 0).numpy())
    twice = VN.resized_once(Path("x.mp4"), [copies[0], copies[1], copies[0]], size)
    assert np.array_equal(twice[0], twice[2]) and np.array_equal(twice[0], batched[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU with NVDEC (runs on the GPU machine)")
def test_nvdec_load_video_on_the_gpu_matches_the_cpu(tmp_path, make_frames):
    """The GPU path end to end: NVDEC decode, NV12 copies, batched conversion and resize, from a
    thread beside work on a non-blocking stream. Full-size conversion is exact; the GPU resize is
    within one level of the CPU's."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "clip.mp4"  # 236 x 328: coded as 240 x 336, NVDEC's surfaces cropped on both paths
    V.write_video(path, make_frames(60, 236, 328, seed=5), 30, gop=12)
    ref = V.load_video(path, nframes=12, max_pixels=160 * 224)
    busy = torch.cuda.Stream()
    with torch.cuda.stream(busy):
        a = torch.randn(2048, 2048, device="cuda")
        for _ in range(20):
            a = (a @ a).tanh_()
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda _: V.load_video(path, nframes=12, max_pixels=160 * 224, decoder="nvdec"), range(3)))
    torch.cuda.synchronize()
    for g in got:
        assert g.frame_indices == ref.frame_indices and g.frames.shape == ref.frames.shape
        assert np.abs(g.frames.astype(int) - ref.frames).max() <= 1
        assert np.array_equal(g.frames, got[0].frames)
    # decoded on NVDEC, downloaded as NV12, finished elsewhere: full-size pixels exact
    d = V.decode_video(path, nframes=12, max_pixels=160 * 224, decoder="nvdec")
    assert d.chroma == "nv12" and d.planes.shape == (12, 236 * 328 * 3 // 2)
    cpu = V.decode_video(path, nframes=12, max_pixels=160 * 224)
    assert np.array_equal(d.finish("cpu").frames, cpu.finish("cpu").frames)
    assert np.array_equal(d.finish("cpu").frames, ref.frames)
    assert np.abs(d.finish("cuda").frames.astype(int) - ref.frames).max() <= 1
