"""benchmarks/bench_multi_gpu.py: the recipe TOML it writes, its output checks and scaling arithmetic,
and the whole script end to end in --smoke (CPU, tiny model, gloo, 2 processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_multi_gpu.py"
SHARED_RECIPE = Path(__file__).resolve().parents[2] / "shared" / "recipe" / "uber_sft_blended.toml"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_multi_gpu")


def test_embedded_recipe_is_the_published_one(bench):
    if not SHARED_RECIPE.is_file():
        pytest.skip(f"{SHARED_RECIPE} is not here")
    assert bench.recipe_toml() == SHARED_RECIPE.read_text()


def test_sft_toml_changes_only_paths_and_sizes(bench, tmp_path):
    from avcap.core.config import load_config

    class A:
        steps, batch_per_gpu, mini_batch, workers = 3, 32, 4, 14
        compile, memory_budget, train_decoder, grad_checkpointing, profile_step = False, None, "cpu", True, 0
        master_dtype, mixed_precision, host_inputs, compile_tuning = None, "autocast", True, "default"

    class C:
        args, data_root = A, tmp_path / "data"

    values = bench.sft_values(C, 4, tmp_path / "run", tmp_path / "model")
    text = bench.edit_toml(bench.recipe_toml(), values)
    before, after = tomllib.loads(bench.recipe_toml()), tomllib.loads(text)

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    b, a = flat(before), flat(after)
    changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert changed == {"custom.dataset.dataset_root", "train.output_dir", "train.max_num_steps",
                       "train.train_policy.dataloader_num_workers", "train.ckpt.enable_checkpoint",
                       "policy.model_name_or_path", "policy.parallelism.dp_shard_size"}
    assert a["policy.parallelism.dp_shard_size"] == 4 and a["train.train_batch_per_replica"] == 32
    assert "# Per-GPU batch size" in text  # the recipe's lines and comments are kept
    path = tmp_path / "r.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.train.train_policy.mini_batch == 4 and cfg.policy.model_gradient_checkpointing
    assert set(bench.recipe_changes(values)) == changed

    class Compiled(A):  # --compile --memory-budget 0.5: the trainer's two speed keys, nothing else
        compile, memory_budget = True, 0.5

    C.args = Compiled
    cfg2 = tmp_path / "c.toml"
    cfg2.write_text(bench.edit_toml(bench.recipe_toml(), bench.sft_values(C, 4, tmp_path / "run", tmp_path / "model")))
    c = load_config(cfg2)
    assert c.train.compile and c.avcap.train.activation_memory_budget == 0.5

    class Profiled(A):  # --profile-step 6: cosmos-rl's [profiler] keys, rank 0, step 6 kept after a warm-up step
        profile_step = 6

    C.args = Profiled
    cfg3 = tmp_path / "p.toml"
    cfg3.write_text(bench.edit_toml(bench.recipe_toml(), bench.sft_values(C, 4, tmp_path / "run", tmp_path / "model")))
    p = load_config(cfg3).profiler
    sub = p.sub_profiler_config
    assert p.enable_profiler and (sub.wait_steps, sub.warmup_steps, sub.active_steps, sub.rank_filter) == (4, 1, 1, [0])

    class PlainInputs(A):  # --no-host-inputs: the A/B of avcap.train.host_inputs
        host_inputs = False

    C.args = PlainInputs
    cfg4 = tmp_path / "h.toml"
    cfg4.write_text(bench.edit_toml(bench.recipe_toml(), bench.sft_values(C, 4, tmp_path / "run", tmp_path / "model")))
    assert load_config(cfg4).avcap.train.host_inputs is False and load_config(path).avcap.train.host_inputs is True


def test_scaling_is_relative_to_the_smallest_k(bench):
    sc = bench.scaling({2: 1000.0, 4: 950.0, 8: 900.0, 1: None})
    assert sc == {"baseline_k": 2, "efficiency": {"2": 1.0, "4": 0.95, "8": 0.9}}
    assert bench.scaling({}) == {}
    order = bench.run_order(["sft", "caption"], [2, 4, 8], [1, 2, 4, 8])
    assert order[:4] == [("sft", 8), ("sft", 2), ("caption", 8), ("caption", 1)]
    assert sorted(order) == sorted({("sft", k) for k in (2, 4, 8)} | {("caption", k) for k in (1, 2, 4, 8)})


def write_jsonl(path: Path, keys: list[str], error_keys=()) -> None:
    path.write_text("".join(json.dumps({"key": k, **({"error": "x"} if k in error_keys else {})}) + "\n" for k in keys))


def test_caption_check_catches_missing_duplicated_and_misplaced_videos(bench, tmp_path):
    from avcap.eval.infer import task_file

    ids = [f"v{i}" for i in range(6)]
    for i in range(3):
        write_jsonl(task_file(tmp_path, "caption", 3, i), ids[i::3])
    write_jsonl(tmp_path / "caption.jsonl", ids)
    good = bench.verify_caption_outputs(tmp_path, ids, 3)
    assert good["ok"] and good["shard_sizes"] == [2, 2, 2]

    write_jsonl(tmp_path / "caption.jsonl", ids[:-1] + ["v0"])  # v5 missing, v0 twice
    bad = bench.verify_caption_outputs(tmp_path, ids, 3)
    assert not bad["ok"] and bad["missing"] == ["v5"] and bad["duplicates"] == ["v0"]

    write_jsonl(tmp_path / "caption.jsonl", ids, error_keys={"v2"})
    write_jsonl(task_file(tmp_path, "caption", 3, 1), ["v1", "v4", "v0"])  # v0 also in shard 0
    bad = bench.verify_caption_outputs(tmp_path, ids, 3)
    assert not bad["ok"] and bad["errors"] == ["v2"]
    assert any("shard 1" in p for p in bad["problems"]) and any("more than one shard" in p for p in bad["problems"])


@pytest.mark.slow
def test_smoke_runs_every_section_end_to_end(tmp_path, tiny_model_dir):
    """The whole script on CPU: synth clips, curate, SFT with --init-random under torchrun (1 and 2
    gloo processes), captioning under torchrun (1 and 2 shards) merged and checked, the report;
    then the same command again keeps every finished run."""
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--work", str(work), "--tiny-dir", str(tiny_model_dir)]
    env = {k: v for k, v in os.environ.items() if k not in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST",
                                                             "NVSHMEM_DISABLE_NVLS")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rep = json.loads((out / "bench_multi_gpu.json").read_text())
    assert rep["mode"] == "smoke" and rep["nccl_env"] == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                                                         "NVSHMEM_DISABLE_NVLS": "1"}
    assert rep["memory_estimate"]["by_gpus"]["8"]["fits"] and not rep["memory_estimate"]["by_gpus"]["1"]["fits"]

    sft = rep["sft"]["runs"]
    assert set(sft) == {"1", "2"}
    for k, r in sft.items():
        assert r["status"] == "ok" and r["steps_logged"] == 2 and r["steps_timed"] == 1 and r["ranks_reported"] == int(k)
        assert r["samples_per_step"] == 2 * int(k)  # the same per-GPU batch at every K
        assert r["tokens_per_s_per_gpu"] > 0 and r["tflops_per_s_per_gpu"] > 0
        assert len(r["peak_rss_gib_per_rank"]) == int(k) and r["memory_estimate_gib"]["total"] > 0
        assert r["children_env"] == rep["nccl_env"]  # the launched ranks had NVLink multicast off
        assert r["recipe_changes"]["policy.parallelism.dp_shard_size"] == [8, int(k)]
    eff = rep["sft"]["scaling"]
    assert eff["baseline_k"] == 1
    assert eff["efficiency"]["2"] == pytest.approx(sft["2"]["tokens_per_s_per_gpu"] / sft["1"]["tokens_per_s_per_gpu"], rel=1e-3)

    cap = rep["caption"]["runs"]
    assert set(cap) == {"1", "2"}
    for k, r in cap.items():
        assert r["status"] == "ok" and r["videos"] == 2 * int(k) and r["check"]["ok"] and r["videos_per_s"] > 0
        assert r["shards_timed"] == int(k)
    # the merged outputs on disk, read independently: every video of the first 4 ids exactly once
    merged = work / "caption/K2/outputs/bench/base/BENCH"
    keys = [json.loads(line)["key"] for line in (merged / "caption.jsonl").read_text().splitlines()]
    ids = sorted(p.stem for p in (work / "caption_set/names/videos").glob("*.mp4"))[:4]
    assert sorted(keys) == ids and len(set(keys)) == 4
    parts = [[json.loads(x)["key"] for x in (merged / f"caption.shard-{i:02d}-of-02.jsonl").read_text().splitlines()]
             for i in range(2)]
    assert sorted(parts[0] + parts[1]) == ids and not set(parts[0]) & set(parts[1])
    assert rep["caption"]["scaling"]["baseline_k"] == 1
    assert set(rep["targets"]) == {"sft_scaling_2_to_8", "sft_8b_fits_8_gpus", "caption_scaling"}
    assert all(t["met"] is None for t in rep["targets"].values())  # a smoke run measures nothing
    assert "every video once" in (out / "bench_multi_gpu_table.txt").read_text()

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO, check=False)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    rep2 = json.loads((out / "bench_multi_gpu.json").read_text())
    assert all(r.get("cached") for s in ("sft", "caption") for r in rep2[s]["runs"].values())
