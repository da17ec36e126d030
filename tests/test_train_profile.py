"""`[profiler]` (cosmos-rl's keys) in `avcap train`: the chosen step is recorded (a Chrome trace,
torch's operator table, a summary), training itself is unchanged, and the summary's arithmetic."""

from __future__ import annotations

import gzip
import json

import pytest
from test_train import log_of, train_config

from avcap.core.config import ConfigError, load_config
from avcap.train.profile import busy_seconds, idle_gaps, kernel_kind, window_summary


def test_busy_seconds_is_the_union_of_the_intervals():
    assert busy_seconds([]) == 0.0
    assert busy_seconds([(0, 1), (2, 3)]) == 2.0
    assert busy_seconds([(0, 2), (1, 3)]) == 3.0  # overlap counted once
    assert busy_seconds([(0, 10), (2, 3), (4, 5)]) == 10.0  # nested
    assert busy_seconds([(5, 6), (0, 1), (0.5, 1.5)]) == 2.5  # any order


def test_window_summary_spans_host_and_device_and_ranks_device_events():
    events = [("step", "host", 0.0, 10.0), ("ProfilerStep#3", "annotation", 0.0, 10.0),
              ("nvjet_sm90_tst_256x128", "device", 1.0, 4.0), ("nvjet_sm90_tst_256x128", "device", 5.0, 7.0),
              ("triton_red_fused_mean_rsqrt", "device", 6.5, 8.0)]
    s = window_summary(events)
    assert s["span_s"] == 10.0
    assert s["device_busy_s"] == 6.0  # 1-4, 5-8: the annotation spanning the step is no work
    assert s["device_busy_fraction"] == pytest.approx(0.6)
    assert s["device_kernel_s"] == 6.5  # the overlap counted twice
    assert s["device_kinds"] == {"matmul": {"seconds": 5.0, "calls": 2}, "inductor_fused": {"seconds": 1.5, "calls": 1}}
    assert s["device_idle_gaps"] == [{"at_s": 8.0, "seconds": 2.0}, {"at_s": 0.0, "seconds": 1.0},
                                     {"at_s": 4.0, "seconds": 1.0}]
    assert s["device_top"] == [{"name": "nvjet_sm90_tst_256x128", "seconds": 5.0, "calls": 2},
                               {"name": "triton_red_fused_mean_rsqrt", "seconds": 1.5, "calls": 1}]
    assert s["device_annotations"] == [{"name": "ProfilerStep#3", "seconds": 10.0, "calls": 1}]
    host_only = window_summary([("step", "host", 0.0, 2.0)])
    assert host_only["device_busy_fraction"] is None and host_only["device_top"] == []
    assert host_only["device_idle_gaps"] == [] and host_only["device_kinds"] == {}


def test_kernels_are_sorted_into_kinds_by_name():
    names = {"cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26": "attention",
             "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NTT": "matmul",
             "sm90_xmma_gemm_bf16bf16_bf16f32": "matmul",
             "triton_poi_fused__to_copy_add_mul_neg_slice": "inductor_fused",
             "Memcpy DtoD (Device -> Device)": "copy",
             "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda": "copy",
             "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>": "elementwise",
             "void at::native::reduce_kernel<128, 4, at::native::ReduceOp<float>": "reduction",
             "ncclDevKernel_AllGather_RING_LL": "communication",
             "void cudnn::fusion::convert_dq_to_16bits<true>": "other"}
    assert {n: kernel_kind(n) for n in names} == names


def test_idle_gaps_cover_what_no_interval_covers():
    assert idle_gaps([], 0.0, 2.0) == [(0.0, 2.0)]
    assert idle_gaps([(1.0, 2.0), (1.5, 3.0)], 0.0, 4.0) == [(0.0, 1.0), (3.0, 1.0)]
    assert idle_gaps([(0.0, 4.0)], 0.0, 4.0) == []


def test_profiler_keys_are_cosmos_rls_and_unknown_ones_are_named(curated, tiny_model_dir, tmp_path):
    path = train_config(curated, tiny_model_dir, "profkeys")
    cfg = load_config(path, overrides={"profiler": {"enable_profiler": True, "sub_profiler_config": {
        "active_steps": 2, "wait_steps": 0, "warmup_steps": 1, "rank_filter": [0], "record_shape": True}}})
    sub = cfg.profiler.sub_profiler_config
    assert cfg.profiler.enable_profiler and (sub.active_steps, sub.wait_steps, sub.warmup_steps) == (2, 0, 1)
    with pytest.raises(ConfigError, match=r"profiler\.sub_profiler_config\.active_step"):
        load_config(path, overrides={"profiler": {"sub_profiler_config": {"active_step": 2}}})
    with pytest.raises(ConfigError, match="active_steps"):
        load_config(path, overrides={"profiler": {"sub_profiler_config": {"active_steps": 0}}})


def test_a_profiled_run_writes_the_chosen_step_and_trains_as_before(curated, tiny_model_dir):
    from avcap.train.loop import train

    runs = {}
    for name, enable in (("plain", False), ("profiled", True)):
        path = train_config(curated, tiny_model_dir, f"prof_{name}", per_rank=2)
        cfg = load_config(path, overrides={"train": {"max_num_steps": 3, "ckpt": {"enable_checkpoint": False}},
                                           "profiler": {"enable_profiler": enable, "sub_profiler_config": {
                                               "wait_steps": 1, "warmup_steps": 0, "active_steps": 1}}})
        lines: list[str] = []
        train(cfg, echo=lines.append)
        runs[name] = (cfg.resolve(cfg.train.output_dir), lines)

    out, lines = runs["profiled"]
    assert sorted(p.name for p in (out / "profile").iterdir()) == [
        "rank0_steps2-2.json.gz", "rank0_steps2-2.summary.json", "rank0_steps2-2.txt"]
    trace = json.loads(gzip.decompress((out / "profile" / "rank0_steps2-2.json.gz").read_bytes()))
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any("aten::" in n for n in names)  # the step's operators are in the trace
    summary = json.loads((out / "profile" / "rank0_steps2-2.summary.json").read_text())
    assert summary["steps"] == [2, 2] and summary["rank"] == 0 and summary["device"] == "cpu"
    assert 0 < summary["span_s"] <= log_of(out)[2]["step_time_s"] + 1.0
    assert summary["device_busy_fraction"] is None  # no GPU here
    assert "Self CPU" in (out / "profile" / "rank0_steps2-2.txt").read_text()
    assert sum(line.startswith("profile of steps 2-2 (rank 0): ") for line in lines) == 1
    assert not (runs["plain"][0] / "profile").exists()

    timing = {"tokens_per_s", "step_time_s", "data_wait_s"}
    plain, profiled = log_of(runs["plain"][0]), log_of(out)
    assert sorted(plain) == sorted(profiled) == [1, 2, 3]
    for step in plain:
        assert {k: v for k, v in plain[step].items() if k not in timing} == \
               {k: v for k, v in profiled[step].items() if k not in timing}


def test_a_window_past_the_run_says_so_at_start(curated, tiny_model_dir):
    from avcap.train.loop import train

    path = train_config(curated, tiny_model_dir, "prof_late", per_rank=2)
    cfg = load_config(path, overrides={"train": {"max_num_steps": 1, "ckpt": {"enable_checkpoint": False}},
                                       "profiler": {"enable_profiler": True}})  # wait 1, warm-up 1: step 3
    lines: list[str] = []
    train(cfg, echo=lines.append)
    out = cfg.resolve(cfg.train.output_dir)
    assert any(line.startswith("warning: [profiler]: steps 3-3 are profiled, but the run ends at step 1")
               for line in lines)
    assert not (out / "profile").exists()
