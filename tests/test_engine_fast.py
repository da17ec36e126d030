"""The transformers engine's fast path (avcap.engines.hf.fast_generate) gives generate's outputs.

CPU, tiny model in float32: greedy tokens are identical to plain `generate`, seeded sampling too,
logits agree to float32 rounding; the pieces (prefix grouping, linear patch embedding, pixels kept
once per video, process-pool decoding, a model object instead of a path) each against the plain
way. What only a GPU has (CUDA graph capture, the GPU video processor) runs in
benchmarks/bench_gpu.py, which checks graph-vs-eager and fast-vs-generate tokens on the device.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from avcap.core.config import Sampling, Vision, load_config  # noqa: E402
from avcap.engines import Request, build_messages, make_engine  # noqa: E402

SYSTEM = "You are a helpful assistant."
VISION = Vision(nframes=8, max_pixels=64 * 96)


def _cfg(**kw):
    return load_config(None).avcap.engine.model_copy(update={"device": "cpu", **kw})


@pytest.fixture(scope="module")
def clips(infer_data_dir, h264_clip):
    return [str(h264_clip)] + [str(p) for p in sorted((infer_data_dir / "AV_CAPTION" / "videos").glob("av0000[0-2].mp4"))]


@pytest.fixture(scope="module")
def engines(varied_model_dir):
    fast = make_engine(_cfg(batch_size=16, fast_generate=True), vision=VISION, model=str(varied_model_dir))
    plain = make_engine(_cfg(batch_size=16, fast_generate=False), vision=VISION, model=str(varied_model_dir))
    assert fast.fast is not None and plain.fast is None
    yield fast, plain
    fast.close()
    plain.close()


def _mixed_requests(clips):
    """MCQ-like: several questions of different lengths per video; a caption; a text-only row."""
    reqs = []
    for v, clip in enumerate(clips[:3]):
        for q in range(3):
            text = f"Question {q}:{' is the road wet or dry' * q} what happens? Answer with the option's letter."
            reqs.append(Request(f"v{v}q{q}", build_messages(SYSTEM, text, clip)))
    reqs.append(Request("cap", build_messages(SYSTEM, "Describe the driving scene.", clips[3])))
    reqs.append(Request("text", build_messages(SYSTEM, "Say something about roads.")))
    return reqs


def _outputs(results):
    return [(r.key, r.raw_text, r.num_output_tokens, r.error) for r in results]


def test_greedy_equals_generate_with_shared_prefixes(engines, clips):
    fast, plain = engines
    reqs = _mixed_requests(clips)
    s = Sampling(temperature=0, max_tokens=10)
    a, b = fast.generate(reqs, s), plain.generate(reqs, s)
    assert {r.extra["path"] for r in a} == {"fast"} and {r.extra["path"] for r in b} == {"generate"}
    assert _outputs(a) == _outputs(b)
    assert len({r.raw_text for r in a}) > 3  # outputs depend on video and question (the test can fail)


def test_decode_attending_over_cache_blocks_equals_generate(engines, clips, monkeypatch):
    """With 4-slot KV blocks every decode step of 14 tokens moves to a new block (a new step
    function): outputs stay generate's, and the steps are keyed by the slots they attend over."""
    from avcap.engines.hf import fast_generate

    monkeypatch.setattr(fast_generate, "KV_BLOCK", 4)
    fast, plain = engines
    reqs = _mixed_requests(clips)
    s = Sampling(temperature=0.7, top_p=0.8, top_k=20, max_tokens=14, seed=5)
    assert _outputs(fast.generate(reqs, s, min_tokens=14)) == _outputs(plain.generate(reqs, s, min_tokens=14))
    steps = list(fast.fast._steps)  # (batch, slots, kv_len)
    assert len(steps) >= 3 and all(kv % 4 == 0 or kv == slots for _, slots, kv in steps)


def test_flex_decode_attention_equals_generate(varied_model_dir, engines, clips, monkeypatch):
    """`decode_attention = "flex"`: FlexAttention with the cache's valid slots as a score_mod gives
    generate's greedy and seeded-sampling tokens (several KV blocks, padded rows, shared prefixes)."""
    from avcap.engines.hf import fast_generate

    monkeypatch.setattr(fast_generate, "KV_BLOCK", 4)
    _, plain = engines
    flex = make_engine(_cfg(batch_size=16, decode_attention="flex"), vision=VISION, model=str(varied_model_dir))
    try:
        assert flex.fast.decode_attention == "flex" and flex.run_record()["decode_attention"] == "flex"
        reqs = _mixed_requests(clips)
        greedy = Sampling(temperature=0, max_tokens=12)
        assert _outputs(flex.generate(reqs, greedy, min_tokens=12)) == _outputs(plain.generate(reqs, greedy, min_tokens=12))
        s = Sampling(temperature=0.7, top_p=0.8, top_k=20, max_tokens=10, seed=5)
        assert _outputs(flex.generate(reqs, s)) == _outputs(plain.generate(reqs, s))
    finally:
        flex.close()


def test_engine_with_triton_decode_attention_equals_generate(interpreted_triton_decode, varied_model_dir, engines, clips,
                                                             monkeypatch):
    """`decode_attention = "triton"`: generate's greedy and seeded-sampling tokens (several KV blocks,
    padded rows, shared prefixes), the kernel run by the interpreter."""
    from avcap.engines.hf import fast_generate

    monkeypatch.setattr(fast_generate, "KV_BLOCK", 4)
    kernel = interpreted_triton_decode.decode_attention
    calls = []
    monkeypatch.setattr(interpreted_triton_decode, "decode_attention", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    _, plain = engines
    eng = make_engine(_cfg(batch_size=16, decode_attention="triton"), vision=VISION, model=str(varied_model_dir))
    try:
        reqs = _mixed_requests(clips)
        greedy = Sampling(temperature=0, max_tokens=12)
        assert _outputs(eng.generate(reqs, greedy, min_tokens=12)) == _outputs(plain.generate(reqs, greedy, min_tokens=12))
        s = Sampling(temperature=0.7, top_p=0.8, top_k=20, max_tokens=10, seed=5)
        assert _outputs(eng.generate(reqs, s)) == _outputs(plain.generate(reqs, s))
        record = eng.run_record()
        assert record["decode_attention"] == record["decode_attention_used"] == "triton"
        assert record["decode_attention_fallback"] is None
        assert calls  # the decode steps ran the kernel, not the sdpa they are compared with
    finally:
        eng.close()


def test_triton_without_a_gpu_decodes_with_sdpa_and_says_why(varied_model_dir, engines, clips, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _, plain = engines
    eng = make_engine(_cfg(batch_size=16, decode_attention="triton"), vision=VISION, model=str(varied_model_dir))
    try:
        reqs = _mixed_requests(clips)
        greedy = Sampling(temperature=0, max_tokens=6)
        with pytest.warns(UserWarning, match="decoding with sdpa"):
            out = eng.generate(reqs, greedy)
        assert _outputs(out) == _outputs(plain.generate(reqs, greedy))
        record = eng.run_record()
        assert "needs a CUDA device, not cpu" in record["decode_attention_fallback"]
        assert record["decode_attention_used"] == "sdpa"
    finally:
        eng.close()


def test_auto_decode_attention_is_sdpa_off_a_gpu_without_a_word(varied_model_dir, engines, clips):
    """`decode_attention = "auto"`: Triton's kernel on a CUDA device; on the CPU plain sdpa, no warning
    (the interpreter is for tests that ask for "triton"), and the record says which ran."""
    import warnings

    _, plain = engines
    eng = make_engine(_cfg(batch_size=16, decode_attention="auto"), vision=VISION, model=str(varied_model_dir))
    try:
        reqs = _mixed_requests(clips)
        greedy = Sampling(temperature=0, max_tokens=6)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*decoding with sdpa.*")
            out = eng.generate(reqs, greedy)
        assert _outputs(out) == _outputs(plain.generate(reqs, greedy))
        record = eng.run_record()
        assert (record["decode_attention"], record["decode_attention_used"], record["decode_attention_fallback"]) == (
            "auto", "sdpa", None)
    finally:
        eng.close()


def test_prefix_through_the_transcribed_layers_equals_the_library_layers(varied_model_dir, engines, clips, monkeypatch):
    """`prefix_layers = "transcribed"` (the default) runs the prompt's decoder layers through avcap's
    transcription — the library's layers are never called — and gives the tokens of "library" and of
    generate, padded prefixes of several lengths included."""
    _, plain = engines
    lib = make_engine(_cfg(batch_size=16, prefix_layers="library"), vision=VISION, model=str(varied_model_dir))
    ours = make_engine(_cfg(batch_size=16), vision=VISION, model=str(varied_model_dir))
    try:
        assert ours.fast.prefix == "transcribed" and lib.fast.prefix == "library"
        layer_type = type(ours.model.model.language_model.layers[0])
        calls = {"n": 0}
        library_forward = layer_type.forward

        def counted(self, *a, **kw):
            calls["n"] += 1
            return library_forward(self, *a, **kw)

        reqs = _mixed_requests(clips)
        greedy = Sampling(temperature=0, max_tokens=10)
        expected = _outputs(plain.generate(reqs, greedy))
        assert _outputs(lib.generate(reqs, greedy)) == expected
        monkeypatch.setattr(layer_type, "forward", counted)
        ours.fast._layer_checked = True  # the start-up check calls the library's layer on purpose
        got = _outputs(ours.generate(reqs, greedy))
        assert calls["n"] == 0
        assert got == expected
    finally:
        lib.close()
        ours.close()


def test_min_tokens_and_seeded_sampling_equal_generate(engines, clips):
    fast, plain = engines
    reqs = [Request(f"c{i}", build_messages(SYSTEM, "Describe the clip.", c)) for i, c in enumerate(clips)]
    s = Sampling(temperature=0.7, top_p=0.8, top_k=20, presence_penalty=1.5, max_tokens=14, seed=3)
    a, b = fast.generate(reqs, s, min_tokens=14), plain.generate(reqs, s, min_tokens=14)
    assert _outputs(a) == _outputs(b)
    assert all(r.num_output_tokens == 14 for r in a)  # no EOS before min_tokens
    greedy = Sampling(temperature=0, max_tokens=14)
    assert _outputs(fast.generate(reqs, greedy, min_tokens=14)) == _outputs(plain.generate(reqs, greedy, min_tokens=14))


def test_first_logits_match_the_model_forward(engines, clips):
    """prefill (shared prefix + text_forward over the static cache) vs the model's own forward."""
    fast, _ = engines
    reqs = _mixed_requests(clips)
    chunk = [(r, [fast.frames.frames(p) for p in r.messages[1]["content"] if isinstance(p, dict) and p.get("type") == "video"])
             for r in reqs]
    inputs = fast.inputs_for(chunk)
    row_videos = [[id(vf) for vf in frames] for _, frames in chunk]
    with torch.inference_mode():
        logits, st = fast.fast.prefill(inputs, row_videos, max_new_tokens=4)
        ref = fast.model(**inputs).logits[:, -1].float()
    assert st["groups"] == 5  # three shared videos, the caption, the text-only row
    err = (logits - ref).abs().max() / ref.abs().max()
    assert err < 1e-5, err


def test_vision_inputs_come_from_the_host(engines, clips, monkeypatch):
    """After the first prefill compared them with the plain call, the vision tower takes its
    grid-derived inputs precomputed (transformers' helpers return them instead of deriving them)
    and the deepstack features are merged at rows known on the host; outputs stay generate's."""
    import transformers.models.qwen3_vl.modeling_qwen3_vl as mq

    from avcap.models.qwen3_vl.host_vision import HostVision, unsupported_reason

    fast, plain = engines
    if unsupported_reason(fast.model):  # transformers 4.57: counted and warned (test_host_vision_off_is_loud)
        pytest.skip(f"host vision inputs off: {unsupported_reason(fast.model)}")
    seen = {"precomputed": 0, "derived": 0, "deepstack": 0}
    helper = mq.get_vision_position_ids

    def position_ids(grid_thw, merge, *a, kwargs=None, **k):
        seen["precomputed" if kwargs and "position_ids" in kwargs else "derived"] += 1
        return helper(grid_thw, merge, *a, kwargs=kwargs, **k)

    deepstack = HostVision._deepstack

    def counted(self, *a):
        seen["deepstack"] += 1
        return deepstack(self, *a)

    monkeypatch.setattr(mq, "get_vision_position_ids", position_ids)
    monkeypatch.setattr(HostVision, "_deepstack", counted)
    reqs = _mixed_requests(clips)
    s = Sampling(temperature=0, max_tokens=6)
    want = _outputs(plain.generate(reqs, s))
    fast.generate(reqs[:2], s)  # a first prefill with videos (the comparison) if no test made one yet
    assert fast.fast.host_vision is True and fast.fast.host_vision_error is None
    seen.update(precomputed=0, derived=0, deepstack=0)
    assert _outputs(fast.generate(reqs, s)) == want
    assert seen["precomputed"] >= 1 and seen["derived"] == 0
    assert seen["deepstack"] >= 1


def test_vision_inputs_that_differ_keep_the_plain_call(varied_model_dir, clips, monkeypatch, tmp_path):
    """If the host's inputs do not give the plain call's numbers, the first prefill says so and
    every later one uses the plain call. (An empty cache: a pass remembered by another test for the
    same source would skip the comparison that this test's patch, not a source change, must fail.)"""
    from avcap.models.qwen3_vl import host_vision

    monkeypatch.setenv("AVCAP_CACHE_DIR", str(tmp_path / "cache"))

    from transformers import AutoModelForImageTextToText

    reason = host_vision.unsupported_reason(AutoModelForImageTextToText.from_pretrained(varied_model_dir))
    if reason:  # transformers 4.57: never on, so never compared (test_host_vision_off_is_loud)
        pytest.skip(f"host vision inputs off: {reason}")
    init = host_vision.HostVision.__init__

    def off_by_a_bit(self, *a):
        init(self, *a)
        self.vision_kwargs["interp_weights"] = self.vision_kwargs["interp_weights"] * 1.001

    monkeypatch.setattr(host_vision.HostVision, "__init__", off_by_a_bit)
    eng = make_engine(_cfg(batch_size=16, fast_generate=True), vision=VISION, model=str(varied_model_dir))
    try:
        reqs = [Request(f"c{i}", build_messages(SYSTEM, "Describe the clip.", c)) for i, c in enumerate(clips)]
        with pytest.warns(UserWarning, match="vision inputs from the host kept off"):
            first = eng.generate(reqs, Sampling(temperature=0, max_tokens=6))
        assert eng.fast.host_vision is False and "differ" in eng.fast.host_vision_error
        again = eng.generate(reqs, Sampling(temperature=0, max_tokens=6))
        assert _outputs(first) == _outputs(again)
    finally:
        eng.close()


def test_host_vision_off_is_loud(varied_model_dir, clips, monkeypatch):
    """Without transformers' vision helpers (transformers 4.57) the fast path runs with the vision
    tower deriving its inputs on the device: outputs stay generate's, a warning once, the requests
    counted under that reason in the run record."""
    from avcap.models.qwen3_vl import host_vision

    monkeypatch.setattr(host_vision, "_helpers", lambda: None)
    fast = make_engine(_cfg(batch_size=16, fast_generate=True), vision=VISION, model=str(varied_model_dir))
    plain = make_engine(_cfg(batch_size=16, fast_generate=False), vision=VISION, model=str(varied_model_dir))
    try:
        assert fast.fast.host_vision is False and "vision_utils" in fast.fast.host_vision_error
        reqs = _mixed_requests(clips)[:4]
        s = Sampling(temperature=0, max_tokens=6)
        with pytest.warns(UserWarning, match="vision inputs from the host kept off") as seen:
            a = fast.generate(reqs, s)
            fast.generate(reqs, s)
        assert len([w for w in seen if "host kept off" in str(w.message)]) == 1
        assert {r.extra["path"] for r in a} == {"fast"} and _outputs(a) == _outputs(plain.generate(reqs, s))
        assert [v for k, v in fast.run_record()["fallbacks"].items() if "host kept off" in k] == [8]
    finally:
        fast.close()
        plain.close()


def test_plan_groups_shares_only_prefixes_that_hold_the_video():
    from avcap.engines.hf.fast_generate import NotSupported, plan_groups

    ids = [[1, 2, 9, 9, 3, 4, 5], [1, 2, 9, 9, 3, 7], [1, 2, 9, 9, 3, 4, 5, 6], [8, 8, 8]]
    types = [[0, 0, 2, 2, 0, 0, 0], [0, 0, 2, 2, 0, 0], [0, 0, 2, 2, 0, 0, 0, 0], [0, 0, 0]]
    g = plan_groups(ids, types, [["a"], ["a"], ["a"], []], [[0], [1], [2], []])
    assert [(x.rows, x.prefix) for x in g] == [([0, 1, 2], [1, 2, 9, 9, 3]), ([3], [8, 8])]
    # identical prompts keep one suffix token each
    g = plan_groups([[1, 9, 3], [1, 9, 3]], [[0, 2, 0], [0, 2, 0]], [["a"], ["a"]], [[0], [1]])
    assert [(x.rows, x.prefix) for x in g] == [([0, 1], [1, 9])]
    # rows that share a video but differ inside its tokens: no sharing
    g = plan_groups([[1, 9, 9, 3], [1, 9, 8, 3]], [[0, 2, 2, 0], [0, 2, 2, 0]], [["a"], ["a"]], [[0], [1]])
    assert [(x.rows, x.prefix) for x in g] == [([0], [1, 9, 9]), ([1], [1, 9, 8])]
    with pytest.raises(NotSupported):
        plan_groups([[1, 9]], [[0, 2]], [["a"]], [[0]])


def test_linear_patch_embedding_is_the_same_function(varied_model_dir):
    from transformers import AutoModelForImageTextToText

    from avcap.engines.hf.fast_generate import linear_patch_embed

    model = AutoModelForImageTextToText.from_pretrained(varied_model_dir)
    pe = model.model.visual.patch_embed
    x = torch.randn(37, 3 * 2 * 16 * 16)
    with torch.no_grad():
        ref = pe(x)
        assert linear_patch_embed(model) and not linear_patch_embed(model)
        out = pe(x)
    assert out.shape == ref.shape and (out - ref).abs().max() / ref.abs().max() < 1e-5


def test_pixels_kept_once_per_video(engines, clips):
    from avcap.engines.hf.engine import _video_pixels

    fast, _ = engines
    reqs = _mixed_requests(clips)[:7]
    chunk = [(r, [fast.frames.frames({"video": r.messages[1]["content"][0]["video"]})]) for r in reqs]
    full = fast.inputs_for(chunk)
    once = fast.inputs_for(chunk, expand_videos=False)
    sizes = full["video_grid_thw"].prod(-1).tolist()  # 7 requests: 3 + 3 + 1 of three videos
    assert full["pixel_values_videos"].shape[0] == sum(sizes)
    assert once["pixel_values_videos"].shape[0] == sizes[0] + sizes[3] + sizes[6]
    assert once["video_unique_index"].tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert torch.equal(once["input_ids"], full["input_ids"]) and torch.equal(once["video_grid_thw"], full["video_grid_thw"])
    per = _video_pixels(once)
    assert torch.equal(torch.cat(per), full["pixel_values_videos"])


@pytest.mark.parametrize("expand", [True, False])
def test_processor_in_calls_of_few_videos_with_16_bit_pixels_gives_its_one_call_output(engines, clips, expand,
                                                                                      monkeypatch):
    """The video processor sees `videos_per_call` distinct videos at a time and each call's pixels
    are cast to the model's dtype: the same ids, grids and order as one call, pixels equal to that
    call's cast (the vision tower casts its input first, so the model sees the same numbers)."""
    fast, _ = engines
    vp = fast.processor.video_processor
    reqs = _mixed_requests(clips)
    chunk = [(r, [fast.frames.frames(p) for p in r.messages[1]["content"] if isinstance(p, dict) and p.get("type") == "video"])
             for r in reqs]
    assert vp.pixel_dtype is None and vp.videos_per_call == 8  # a float32 engine keeps float32 pixels
    whole = fast.inputs_for(chunk, expand_videos=expand)
    calls = []
    real = vp._inner.preprocess
    monkeypatch.setattr(vp._inner, "preprocess", lambda videos, **kw: calls.append(len(videos)) or real(videos, **kw))
    try:
        vp.pixel_dtype, vp.videos_per_call = torch.bfloat16, 1
        sliced = fast.inputs_for(chunk, expand_videos=expand)
    finally:
        vp.pixel_dtype, vp.videos_per_call = None, 8
    assert calls == [1, 1, 1, 1]  # four distinct videos, one call each
    assert set(sliced) == set(whole)
    for k in whole:
        if k == "pixel_values_videos":
            assert sliced[k].dtype == torch.bfloat16 and torch.equal(sliced[k], whole[k].to(torch.bfloat16))
        else:
            assert torch.equal(torch.as_tensor(sliced[k]), torch.as_tensor(whole[k])), k


def test_16_bit_engine_casts_pixels_as_made_with_the_same_outputs(varied_model_dir, clips):
    """A bfloat16 engine makes its pixels in bfloat16 (half the memory of float32): greedy outputs
    are identical to pixels kept in float32 until the vision tower casts them, on both paths."""
    for fast_generate in (True, False):
        eng = make_engine(_cfg(batch_size=16, fast_generate=fast_generate, dtype="bfloat16"), vision=VISION,
                          model=str(varied_model_dir))
        try:
            vp = eng.processor.video_processor
            assert vp.pixel_dtype == torch.bfloat16
            reqs = _mixed_requests(clips)
            s = Sampling(temperature=0, max_tokens=6)
            cast = _outputs(eng.generate(reqs, s))
            vp.pixel_dtype = None
            kept = _outputs(eng.generate(reqs, s))
        finally:
            eng.close()
        assert cast == kept and all(err is None for *_, err in cast)


def test_shared_inputs_equal_the_processor(engines, clips):
    """The fast path runs the processor once per video and splices each question's own tokens."""
    fast, _ = engines
    reqs = _mixed_requests(clips)
    chunk = [(r, [fast.frames.frames(p) for p in r.messages[1]["content"] if isinstance(p, dict) and p.get("type") == "video"])
             for r in reqs]
    full = fast.inputs_for(chunk)
    calls = []
    real = fast.inputs_for
    fast.inputs_for = lambda c, **kw: calls.append(len(c)) or real(c, **kw)
    try:
        shared, pixels = fast.shared_inputs_for(chunk)
    finally:
        del fast.inputs_for
    assert calls == [5]  # the processor saw three videos, the caption and the text-only row, not 11 requests
    # mm_token_type_ids where the processor gives them (transformers 5; 4.57's has none)
    assert set(shared) == set(full) - {"pixel_values_videos"} >= {"input_ids", "attention_mask", "video_grid_thw"}
    for k in shared:
        assert torch.equal(shared[k], full[k]), k
    assert torch.equal(torch.cat(pixels), full["pixel_values_videos"])


def test_repetition_penalty_falls_back_to_generate(engines, clips):
    fast, plain = engines
    reqs = [Request("a", build_messages(SYSTEM, "Describe.", clips[0]))]
    s = Sampling(temperature=0, max_tokens=5, repetition_penalty=1.3)
    a = fast.generate(reqs, s)
    assert a[0].extra["path"] == "generate" and _outputs(a) == _outputs(plain.generate(reqs, s))


def test_engine_takes_a_model_object(varied_model_dir, clips):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from avcap.engines.hf.engine import TransformersEngine

    model = AutoModelForImageTextToText.from_pretrained(varied_model_dir)
    with pytest.raises(ValueError, match="processor"):
        TransformersEngine(_cfg(), vision=VISION, model=model)
    eng = TransformersEngine(_cfg(), vision=VISION, model=model, processor=AutoProcessor.from_pretrained(varied_model_dir))
    by_path = make_engine(_cfg(), vision=VISION, model=str(varied_model_dir))
    try:
        reqs = [Request("a", build_messages(SYSTEM, "Describe.", clips[1]))]
        s = Sampling(temperature=0, max_tokens=6)
        assert _outputs(eng.generate(reqs, s)) == _outputs(by_path.generate(reqs, s))
    finally:
        eng.close()
        by_path.close()


def test_frame_loader_processes_equal_threads(clips):
    import numpy as np

    from avcap.engines.frames import FrameLoader

    reqs = [Request(str(i), build_messages(None, "x", c)) for i, c in enumerate(clips)]
    out = []
    for processes in (False, True):
        loader = FrameLoader(VISION, 32, workers=2, processes=processes)
        loader.prefetch(reqs)
        out.append([loader.frames({"video": c}) for c in clips])
        loader.close()
    for a, b in zip(*out):
        assert np.array_equal(a.frames, b.frames) and a.frame_indices == b.frame_indices and a.fps == b.fps


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="inductor needs a C++ compiler on CPU (none on PATH)")
def test_compiled_engine_gives_the_eager_outputs(varied_model_dir, engines, clips):
    """`[avcap.engine] compile = true` (inductor, packed vision attention): the prefill runs the
    compiled blocks; greedy tokens equal the eager engine's and the first logits agree to fp32
    rounding (~20 s of compilation on a 2-core CPU)."""
    eager, _ = engines
    compiled = make_engine(_cfg(batch_size=16, compile=True), vision=VISION, model=str(varied_model_dir))
    try:
        layers = compiled.model.model.language_model.layers
        blocks = compiled.model.model.visual.blocks
        assert all(getattr(m, "_avcap_compiled", False) for m in [*layers, *blocks])
        assert all(getattr(b.attn, "_avcap_packed", False) for b in blocks)
        from avcap.engines.hf.fast_generate import attention_inputs, attention_output_and_mlp

        assert compiled.fast.pieces != (attention_inputs, attention_output_and_mlp)  # decode steps compiled too
        reqs = _mixed_requests(clips)
        s = Sampling(temperature=0, max_tokens=10)
        a, b = compiled.generate(reqs, s), eager.generate(reqs, s)
        assert {r.extra["path"] for r in a} == {"fast"}
        assert _outputs(a) == _outputs(b)
        cache = compiled.run_record()["compile_cache"]  # avcap's versioned folder, with torch's counters
        assert cache["source"] == "avcap" and cache["dir"].startswith(os.environ["AVCAP_CACHE_DIR"])
        assert sum(cache["counters"].values()) > 0
        # the workload's shape profile was written where the model ran (the thread that compiled)
        assert list(Path(cache["dir"]).glob(f"dynamo/code_state_{cache['shape_profile']['job_id']}*.pkl"))
        first = compiled.run_record()["startup"]["first_call"]  # the first call's compiling, timed by torch
        assert 0 < first["compile_s"] <= first["done_at_s"] - first["model_ready_at_s"]
        [batch] = compiled.run_record()["batches"]  # the same compiling, counted in the batch that paid it
        assert 0 < batch["compile_s"] <= batch["generate_s"] + batch["prep_s"]
        chunk = [(r, [compiled.frames.frames(p) for p in r.messages[1]["content"]
                      if isinstance(p, dict) and p.get("type") == "video"]) for r in reqs]
        inputs = compiled.inputs_for(chunk)
        row_videos = [[id(vf) for vf in frames] for _, frames in chunk]
        with torch.inference_mode():
            got, _ = compiled.fast.prefill(inputs, row_videos, max_new_tokens=4)
            ref, _ = eager.fast.prefill(inputs, row_videos, max_new_tokens=4)
        assert (got - ref).abs().max() / ref.abs().max() < 1e-5
    finally:
        compiled.close()


def test_chooser_probabilities_equal_transformers_warpers():
    """The fast path's top-k/top-p on the top candidates = transformers' warpers on the whole vocabulary."""
    from avcap.engines.hf.fast_generate import Chooser, SamplingSpec

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5000, generator=g) * 4
    logits[0, :40] = 30.0  # 40 tokens tied at the top: more than top-k, fewer than top-k + margin
    for top_k, top_p in ((20, 0.8), (20, 1.0), (5, 0.3), (50, 0.95)):
        spec = SamplingSpec(temperature=0.7, top_k=top_k, top_p=top_p)
        ch = Chooser(spec, 6, 5000, eos=[], pad=0, device="cpu")
        got = ch._top_k_top_p(logits / 0.7)
        ref = logits / 0.7
        for w in spec.warpers()[1:]:  # temperature applied above
            ref = w(None, ref)
        ref = torch.softmax(ref, dim=-1)
        rows = slice(1, None) if top_p < 1 else slice(None)  # ties + top-p: the order among ties is arbitrary
        assert torch.allclose(got[rows], ref[rows], atol=1e-7, rtol=1e-6), (top_k, top_p)
        assert ((got > 0) == (ref > 0))[rows].all()
        assert torch.allclose(got.sum(-1), torch.ones(6))
        if top_p == 1.0:
            assert int((got[0] > 0).sum()) == 40  # every tie kept, like transformers


def test_chooser_without_top_k_draws_like_transformers_warpers():
    """Temperature + top-p without top-k: transformers' warpers (temperature applied once), the
    same seeded draws as softmax + multinomial over their output."""
    from avcap.engines.hf.fast_generate import Chooser, SamplingSpec

    logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(1)) * 3
    for spec in (SamplingSpec(temperature=0.4, top_p=0.9), SamplingSpec(temperature=2.5)):
        ch = Chooser(spec, 64, 1000, eos=[], pad=0, device="cpu")
        torch.manual_seed(0)
        got = ch(logits.clone(), 0)
        ref = logits.clone()
        for w in spec.warpers():
            ref = w(None, ref)
        torch.manual_seed(0)
        want = torch.multinomial(torch.softmax(ref, dim=-1), num_samples=1).squeeze(1)
        assert torch.equal(got, want), spec


def test_draw_is_torch_multinomial_without_its_checks():
    """Same generator state, same tokens as torch.multinomial(probs, 1): dense rows, top-k-like
    rows with few non-zero probabilities, and a row with all its mass on one token."""
    from avcap.engines.hf.fast_generate import draw

    g = torch.Generator().manual_seed(2)
    dense = torch.softmax(torch.randn(16, 3000, generator=g) * 3, dim=-1)
    sparse = torch.zeros(16, 3000).scatter_(1, torch.randint(0, 3000, (16, 5), generator=g),
                                            torch.rand(16, 5, generator=g))
    sparse /= sparse.sum(-1, keepdim=True)
    sparse[3] = 0.0
    sparse[3, 7] = 1.0
    for probs in (dense, sparse):
        for seed in range(5):
            torch.manual_seed(seed)
            want = torch.multinomial(probs, num_samples=1).squeeze(1)
            torch.manual_seed(seed)
            got = draw(probs)
            assert torch.equal(got, want)
            assert probs[torch.arange(16), got].gt(0).all()
    assert int(draw(sparse)[3]) == 7


def test_stop_check_answers_one_check_late_with_lag():
    from avcap.engines.hf.fast_generate import StopCheck

    unfinished = torch.tensor([True, True])
    now, late = StopCheck(unfinished, lag=False), StopCheck(unfinished, lag=True)
    assert not now.all_finished() and not late.all_finished()
    unfinished[0] = False
    assert not now.all_finished() and not late.all_finished()
    unfinished[1] = False
    assert now.all_finished()
    assert not late.all_finished()  # answers what the previous check saw
    assert late.all_finished()


def test_long_generation_with_lagged_stop_equals_generate(engines, clips):
    """Over 16 new tokens the loop checks for the end every 4 steps, one check late."""
    fast, plain = engines
    reqs = [Request(f"c{i}", build_messages(SYSTEM, "Describe the clip.", c)) for i, c in enumerate(clips[:2])]
    s = Sampling(temperature=0.7, top_p=0.8, top_k=20, presence_penalty=1.5, max_tokens=30, seed=4)
    assert _outputs(fast.generate(reqs, s)) == _outputs(plain.generate(reqs, s))


def test_lagged_stop_ends_early_with_every_row_cut_at_its_eos(engines, clips):
    """Rows that end at different steps: each is cut at its own EOS (pad after it), the loop stops
    at most 7 steps after the last row's end instead of running to max_new_tokens."""
    from avcap.engines.hf.fast_generate import SamplingSpec

    fast, _ = engines
    reqs = [Request(f"c{i}", build_messages(SYSTEM, "Describe the clip.", c)) for i, c in enumerate(clips)]
    chunk = [(r, [fast.frames.frames(p) for p in r.messages[1]["content"] if isinstance(p, dict) and p.get("type") == "video"])
             for r in reqs]
    batch, pixels = fast.shared_inputs_for(chunk)
    keys = [[id(vf) for vf in f] for _, f in chunk]
    gen = fast.fast
    with torch.inference_mode():
        free = gen.generate(batch, keys, SamplingSpec(), max_new_tokens=40, video_pixels=pixels, device=torch.device("cpu"))
    # the "end" token of each row: what it emits at step 3 + row (rows end at different steps)
    ends = {int(free[r, 3 + r]) for r in range(len(reqs))}
    cut = []
    for r in range(len(reqs)):
        row = free[r].tolist()
        stop = next(t for t, tok in enumerate(row) if tok in ends)
        cut.append(row[: stop + 1] + [gen.pad] * (len(row) - stop - 1))
    last_end = max(next(t for t, tok in enumerate(row) if tok in ends) for row in free.tolist())
    saved = gen.eos
    gen.eos = sorted(ends)
    try:
        with torch.inference_mode():
            got = gen.generate(batch, keys, SamplingSpec(), max_new_tokens=40, video_pixels=pixels, device=torch.device("cpu"))
    finally:
        gen.eos = saved
    assert got.shape[1] < 40 and got.shape[1] <= last_end + 1 + 7  # stopped early: at most 7 steps after the last end
    assert got.tolist() == [row[: got.shape[1]] for row in cut]
    assert all(row[got.shape[1]:] == [gen.pad] * (40 - got.shape[1]) for row in cut)


def test_chooser_presence_penalty_and_min_tokens():
    from avcap.engines.hf.fast_generate import Chooser, SamplingSpec

    spec = SamplingSpec(temperature=0.0, presence_penalty=1.5, min_new_tokens=2)
    ch = Chooser(spec, 2, 10, eos=[9], pad=0, device="cpu")
    logits = torch.zeros(2, 10)
    logits[:, 9] = 5.0  # EOS is best but masked for the first 2 tokens
    logits[:, 3] = 1.0
    logits[:, 4] = 0.9
    assert ch(logits.clone(), 0).tolist() == [3, 3]
    assert ch(logits.clone(), 1).tolist() == [4, 4]  # 3 was seen: 1.0 - 1.5 < 0.9
    assert ch(logits.clone(), 2).tolist() == [9, 9]  # EOS allowed now
    assert ch(logits.clone(), 3).tolist() == [0, 0] and not ch.unfinished.any()  # finished rows emit pad


def test_prefetched_requests_are_prepared_during_the_previous_batch(engines, clips, infer_data_dir):
    """prefetch(next) + generate(current): the next list's processor work runs in the background;
    its results equal a plain call's, a bad video still fails only its own request."""
    fast, plain = engines
    bad = str(infer_data_dir / "AV_CAPTION" / "videos" / "av99999.mp4")
    first = _mixed_requests(clips)[:4]
    nxt = [Request(f"n{i}", build_messages(SYSTEM, f"Describe clip {i}.", c)) for i, c in enumerate(clips)]
    nxt.append(Request("bad", build_messages(SYSTEM, "Describe.", bad)))
    s = Sampling(temperature=0, max_tokens=8)
    fast.prefetch(nxt)
    a = fast.generate(first, s)
    assert fast._prep is not None and fast._prep[0] == tuple(r.key for r in nxt)
    b = fast.generate(nxt, s)
    assert not any(r.extra.get("prepared_ahead") for r in a)
    assert all(r.extra["prepared_ahead"] for r in b if r.error is None)
    assert b[-1].error and "av99999.mp4" in b[-1].error and all(r.error is None for r in b[:-1])
    assert _outputs(b) == _outputs(plain.generate(nxt, s))
    assert _outputs(a) == _outputs(plain.generate(first, s))
    # a caller that prefetches one list and then asks for another: the prepared work is dropped
    fast.prefetch(nxt)
    fast.generate(first, s)
    assert fast._prep is not None
    c = fast.generate(first[:2], s)
    assert fast._prep is None and not any(r.extra["prepared_ahead"] for r in c)


def test_a_batch_records_how_long_its_call_waited_for_the_inputs_prepared_ahead(engines, clips, monkeypatch):
    """The background preparation of the next list is held until 1 s after the first call returns: the
    next call's first batch records that wait (`inputs_waited_s`); a call whose inputs were ready records
    ~0 (what tells a run's gap between batches apart from the model's own time)."""
    fast, _ = engines
    first = [Request(f"w{i}", build_messages(SYSTEM, "Describe.", c)) for i, c in enumerate(clips[:2])]
    nxt = [Request(f"x{i}", build_messages(SYSTEM, "Describe the road.", c)) for i, c in enumerate(clips[:2])]
    s = Sampling(temperature=0, max_tokens=4)
    main, go = threading.get_ident(), threading.Event()
    real = fast.shared_inputs_for

    def held_in_the_background(chunk):
        if threading.get_ident() != main:
            go.wait(30)
        return real(chunk)

    monkeypatch.setattr(fast, "shared_inputs_for", held_in_the_background)
    fast.new_run()
    fast.prefetch(nxt)
    fast.generate(first, s)
    threading.Timer(1.0, go.set).start()
    fast.generate(nxt, s)
    ready = fast.generate(first, s)  # prepared inline, no background work to wait for
    a, b, c = fast.run_record()["batches"]
    assert b["prepared_ahead"] is True and 0.8 < b["inputs_waited_s"] < 10
    assert c["prepared_ahead"] is False and c["inputs_waited_s"] < b["inputs_waited_s"] - 0.5
    assert all(r.error is None for r in ready)


def test_the_first_call_builds_its_inputs_while_the_weights_load(engines, clips, varied_model_dir, monkeypatch):
    """A first `generate` during the background load builds its batch's inputs as soon as the load has
    the processor, while the weights are still loading (here held for 3 s after the processor): the
    batch starts with its inputs ready, and its outputs are the loaded engine's."""
    from avcap.engines.hf.engine import TransformersEngine

    reqs = _mixed_requests(clips)[:4]
    s = Sampling(temperature=0, max_tokens=6)
    want = _outputs(engines[0].generate(reqs, s))
    weights_go = threading.Event()
    real = TransformersEngine._read_weights

    def held(self, *a, **kw):
        weights_go.wait(30)
        return real(self, *a, **kw)

    monkeypatch.setattr(TransformersEngine, "_read_weights", held)
    eng = make_engine(_cfg(batch_size=16, fast_generate=True), vision=VISION, model=str(varied_model_dir))
    try:
        eng._processor_loaded.wait(60)
        threading.Timer(3.0, weights_go.set).start()
        got = _outputs(eng.generate(reqs, s))
        first = eng.run_record()["startup"]["first_call"]
        [batch] = eng.run_record()["batches"]
    finally:
        weights_go.set()
        eng.close()
    assert got == want
    assert batch["prepared_ahead"] is True and batch["prep_s"] < 0.1
    # the inputs were ready while the weights were held (the frames and the processor's work came first)
    assert first["frames_ready_at_s"] < first["model_ready_at_s"] - 1.0


def test_compile_on_cpu_without_a_compiler_is_a_clear_error(varied_model_dir, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match=r"\[avcap.engine\] compile = true on the CPU needs a C\+\+ compiler"):
        make_engine(_cfg(compile=True), vision=VISION, model=str(varied_model_dir))


# ----------------------------------------------------------------------------- splicing after videos

VS, VP, VE = 90, 91, 92  # vision start / video pad / vision end, as token ids


def _u(before, after):
    return before + [VS, VP, VE] + after


@pytest.mark.parametrize("layout", ["outer pair kept (transformers 5.17)", "outer pair collapsed (5.25)"])
def test_splice_after_videos_finds_where_the_video_ends_in_either_layout(layout):
    from avcap.engines.hf.engine import splice_after_videos

    frames = [7, 8, VS, VP, VP, VE, 7, 9, VS, VP, VP, VE]  # "<t s>" text + per-frame-group markers
    before, after_rep, after_row = [1, 2, 3], [40, 41, 42, 5], [43, 44, 5]
    video = [VS] + frames + [VE] if layout.startswith("outer pair kept") else frames
    x_rep = before + video + after_rep
    cut, tail = splice_after_videos(_u(before, after_rep), x_rep, _u(before, after_row), VP, {VP})
    assert tail == [VE] + after_row  # the placeholder's closing marker and the row's own text
    assert x_rep[:cut] + tail == before + video + after_row  # what the processor makes of the row


def test_splice_after_videos_says_why_it_cannot():
    from avcap.engines.hf.engine import splice_after_videos

    x = [1, 7, VS, VP, VP, VE, 40, 5]
    ok = _u([1], [40, 5])
    assert "differs" in splice_after_videos(ok, x, _u([2], [41, 5]), VP, {VP})
    assert "media after" in splice_after_videos(ok, x, _u([1], [41, VP, 5]), VP, {VP})
    assert "does not end with" in splice_after_videos(ok, [1, 7, VS, VP, VE, 41, 5], _u([1], [43, 5]), VP, {VP})
    assert "no video placeholder" in splice_after_videos([1, 40, 5], x, [1, 41, 5], VP, {VP})


def test_shared_inputs_are_spliced_without_fallback_and_recorded(engines, clips):
    fast, _ = engines
    reqs = _mixed_requests(clips)
    chunk = [(r, [fast.frames.frames(p) for p in r.messages[1]["content"] if isinstance(p, dict) and p.get("type") == "video"])
             for r in reqs]
    before = dict(fast.run_record()["counts"])
    fast.shared_inputs_for(chunk)
    rec = fast.run_record()
    assert rec["counts"].get("shared_inputs_spliced", 0) - before.get("shared_inputs_spliced", 0) == 6
    assert not any(k.startswith("shared inputs") for k in rec["fallbacks"])
    assert rec["representation"]["kind"] == "frames"


def test_a_fallback_is_counted_with_its_reason_and_warned_once(varied_model_dir, clips):
    eng = make_engine(_cfg(batch_size=16, fast_generate=True), vision=VISION, model=str(varied_model_dir))
    try:
        reqs = [Request(f"q{i}", build_messages(system, "Which lane?", clips[0]))
                for i, system in enumerate([SYSTEM, "Another system prompt.", SYSTEM])]
        s = Sampling(temperature=0, max_tokens=4)
        with pytest.warns(UserWarning, match="text before a shared video differs") as seen:
            out = eng.generate(reqs, s)
            eng.generate(reqs, s)
        assert len([w for w in seen if "differs" in str(w.message)]) == 1
        assert all(r.error is None and r.extra["path"] == "fast" for r in out)
        fb = eng.run_record()["fallbacks"]
        assert [v for k, v in fb.items() if "differs" in k] == [2]  # once per batch, two batches
    finally:
        eng.close()


def _no_mlp_residual(layer, hidden, o):
    """`attention_output_and_mlp` with a bug: the MLP's residual left out."""
    b, heads, n, d = o.shape
    hidden = hidden + layer.self_attn.o_proj(o.transpose(1, 2).reshape(b, n, heads * d))
    return layer.mlp(layer.post_attention_layernorm(hidden))


def test_the_transcribed_layer_checks_itself_against_transformers(varied_model_dir, clips, monkeypatch):
    """The fast path's own decoder layer is compared with transformers' layer before it serves
    anything; a layer that differs (here: a residual left out) turns the fast path off, loudly,
    and generate answers with its own outputs."""
    from avcap.engines.hf import fast_generate

    ok = make_engine(_cfg(batch_size=16, fast_generate=True), vision=VISION, model=str(varied_model_dir))
    try:
        assert fast_generate.check_layer_against_library(ok.model) is None
    finally:
        ok.close()

    monkeypatch.setattr(fast_generate, "attention_output_and_mlp", _no_mlp_residual)
    fast = make_engine(_cfg(batch_size=16, fast_generate=True), vision=VISION, model=str(varied_model_dir))
    plain = make_engine(_cfg(batch_size=16, fast_generate=False), vision=VISION, model=str(varied_model_dir))
    try:
        reqs = _mixed_requests(clips)[:4]
        s = Sampling(temperature=0, max_tokens=6)
        with pytest.warns(UserWarning, match="its text decoder layer differs from transformers'"):
            a = fast.generate(reqs, s)
        assert {r.extra["path"] for r in a} == {"generate"} and _outputs(a) == _outputs(plain.generate(reqs, s))
        assert [v for k, v in fast.run_record()["fallbacks"].items() if "differs from transformers'" in k] == [4]
    finally:
        fast.close()
        plain.close()


def test_the_layer_check_compiles_nothing_of_its_own(tiny_model_dir):
    """With the blocks compiled, the check of the transcribed layer runs transformers' layer as
    written: a compiled call on its 5 tokens would trace (and on a cold cache compile) a graph that
    nothing else uses, in every process's first call."""
    import torch
    from transformers import AutoModelForImageTextToText

    from avcap.models.qwen3_vl.compile import compile_blocks
    from avcap.models.qwen3_vl.text import check_layer_against_library

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    compile_blocks(model, backend="eager", linear_patch_embed=False)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert check_layer_against_library(model) is None
    assert sum(torch._dynamo.utils.counters["frames"].values()) == 0  # dynamo saw no frame
    layer = model.model.language_model.layers[0]
    with torch.no_grad():  # the layer itself is still compiled for whoever calls it
        h = torch.randn(1, 3, model.config.get_text_config().hidden_size)
        pos = torch.arange(3).view(1, 1, 3).expand(3, 1, 3)
        layer(h, position_embeddings=model.model.language_model.rotary_emb(h, pos), attention_mask=None,
              position_ids=pos[0])
    assert torch._dynamo.utils.counters["frames"]["ok"] >= 1


def test_a_passed_layer_check_is_remembered_across_engines_but_not_across_code(varied_model_dir, clips, monkeypatch,
                                                                                tmp_path):
    """The layer check's pass, and the first prefill's check of host-computed vision inputs, are
    kept in the cache folder: the next engine (process) with the same code, versions, configuration
    and dtype skips both and answers the same; changed code (a piece with the residual left out) is
    another key, so the layer check runs again and catches it."""
    from avcap.engines.hf import fast_generate
    from avcap.models.qwen3_vl import host_vision

    monkeypatch.setenv("AVCAP_CACHE_DIR", str(tmp_path / "cache"))
    reqs = _mixed_requests(clips)[:4]
    s = Sampling(temperature=0, max_tokens=6)
    outs, checks = [], []
    for _ in range(2):
        eng = make_engine(_cfg(batch_size=16, fast_generate=True), vision=VISION, model=str(varied_model_dir))
        try:
            outs.append(_outputs(eng.generate(reqs, s)))
            first = eng.run_record()["startup"]["first_call"]
            checks.append((first["layer_check"], first.get("host_vision_check")))
            assert eng.fast.host_vision is (eng.fast.host_vision_error is None)
        finally:
            eng.close()
    on = host_vision.unsupported_reason(eng.model) is None  # transformers 4.57: no host vision inputs to check
    assert checks == ([("ran", "ran"), ("remembered", "remembered")] if on else [("ran", None), ("remembered", None)])
    assert outs[0] == outs[1]
    verdicts = tmp_path / "cache" / "verdicts"
    assert len(list(verdicts.glob(f"{fast_generate.LAYER_CHECK}-*.json"))) == 1
    assert len(list(verdicts.glob(f"{fast_generate.HOST_VISION_CHECK}-*.json"))) == (1 if on else 0)

    monkeypatch.setattr(fast_generate, "attention_output_and_mlp", _no_mlp_residual)
    broken = make_engine(_cfg(batch_size=16, fast_generate=True), vision=VISION, model=str(varied_model_dir))
    try:
        with pytest.warns(UserWarning, match="its text decoder layer differs from transformers'"):
            out = broken.generate(reqs, s)
        assert broken.run_record()["startup"]["first_call"]["layer_check"] == "ran"
        assert {r.extra["path"] for r in out} == {"generate"}
    finally:
        broken.close()
    assert len(list(verdicts.glob(f"{fast_generate.LAYER_CHECK}-*.json"))) == 1  # failures are not kept
