"""avcap.video: qwen-vl-utils 0.0.14 parity, sparse == full decode, frame directories, bad input, CLI."""

from __future__ import annotations

import json
import os
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from avcap import video as V
from avcap.video import cpu as VC
from avcap.video import discard as VD
from avcap.video import index as VI
from avcap.video import nvdec as VN

qvp = pytest.importorskip("qwen_vl_utils.vision_process")

UDACITY = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "udacity_solidWhiteRight.mp4"


# ----------------------------------------------------------------------------- pure functions


def _qwen(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except (ValueError, AssertionError) as exc:
        return type(exc).__name__ if isinstance(exc, AssertionError) else "ValueError"


def _ours(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except ValueError:
        return "ValueError"


TOTALS = [1, 2, 3, 4, 5, 7, 9, 16, 17, 31, 60, 61, 120, 221, 300, 899, 900, 1801, 5000, 30001]
VIDEO_FPS = [1.0, 10.0, 24.0, 25.0, 29.97, 30.0, 59.94, 60.0]


@pytest.mark.parametrize("total", TOTALS)
def test_smart_nframes_matches_qwen_nframes_mode(total):
    for nframes in list(range(1, 41)) + [64, 100, 768, 1000]:
        q = _qwen(qvp.smart_nframes, {"nframes": nframes}, total_frames=total, video_fps=30.0)
        assert _ours(V.smart_nframes, total, 30.0, nframes=nframes) == q, (total, nframes)


@pytest.mark.parametrize("total", TOTALS)
def test_smart_nframes_matches_qwen_fps_mode(total):
    for video_fps in VIDEO_FPS:
        for fps in [0.1, 0.5, 1.0, 2.0, 3.0, 4.0, 8.0, 30.0]:
            for extra in [{}, {"min_frames": 2}, {"min_frames": 5, "max_frames": 11}, {"max_frames": 64}, {"min_frames": 8, "max_frames": 768}]:
                ele = {"fps": fps, **extra}
                q = _qwen(qvp.smart_nframes, ele, total_frames=total, video_fps=video_fps)
                o = _ours(V.smart_nframes, total, video_fps, fps=fps, **extra)
                assert o == q, (total, video_fps, ele)
    # neither given: qwen-vl-utils' default fps 2.0
    assert _ours(V.smart_nframes, total, 30.0) == _qwen(qvp.smart_nframes, {}, total_frames=total, video_fps=30.0)


def test_smart_nframes_refuses_both():
    with pytest.raises(ValueError):
        V.smart_nframes(100, 30.0, nframes=8, fps=2.0)


SIZES = [(1, 1), (1, 3), (10, 10), (28, 28), (32, 32), (48, 64), (49, 63), (112, 112), (144, 256), (240, 320),
         (360, 640), (480, 854), (540, 960), (720, 1280), (1080, 1920), (1220, 1936), (1936, 1220), (2160, 3840),
         (100, 19000), (5, 999), (3000, 17), (601, 599), (4320, 7680)]


@pytest.mark.parametrize("factor", [28, 32])
def test_smart_resize_matches_qwen(factor):
    """The same size wherever qwen-vl-utils gives a usable one; where it returns a side of 0 (a very
    narrow frame shrunk to a small max_pixels) avcap refuses it with a ValueError."""
    pixel_ranges = [(None, None), (3136, 360000), (3136, 16384 * 28 * 28), (128 * factor**2, 768 * factor**2),
                    (256 * 28 * 28, 1280 * 28 * 28), (4 * factor**2, 4 * factor**2), (50000, 60000), (3136, 12845056)]
    n = zero = 0
    for h, w in SIZES + [(h, w) for h in range(20, 2000, 97) for w in range(30, 2500, 131)]:
        for lo, hi in pixel_ranges:
            q = _qwen(qvp.smart_resize, h, w, factor=factor, min_pixels=lo, max_pixels=hi)
            if isinstance(q, tuple) and min(q) == 0:
                q, zero = "ValueError", zero + 1
            assert _ours(V.smart_resize, h, w, factor=factor, min_pixels=lo, max_pixels=hi) == q, (h, w, lo, hi)
            n += 1
    assert n > 2000 and zero > 0


@pytest.mark.parametrize("h,w,max_pixels", [(10, 1504, 15000), (1504, 10, 15000), (17, 3000, 60000), (2, 300, 3136)])
def test_smart_resize_refuses_a_side_of_zero(h, w, max_pixels):
    assert min(qvp.smart_resize(h, w, factor=32, min_pixels=3136, max_pixels=max_pixels)) == 0  # qwen-vl-utils
    with pytest.raises(ValueError, match="short side falls below 32"):
        V.smart_resize(h, w, factor=32, min_pixels=3136, max_pixels=max_pixels)


def test_recipe_example_1936x1220():
    """The recipe's cameras: 1936x1220, max_pixels 360000, factor 32 -> 448x736, 2,576 tokens for 16 frames."""
    assert V.smart_resize(1220, 1936, factor=32, min_pixels=3136, max_pixels=360000) == (448, 736)
    assert V.resized_size(1220, 1936, 16, factor=32, min_pixels=3136, max_pixels=360000) == (448, 736)
    assert V.num_video_tokens(16, 448, 736, patch_size=16) == 2576
    assert V.num_video_tokens(16, 448, 736) // 8 == 322  # per 2-frame group
    info = V.VideoInfo("cam.mp4", total_frames=900, fps=30.0, height=1220, width=1936, duration=30.0)
    plan = V.plan_sampling(info, nframes=16, min_pixels=3136, max_pixels=360000)
    assert (plan.resized_height, plan.resized_width) == (448, 736)
    assert plan.frame_indices[0] == 0 and plan.frame_indices[-1] == 899 and len(plan.frame_indices) == 16


def test_num_video_tokens_matches_transformers_processor():
    """Qwen3-VL's video processor: patches for T frames of H x W (no further resize), / merge^2."""
    mod = pytest.importorskip("transformers.models.qwen3_vl.video_processing_qwen3_vl")
    proc = mod.Qwen3VLVideoProcessor()
    no_resize = {"size": {"shortest_edge": 1, "longest_edge": 10**12}, "cap_pixels_per_frame": False}
    for t, h, w in [(16, 448, 736), (15, 448, 736), (2, 32, 32), (8, 224, 224), (6, 64, 96), (768, 32, 64)]:
        patches = proc.get_num_of_video_patches(t, h, w, videos_kwargs=no_resize)
        assert V.num_video_tokens(t, h, w) == patches // 4, (t, h, w)
    assert V.num_video_tokens(16, 448, 728, patch_size=14) == 8 * 32 * 52 // 4
    with pytest.raises(ValueError):
        V.num_video_tokens(16, 450, 736)


@pytest.mark.parametrize("factor", [28, 32])
def test_frame_pixel_cap_matches_qwen_fetch_video_formula(factor):
    default_total = 128000 * factor * factor * 0.9
    for nframes in [2, 4, 16, 64, 768]:
        for min_pixels in [None, 3136, 128 * factor * factor]:
            for max_pixels in [None, 360000, 10**9]:
                for total_pixels in [None, 20480 * factor * factor, 1000]:
                    mn = 128 * factor * factor if min_pixels is None else min_pixels
                    tp = default_total if total_pixels is None else total_pixels
                    cap = max(min(768 * factor * factor, tp / nframes * 2), int(mn * 1.05))
                    if max_pixels is not None:
                        cap = min(max_pixels, cap)
                    got = V.frame_pixel_range(nframes, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels,
                                              total_pixels=total_pixels)
                    assert got == (mn, cap)


def test_sample_indices_is_qwen_linspace():
    for total in [2, 3, 9, 60, 221, 900, 1801]:
        for n in [2, 4, 8, 16, 32]:
            if n > total:
                continue
            expect = torch.linspace(0, total - 1, n).round().long().tolist()
            got = V.sample_indices(total, n)
            assert got == expect and got[0] == 0 and got[-1] == total - 1


# ----------------------------------------------------------------------------- qwen-vl-utils end to end


def _fake_read_video(path, start_pts=0.0, end_pts=None, pts_unit="sec", output_format="TCHW"):
    frames = V.decode_all(path)
    info = V.probe(path)
    return torch.from_numpy(frames).permute(0, 3, 1, 2), None, {"video_fps": info.fps}


@pytest.mark.parametrize(
    "ele",
    [
        {"nframes": 8, "min_pixels": 3136, "max_pixels": 360000},
        {"nframes": 6, "min_pixels": 3136, "max_pixels": 4096},
        {"fps": 2.0, "min_pixels": 3136, "max_pixels": 360000},
        {"fps": 4.0, "min_frames": 2, "max_frames": 10},
        {"nframes": 16},
        {"nframes": 4, "total_pixels": 20000},
    ],
)
@pytest.mark.parametrize("patch", [16, 14])
def test_load_video_equals_qwen_fetch_video(h264_clip, monkeypatch, ele, patch):
    """qwen-vl-utils' own fetch_video (its torchvision reader fed with PyAV frames) == load_video."""
    monkeypatch.setattr(qvp, "get_video_reader_backend", lambda: "torchvision")
    monkeypatch.setattr(qvp.io, "read_video", _fake_read_video, raising=False)
    video, meta = qvp.fetch_video({"video": str(h264_clip), **ele}, image_patch_size=patch, return_video_metadata=True)
    kw = dict(ele)
    if "min_pixels" not in kw:
        kw["min_pixels"] = None  # qwen-vl-utils' video default, 128 * factor^2
    vf = V.load_video(h264_clip, factor=2 * patch, **kw)
    assert vf.frame_indices == meta["frames_indices"].tolist()
    assert vf.total_frames == meta["total_num_frames"]
    assert vf.fps == pytest.approx(meta["fps"])
    assert tuple(video.shape) == (len(vf.frame_indices), 3, vf.resized_height, vf.resized_width)
    assert torch.equal(video, vf.tensor().float())


# ----------------------------------------------------------------------------- decoding


def _clip(tmp_path, make_frames, name, n=40, h=48, w=64, fps=30, **kw):
    path = tmp_path / name
    V.write_video(path, make_frames(n, h, w, seed=len(name)), fps, **kw)
    return path


CLIPS = {
    "default.mp4": dict(gop=8),  # x264 defaults: 3 B-frames, B-pyramid
    "intra.mp4": dict(gop=1),
    "no_b.mp4": dict(gop=12, bframes=0),
    "long_gop.mp4": dict(gop=250, n=60),
    "open_gop.mp4": dict(gop=10, options={"x264-params": "keyint=10:min-keyint=10:scenecut=0:open-gop=1:bframes=3"}),
    "bpyramid_strict.mp4": dict(gop=9, options={"x264-params": "keyint=9:min-keyint=9:scenecut=0:b-pyramid=strict:bframes=5"}),
    "ntsc.mp4": dict(gop=15, fps=30000 / 1001, bitrate=300_000),
    "odd.mp4": dict(gop=7, h=49, w=63),
    "clip.mkv": dict(gop=6),
    "clip.mov": dict(gop=5, n=33),
}


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_sparse_decode_equals_full_decode(tmp_path, name, make_frames):
    kw = dict(CLIPS[name])
    path = _clip(tmp_path, make_frames, name, **kw)
    full = V.decode_all(path)
    n = kw.get("n", 40)
    assert full.shape == (n, kw.get("h", 48) + kw.get("h", 48) % 2, kw.get("w", 64) + kw.get("w", 64) % 2, 3)
    assert V.probe(path).total_frames == n
    rng = np.random.default_rng(0)
    index_sets = [list(range(n)), [n - 1], [0], [n - 1, 0, n // 2, n // 2], sorted(rng.choice(n, 7, replace=False).tolist())]
    index_sets += [V.sample_indices(n, k) for k in (2, 4, 6, 16)]
    for idx in index_sets:
        got = V.decode_frames(path, idx)
        for i, frame in zip(idx, got):
            assert np.array_equal(frame, full[i]), (name, i)


def test_sparse_decode_skips_non_reference_frames(h264_clip):
    """The default clip has non-reference B-frames, so the equality test above exercises the skip."""
    c = VI.open_video(h264_clip)
    try:
        index = VI.build_index(h264_clip, c, c.streams.video[0])
    finally:
        c.close()
    assert any(index.nonref) and sum(index.key) >= 2
    assert index.nonref[0] is False


def test_opening_a_video_decodes_no_picture(h264_clip, monkeypatch):
    """FFmpeg's stream probe would decode the first picture only to learn the pixel format (a whole
    keyframe's CPU time per clip); avcap's decoders find it in the bitstream and decode the same.
    The benchmarks' switch (`set_full_probe(True)`) gives FFmpeg's probe back."""
    c = VI.open_video(h264_clip)
    try:
        assert c.streams.video[0].codec_context.pix_fmt is None  # the probe decoded nothing
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    finally:
        c.close()
    import av

    with av.open(str(h264_clip)) as plain:  # FFmpeg's full probe
        assert plain.streams.video[0].codec_context.pix_fmt == "yuv420p"
        ref = [f.to_ndarray(format="rgb24") for f in plain.decode(plain.streams.video[0])]
    assert np.array_equal(np.stack(frames), np.stack(ref))
    assert not VI.full_probe()
    monkeypatch.setenv("AVCAP_FULL_PROBE", "0")  # set_full_probe writes it; restored after
    VI.set_full_probe(True)
    try:
        assert VI.full_probe() and os.environ["AVCAP_FULL_PROBE"] == "1"
        with VI.open_video(h264_clip) as c:
            assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    finally:
        VI.set_full_probe(False)


def test_sparse_decode_feeds_the_decoder_it_is_given(h264_clip):
    """`cc`: another decoder instance (benchmarks pass NVIDIA's parser) gets every packet and gives
    the same frames; the stream's own decoder is left untouched."""
    import av

    full = V.decode_all(h264_clip)
    idx = [0, 9, 23, 47]
    c = VI.open_video(h264_clip)
    try:
        stream = c.streams.video[0]
        index = VI.build_index(h264_clip, c, stream)
        fed = []
        other = av.CodecContext.create("h264", "r")
        other.extradata = stream.codec_context.extradata

        returned = []

        class Counting:
            def decode(self, packet):
                fed.append(packet)
                frames = other.decode(packet)
                returned.extend(frames)
                return frames

            def flush_buffers(self):
                other.flush_buffers()

        got = VC.decode_sparse(h264_clip, c, stream, index, idx, cc=Counting())
    finally:
        c.close()
    assert all(np.array_equal(got[i], full[i]) for i in idx)
    assert len(fed) > len(idx) and not stream.codec_context.is_open
    if not VD.checked_pyav():
        pytest.skip(f"the frames are exact; discarding is off on PyAV {av.__version__} (not a checked release)")
    # the reference pictures decoded on the way were discarded inside the decoder: only the targets came out
    assert sorted(f.pts for f in returned) == sorted(index.presentation[i] for i in idx)


OTHER_CODECS = {"mpeg4.avi": dict(codec="mpeg4", options={"bf": "2"}), "vp9.webm": dict(codec="libvpx-vp9"),
                "hevc.mp4": dict(codec="libx265")}


@pytest.mark.parametrize("name", sorted(OTHER_CODECS))
def test_sparse_decode_of_other_codecs_discards_and_stays_exact(tmp_path, make_frames, name):
    """Reference-only packets are flagged for every codec, not only H.264: the sampled frames come
    out of the sparse decode itself (no full-decode fallback), equal to a full decode, and only
    they leave the decoder."""
    import av

    kw = OTHER_CODECS[name]
    if kw["codec"] not in av.codecs_available:
        pytest.skip(f"this PyAV's FFmpeg has no {kw['codec']} encoder")
    path = _clip(tmp_path, make_frames, name, gop=8, **kw)
    full = V.decode_all(path)
    idx = [0, 5, 9, 17, 23, 31, 39, 39]
    c = VI.open_video(path)
    try:
        stream = c.streams.video[0]
        index = VI.build_index(path, c, stream)
        returned = []

        class Counting:
            def decode(self, packet):
                frames = stream.codec_context.decode(packet)
                returned.extend(frames)
                return frames

            def flush_buffers(self):
                stream.codec_context.flush_buffers()

        got = VC.decode_sparse(path, c, stream, index, idx, cc=Counting())
    finally:
        c.close()
    assert all(i in got and np.array_equal(got[i], full[i]) for i in idx), name
    if not VD.checked_pyav():
        pytest.skip(f"the frames are exact; discarding is off on PyAV {av.__version__} (not a checked release)")
    assert sorted(f.pts for f in returned) == sorted(index.presentation[i] for i in set(idx)), name


def test_a_discarded_packet_is_decoded_but_returns_no_frame(h264_clip):
    """AV_PKT_FLAG_DISCARD (set through the AVPacket, PyAV has no setter): the picture is decoded,
    so pictures predicted from it are exact, but its own frame never comes out of the decoder."""
    import av

    if not VD.checked_pyav():
        pytest.skip(f"discarding is off on PyAV {av.__version__} (not a checked release)")
    full = V.decode_all(h264_clip)
    with av.open(str(h264_clip)) as c:
        stream = c.streams.video[0]
        pts = sorted(p.pts for p in c.demux(stream) if p.size)
        c.seek(0)
        out, marked = {}, 0
        for i, packet in enumerate(c.demux(stream)):
            if packet.size and i % 3:
                assert VD.mark_discard(packet) and packet.is_discard
                marked += 1
            for frame in stream.codec_context.decode(packet if packet.size else None):
                out[pts.index(frame.pts)] = frame.to_ndarray(format="rgb24")
    assert marked and len(out) == len(full) - marked
    assert all(np.array_equal(frame, full[i]) for i, frame in out.items())


def test_discarding_is_skipped_where_the_packet_cannot_be_located(h264_clip, monkeypatch):
    """An unknown PyAV layout (no AVPacket pointer found) or the benchmarks' switch: nothing is
    marked, every frame comes out, and the sampled frames are the same."""
    import av

    idx = [0, 9, 23, 47]
    want = V.decode_frames(h264_clip, idx)
    was = VD.enabled()
    for off in ("layout", "switch"):
        with monkeypatch.context() as m:
            m.setenv("AVCAP_DISCARD_UNSAMPLED", "1" if was else "0")  # set_enabled writes it; restored after
            try:
                if off == "layout":
                    m.setattr(VD, "_packet_ptr_offset", -1)
                else:  # the public switch, for this process and (through the environment) its workers
                    VD.set_enabled(False)
                    assert not VD.enabled() and os.environ["AVCAP_DISCARD_UNSAMPLED"] == "0"
                packet = av.Packet(b"\x00\x00\x01\x65")
                assert VD.mark_discard(packet) is False and not packet.is_discard
                assert all(np.array_equal(a, b) for a, b in zip(V.decode_frames(h264_clip, idx), want))
            finally:
                VD.set_enabled(was)


def test_the_discard_probe_cannot_crash_and_stays_off_on_unchecked_pyav(monkeypatch):
    """The probe reads memory through /proc/self/mem (an unmapped address is a miss, not a
    segfault), and on a PyAV release it was not checked on it is off, with a warning."""
    import av

    assert VD._read_memory(8, 8) is None  # address 8 is never mapped: a plain read would crash
    assert VD._read_memory(id(av), 8) is not None
    monkeypatch.setattr(av, "__version__", "99.0.0")
    with pytest.warns(UserWarning, match="PyAV 99.0.0 is not a release the AV_PKT_FLAG_DISCARD probe was checked on"):
        assert VD._find_packet_ptr_offset() == -1


class _NoFlush:
    """A software decoder standing in for NVDEC in `_Continuous`; a flush fails the test."""

    def __init__(self, extradata):
        import av

        self.cc = av.CodecContext.create("h264", "r")
        self.cc.extradata = extradata

        self.returned = 0

    def decode(self, packet):
        frames = self.cc.decode(packet)
        self.returned += len(frames)
        return frames

    def flush_buffers(self):
        raise AssertionError("_Continuous must never flush its decoder")


def _continuous_frames(dec, path, nframes):
    c = VI.open_video(path)
    try:
        stream = c.streams.video[0]
        index = VI.build_index(path, c, stream)
        plan = V.plan_sampling(VI.info_from(path, stream, index), nframes=nframes)
        return plan.frame_indices, dec.decode(c, stream, index, plan.frame_indices, VC.to_rgb)
    finally:
        c.close()


@pytest.mark.parametrize("names", [("default.mp4", "long_gop.mp4", "default.mp4"), ("intra.mp4", "intra.mp4"),
                                   ("no_b.mp4", "bpyramid_strict.mp4", "no_b.mp4"), ("clip.mkv", "clip.mov", "ntsc.mp4")])
@pytest.mark.parametrize("nframes", [4, 16])
def test_continuous_decoding_equals_the_flushed_decode(tmp_path, make_frames, names, nframes):
    """`_Continuous` (NVDEC's decoder kept from clip to clip, never flushed): clip after clip on one
    decoder, the sampled frames equal decode_frames'; pictures held back by reordering are pushed
    out at the end of each clip."""
    decoders = {}  # one per stream format, as _continuous_nvdec keeps them
    for name in names:
        kw = dict(CLIPS[name])
        path = tmp_path / name
        if not path.exists():
            path = _clip(tmp_path, make_frames, name, **kw)
        c = VI.open_video(path)
        extradata = bytes(c.streams.video[0].codec_context.extradata)
        c.close()
        dec = decoders.setdefault(extradata, VN.Continuous(_NoFlush(extradata)))
        returned = dec.cc.returned
        indices, got = _continuous_frames(dec, path, nframes)
        assert got is not None, name
        assert sorted(got) == sorted(set(indices))
        # reference pictures and pushes were discarded inside the decoder (a picture held back by
        # reordering may come out in the next clip); on an unchecked PyAV nothing is discarded
        assert dec.cc.returned - returned <= len(set(indices)) or not VD.checked_pyav(), name
        for i, frame in zip(indices, V.decode_frames(path, indices)):
            assert np.array_equal(got[i], frame), (name, i)


def test_continuous_decoding_leaves_open_gop_clips_to_the_usual_path(tmp_path, make_frames):
    """Open-GOP keyframes are not IDR pictures: the decoder's references would not be reset."""
    path = _clip(tmp_path, make_frames, "open_gop.mp4", **CLIPS["open_gop.mp4"])
    c = VI.open_video(path)
    dec = VN.Continuous(_NoFlush(c.streams.video[0].codec_context.extradata))
    c.close()
    assert _continuous_frames(dec, path, 8)[1] is None
    assert VN.continuous_decoder(path, type("S", (), {"codec_context": type("C", (), {"name": "hevc"})()})()) is None


@pytest.mark.parametrize("threads", [0, 3])
def test_threaded_decode_is_identical(tmp_path, make_frames, threads):
    path = _clip(tmp_path, make_frames, "threads.mp4", n=60, gop=12)
    full = V.decode_all(path)
    idx = [0, 5, 11, 12, 13, 30, 47, 59, 59]
    for i, frame in zip(idx, V.decode_frames(path, idx, threads=threads)):
        assert np.array_equal(frame, full[i])
    a, b = V.load_video(path, nframes=8, threads=threads), V.load_video(path, nframes=8)
    assert np.array_equal(a.frames, b.frames)


def test_load_video_sparse_equals_full(h264_clip):
    a = V.load_video(h264_clip, nframes=8)
    b = V.load_video(h264_clip, nframes=8, sparse=False)
    assert a.frame_indices == b.frame_indices and np.array_equal(a.frames, b.frames)
    assert a.frames.dtype == np.uint8 and a.frames.shape == (8, a.resized_height, a.resized_width, 3)


def test_metadata_and_timestamps(h264_clip):
    vf = V.load_video(h264_clip, nframes=6)
    md = vf.metadata()
    assert md["fps"] == 30.0 and md["total_num_frames"] == 48 and md["duration"] == pytest.approx(1.6)
    assert md["frames_indices"] == vf.frame_indices == V.sample_indices(48, 6)
    assert vf.timestamps == [i / 30.0 for i in vf.frame_indices]
    assert vf.sample_fps == pytest.approx(6 / 48 * 30)
    assert vf.notes == []
    tm = pytest.importorskip("transformers.video_utils")
    vm = tm.VideoMetadata(**md)
    assert vm.timestamps == pytest.approx(vf.timestamps)


def test_fewer_frames_than_asked(tmp_path, make_frames):
    path = _clip(tmp_path, make_frames, "nine.mp4", n=9, gop=4)
    vf = V.load_video(path, nframes=16)
    assert vf.frame_indices == [0, 1, 2, 3, 4, 5, 6, 7, 8, 8]
    assert vf.frames.shape[0] == 10 and np.array_equal(vf.frames[-1], vf.frames[-2])
    assert len(vf.notes) == 1 and "asked for 16" in vf.notes[0] and "9" in vf.notes[0]
    # fps mode follows qwen-vl-utils (clamps to the clip), no note needed
    vf = V.load_video(path, fps=30.0)
    assert len(vf.frame_indices) == 8 and vf.notes == []


def test_single_frame_clip(tmp_path, make_frames):
    path = _clip(tmp_path, make_frames, "one.mp4", n=1)
    for kw in ({"nframes": 4}, {"fps": 2.0}):
        vf = V.load_video(path, **kw)
        assert vf.frame_indices == [0, 0] and vf.notes


# ----------------------------------------------------------------------------- frame directories


def _frame_dir(tmp_path, make_frames, n, h=48, w=64, ext=".png", names=None):
    from PIL import Image

    d = tmp_path / "frames"
    d.mkdir()
    frames = list(make_frames(n, h, w))
    for i, f in enumerate(frames):
        Image.fromarray(f).save(d / (names[i] if names else f"{i}{ext}"))
    return d, frames


def test_frame_directory_is_a_video(tmp_path, make_frames):
    d, frames = _frame_dir(tmp_path, make_frames, 12)  # 0.png ... 11.png: natural order, not 0,1,10,11,2
    info = V.probe(d)
    assert info.is_frame_dir and info.total_frames == 12 and info.fps == 1.0
    vf = V.load_video(d, nframes=4)
    assert vf.frame_indices == [0, 4, 7, 11]
    expect = V.resize_frames(np.stack([frames[i] for i in vf.frame_indices]), vf.resized_height, vf.resized_width)
    assert np.array_equal(vf.frames, expect)
    (d / "fps.txt").write_text("10\n")
    assert V.probe(d).fps == 10.0 and V.load_video(d, nframes=2).timestamps == [0.0, 1.1]


def test_lingoqa_style_five_jpegs(tmp_path, make_frames):
    d, _ = _frame_dir(tmp_path, make_frames, 5, ext=".jpg")
    vf = V.load_video(d, nframes=16, source_fps=1.0)
    assert vf.frame_indices == [0, 1, 2, 3, 4, 4] and vf.notes


def test_frame_directory_errors(tmp_path, make_frames):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(V.VideoError, match="zero frames") as e:
        V.load_video(empty, nframes=2)
    assert str(e.value).startswith(str(empty))
    d, _ = _frame_dir(tmp_path, make_frames, 3)
    from PIL import Image

    Image.new("RGB", (10, 10)).save(d / "3.png")
    with pytest.raises(V.VideoError, match="differs") as e:
        V.load_video(d, nframes=4)
    assert "3.png" in str(e.value)


# ----------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    p = tmp_path / "nope.mp4"
    for fn in (V.probe, V.load_video, V.decode_all):
        with pytest.raises(V.VideoError, match="no such file") as e:
            fn(p)
        assert str(e.value).startswith(str(p))


def test_not_a_video(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 50)
    with pytest.raises(V.VideoError, match="not a video") as e:
        V.load_video(p)
    assert str(e.value).startswith(str(p))


def test_audio_only_is_not_a_video(tmp_path):
    p = tmp_path / "tone.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x01" * 8000)
    with pytest.raises(V.VideoError, match="no video stream"):
        V.probe(p)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_video(tmp_path, make_frames, keep):
    """moov last: cutting the file loses the index."""
    src = tmp_path / "src.mp4"
    V.write_video(src, make_frames(40, 48, 64), 30, gop=8, container_options={})
    data = src.read_bytes()
    p = tmp_path / "cut.mp4"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(V.VideoError) as e:
        V.load_video(p, nframes=8)
    assert str(e.value).startswith(str(p))
    assert "truncated" in str(e.value)


def test_truncated_faststart_video(tmp_path, make_frames):
    """moov first: the header lists every frame but the data stops early."""
    src = tmp_path / "fs.mp4"
    V.write_video(src, make_frames(40, 48, 64), 30, gop=8, container_options={"movflags": "+faststart"})
    data = src.read_bytes()
    p = tmp_path / "fs_cut.mp4"
    p.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(V.VideoError, match="truncated") as e:
        V.load_video(p, nframes=8)
    assert str(e.value).startswith(str(p))


def test_zero_frames(tmp_path):
    import av

    p = tmp_path / "empty.mp4"
    out = av.open(str(p), "w")  # an MP4 whose video track holds no sample
    s = out.add_stream("libx264", rate=30)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    out.start_encoding()
    out.close()
    with pytest.raises(V.VideoError) as e:
        V.load_video(p)
    assert str(e.value).startswith(str(p))
    assert "zero frames" in str(e.value) or "no video stream" in str(e.value) or "not a video" in str(e.value)


def test_absurd_aspect_ratio(tmp_path):
    from PIL import Image

    d = tmp_path / "strip"
    d.mkdir()
    for i in range(2):
        Image.new("RGB", (402, 2)).save(d / f"{i}.png")
    with pytest.raises(V.VideoError, match="aspect ratio") as e:
        V.load_video(d, nframes=2)
    assert str(e.value).startswith(str(d))


def test_too_narrow_for_max_pixels(tmp_path, make_frames):
    """150:1 passes qwen-vl-utils' 200:1 check but shrinks to a height of 0 under a small max_pixels:
    a VideoError naming the file, from plan_sampling and load_video alike."""
    clip = tmp_path / "strip.mp4"
    V.write_video(clip, make_frames(4, 10, 1504), 8)
    with pytest.raises(V.VideoError, match="short side falls below 32") as e:
        V.load_video(clip, nframes=4, max_pixels=15000)
    assert str(e.value).startswith(str(clip))
    info = V.probe(clip)
    with pytest.raises(V.VideoError, match="1504x10"):
        V.plan_sampling(info, nframes=4, max_pixels=15000)
    assert V.plan_sampling(info, nframes=4, max_pixels=360000).resized_height == 32  # enough pixels: usable


def test_write_video_sizes_and_args(tmp_path, make_frames):
    p = tmp_path / "odd.mp4"
    V.write_video(p, make_frames(4, 47, 33), 10, gop=2, crf=18)
    info = V.probe(p)
    assert (info.height, info.width, info.total_frames, info.fps) == (48, 34, 4, 10.0)
    with pytest.raises(ValueError):
        V.write_video(tmp_path / "x.mp4", make_frames(2, 8, 8), 10, crf=20, bitrate=10_000)
    with pytest.raises(ValueError):
        V.write_video(tmp_path / "y.mp4", [np.zeros((8, 8, 3), np.float32)], 10)
    with pytest.raises(ValueError):
        V.write_video(tmp_path / "z.mp4", [], 10)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["odd.mp4"]  # no partial files left behind


def test_file_url_prefix(h264_clip):
    assert V.probe(f"file://{h264_clip}").total_frames == 48


# ----------------------------------------------------------------------------- CLI


def _inspect(*args):
    from typer.testing import CliRunner

    from avcap.cli import app

    return CliRunner().invoke(app, ["video", "inspect", *map(str, args)])


def test_cli_inspect_json(h264_clip):
    r = _inspect(h264_clip, "--nframes", 8, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    for k in ("frame_indices", "timestamps", "resized_height", "resized_width", "num_video_tokens", "fps", "total_frames"):
        assert k in d
    vf = V.load_video(h264_clip, nframes=8, max_pixels=360000)
    assert d["frame_indices"] == vf.frame_indices and d["total_frames"] == 48 and d["fps"] == 30.0
    assert (d["resized_height"], d["resized_width"]) == (vf.resized_height, vf.resized_width)
    assert d["timestamps"] == pytest.approx(vf.timestamps)
    assert d["num_video_tokens"] == V.num_video_tokens(8, vf.resized_height, vf.resized_width)


def test_cli_inspect_text_and_options(h264_clip):
    r = _inspect(h264_clip, "--fps", 5, "--patch-size", 14, "--min-pixels", 3136, "--max-pixels", 100000)
    assert r.exit_code == 0, r.output
    assert "sampled 8 frames" in r.stdout and "video tokens" in r.stdout and "timestamps" in r.stdout
    r = _inspect(h264_clip, "--json", "--total-pixels", 20000, "--nframes", 4)
    assert r.exit_code == 0 and json.loads(r.stdout)["resized_height"] % 32 == 0


def test_cli_inspect_errors(tmp_path, h264_clip):
    r = _inspect(h264_clip, "--nframes", 4, "--fps", 2)
    assert r.exit_code == 2 and "only one of" in r.output
    r = _inspect(tmp_path / "missing.mp4")
    assert r.exit_code == 2 and "missing.mp4" in r.output and "Traceback" not in r.output
    r = _inspect(h264_clip, "--patch-size", 15)
    assert r.exit_code == 2


def test_cli_inspect_too_narrow_clip_exits_2(tmp_path, make_frames):
    clip = tmp_path / "strip.mp4"
    V.write_video(clip, make_frames(4, 10, 1504), 8)
    for extra in ([], ["--json"]):
        r = _inspect(clip, "--nframes", 4, "--max-pixels", 15000, *extra)
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {clip}: ") and "short side falls below 32" in lines[0]
        assert "video tokens" not in r.output and "Traceback" not in r.output
    assert _inspect(clip, "--nframes", 4).exit_code == 0  # the default max_pixels leaves a usable size


@pytest.mark.skipif(not UDACITY.exists(), reason="shared sample video absent")
def test_real_video_udacity():
    r = _inspect(UDACITY, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["total_frames"] == 221 and d["fps"] == 25.0 and len(d["frame_indices"]) == 16
    assert (d["resized_height"], d["resized_width"]) == V.smart_resize(540, 960, 32, 3136, 360000)
    assert d["num_video_tokens"] == V.num_video_tokens(16, d["resized_height"], d["resized_width"])
    idx = [0, 110, 220]
    sparse = V.decode_frames(UDACITY, idx)
    full = V.decode_frames(UDACITY, idx, sparse=False)
    assert all(np.array_equal(a, b) for a, b in zip(sparse, full))


FORKED = r"""
import os, sys, time, av, numpy as np
from avcap.video.cpu import to_rgb
with av.open(sys.argv[1]) as c:
    frames = [f for _, f in zip(range(4), c.decode(video=0))]
    pyav = [f.to_ndarray(format="rgb24") for f in frames]  # PyAV's own conversion, on this thread, before the fork
same = all(np.array_equal(to_rgb(f), ref) for f, ref in zip(frames, pyav))
pid = os.fork()
if pid == 0:
    with av.open(sys.argv[1]) as c:
        to_rgb(next(c.decode(video=0)))
    os._exit(0)
for _ in range(300):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print(same, "exited", status)
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    print(same, "hung")
"""


def test_a_process_forked_after_its_parent_converted_frames_converts_its_own(h264_clip):
    """A DataLoader worker is forked from a process that may have converted frames already; PyAV 18.1.1's
    shared per-thread reformatter then hangs the child's first `to_ndarray(format=...)`. avcap's
    conversion uses a reformatter of its own: the same pixels as PyAV's, and a forked child converts."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FORKED, str(h264_clip)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "exited", "0"]
