"""Decoded pictures handed over for conversion elsewhere (avcap.video.decode_video / DecodedVideo)
and frames crossing the process boundary through a spool (avcap.engines.spool)."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os

import numpy as np
import pytest

from avcap.core.config import Vision
from avcap.engines import spool as S
from avcap.engines.frames import FrameLoader
from avcap.video import DecodedVideo, VideoFrames, decode_video, load_video, write_video


def _same(a: VideoFrames, b: VideoFrames) -> None:
    assert np.array_equal(a.frames, b.frames)
    fa, fb = dataclasses.asdict(a), dataclasses.asdict(b)
    fa.pop("frames"), fb.pop("frames")
    assert fa == fb


@pytest.fixture(scope="module")
def vga_clip(tmp_path_factory, make_frames):
    """640x480, 8 frames: planes and frames large enough to be spooled (> 1 MiB)."""
    path = tmp_path_factory.mktemp("vga") / "vga.mp4"
    write_video(path, make_frames(8, 480, 640), 30, gop=4)
    return path


@pytest.mark.parametrize("kw", [{"nframes": 4}, {"nframes": 6, "max_pixels": 3200, "min_pixels": 1024}, {"fps": 10.0}])
def test_decode_video_finished_on_the_cpu_is_load_video(h264_clip, kw):
    d = decode_video(h264_clip, **kw)
    assert d.planes is not None and d.planes.shape[0] == len(d.video.frame_indices)
    assert d.planes.shape[1] == 48 * 64 * 3 // 2 and len(d.video.frames) == 0  # nothing converted yet
    _same(d.finish("cpu"), load_video(h264_clip, **kw))


def test_decode_video_converts_on_the_cpu_what_it_cannot_carry(tmp_path, make_frames):
    """4:4:4 video and frame directories come back finished (planes None), equal to load_video."""
    from PIL import Image

    clip = tmp_path / "yuv444.mp4"
    write_video(clip, make_frames(8, 48, 64), 30, pix_fmt="yuv444p")
    d = decode_video(clip, nframes=4)
    assert d.planes is None
    _same(d.finish("cpu"), load_video(clip, nframes=4))
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i, f in enumerate(make_frames(4, 48, 64)):
        Image.fromarray(f).save(frames_dir / f"{i:03d}.png")
    d = decode_video(frames_dir, nframes=2)
    assert d.planes is None
    _same(d.finish("cpu"), load_video(frames_dir, nframes=2))
    with pytest.raises(ValueError, match="decoder"):
        decode_video(clip, decoder="gpu")
    with pytest.raises(TypeError, match="colour"):
        decode_video(clip, colour="bt709")


def test_nv12_planes_finish_like_i420_planes(h264_clip):
    """NVDEC's pictures come as NV12 (U and V interleaved): finished, the same frames as the CPU
    decoder's I420 planes."""
    d = decode_video(h264_clip, nframes=4)
    n = 48 * 64
    y, u, v = d.planes[:, :n], d.planes[:, n: n + n // 4], d.planes[:, n + n // 4:]
    nv12 = np.concatenate([y, np.stack([u, v], -1).reshape(len(y), -1)], 1)
    got = DecodedVideo(d.video, nv12, colorspace=d.colorspace, color_range=d.color_range, chroma="nv12")
    _same(got.finish("cpu"), load_video(h264_clip, nframes=4))


def test_spooled_results_come_back_equal_and_leave_no_file(tmp_path, vga_clip):
    vf = load_video(vga_clip, nframes=4)
    d = decode_video(vga_clip, nframes=4)
    ref_frames, ref_planes = vf.frames.copy(), d.planes.copy()
    out = S.spooled(vf, str(tmp_path))
    assert isinstance(out.frames, S.SpooledArray) and len(os.listdir(tmp_path)) == 1
    back = S.unspool(out)
    assert np.array_equal(back.frames, ref_frames) and back.frames.flags.writeable
    back.frames[0, 0, 0, 0] ^= 1  # copy-on-write: a private page
    assert os.listdir(tmp_path) == []
    back = S.unspool(S.spooled(d, str(tmp_path)))
    assert isinstance(back, DecodedVideo) and np.array_equal(back.planes, ref_planes)
    _same(back.finish("cpu"), load_video(vga_clip, nframes=4))
    assert os.listdir(tmp_path) == []
    # a spool the worker cannot write to: the array travels in the pickle, as without a spool
    small = load_video(vga_clip, nframes=2)
    assert S.spooled(small, str(tmp_path / "gone")).frames is small.frames


def test_frame_loader_hands_pictures_over_through_the_spool(vga_clip):
    """Worker processes decode only; the loader's process converts and resizes (here on the CPU:
    the same pixels as load_video); the spool directory is empty between videos and gone after close."""
    loader = FrameLoader(Vision(nframes=4), 32, workers=1, processes=True, finish_device="cpu")
    spool = loader._spool
    try:
        got = loader.frames({"video": str(vga_clip)})
        _same(got, load_video(vga_clip, nframes=4))
        plain = loader.frames({"video": str(vga_clip), "nframes": 6})
        _same(plain, load_video(vga_clip, nframes=6))
        if spool is not None:
            assert os.listdir(spool.path) == []
    finally:
        loader.close()
    if spool is not None:
        assert not os.path.exists(spool.path)


def test_decode_worker_processes_yield_the_cpu_to_the_engine(h264_clip):
    from avcap.engines.frames import WORKER_NICE

    loader = FrameLoader(Vision(nframes=4), 32, workers=1, processes=True)
    try:
        assert loader._procs["cpu"].submit(os.nice, 0).result() == min(19, os.nice(0) + WORKER_NICE)
    finally:
        loader.close()


def test_frame_loader_in_threads_finishes_on_the_device_too(h264_clip):
    loader = FrameLoader(Vision(nframes=4), 32, workers=1, finish_device="cpu")
    try:
        assert loader._spool is None
        _same(loader.frames({"video": str(h264_clip)}), load_video(h264_clip, nframes=4))
    finally:
        loader.close()


def _exit() -> None:
    pass


def test_spool_directories_of_dead_processes_are_removed(tmp_path):
    p = mp.get_context("spawn").Process(target=_exit)
    p.start()
    p.join()
    dead = tmp_path / f"{S.PREFIX}{p.pid}-x"
    mine = tmp_path / f"{S.PREFIX}{os.getpid()}-y"
    other = tmp_path / "unrelated"
    for d in (dead, mine, other):
        d.mkdir()
    (dead / "frames").write_bytes(b"x")
    assert S.remove_stale(tmp_path) == 1
    assert not dead.exists() and mine.exists() and other.exists()


def test_no_spool_without_room(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "MIN_FREE", 1 << 62)
    assert S.Spool.create(tmp_path) is None
    monkeypatch.setattr(S, "MIN_FREE", 0)
    sp = S.Spool.create(tmp_path)
    assert sp is not None and os.path.isdir(sp.path)
    sp.remove()
    assert not os.path.exists(sp.path)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_finish_on_the_gpu_is_within_one_level_of_the_cpu(vga_clip):
    d = decode_video(vga_clip, nframes=8, max_pixels=320 * 256)
    cpu, gpu = d.finish("cpu"), d.finish("cuda")
    diff = np.abs(cpu.frames.astype(int) - gpu.frames.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("decoder", ["cpu", "nvdec"])
def test_frame_loader_finishing_on_the_gpu_through_pinned_memory(vga_clip, decoder):
    """CPU decoder processes hand I420 pictures, NVDEC worker processes downloaded NV12 ones, to the
    loader's finishers, which convert and resize them on the GPU."""
    loader = FrameLoader(Vision(nframes=8), 32, workers=2, processes=True, finish_device="cuda", decoder=decoder)
    try:
        assert loader._pin
        got = loader.frames({"video": str(vga_clip)})
        assert loader.decoded_by == {decoder: 1}
    finally:
        loader.close()
    ref = load_video(vga_clip, nframes=8)
    diff = np.abs(ref.frames.astype(int) - got.frames.astype(int))
    assert got.frames.shape == ref.frames.shape and diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_engine_resize_on_gpu_reaches_the_loader_only_on_cuda(varied_model_dir):
    """`[avcap.engine] resize_on_gpu` is a config key; on a CPU device it changes nothing (the CPU
    decoders convert and resize as before), on CUDA the engine's device finishes the pictures."""
    from avcap.core.config import load_config
    from avcap.engines import make_engine

    cfg = load_config(None).avcap.engine.model_copy(update={"device": "cpu", "resize_on_gpu": True, "batch_size": 2})
    eng = make_engine(cfg, vision=Vision(nframes=4, max_pixels=64 * 96), model=str(varied_model_dir))
    try:
        assert eng.frames.finish_device is None
    finally:
        eng.close()
