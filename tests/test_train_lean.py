"""bf16 master weights (`[train] master_dtype`, avcap.train.optim): stochastic rounding is unbiased,
the AdamW is torch's on fp32 weights, a learning rate too small for bf16's resolution still moves bf16
weights (and moments) as fp32 ones move where round-to-nearest freezes them, "auto" picks fp32 when
the memory estimate fits and bf16 when not, and a bf16 run trains, checkpoints, resumes exactly and
refuses a resume that would change the master weights."""

from __future__ import annotations

import json

import pytest
import torch
from test_curate import write_config
from test_train import log_of, train_config, weights_of

from avcap.core.config import RECIPE_PATH, load_config
from avcap.train.optim import (
    StochasticRoundingAdamW,
    choose_master_dtype,
    sft_estimates,
    stochastic_round_bf16,
)

GIB = 2**30

# ----------------------------------------------------------------------------- stochastic rounding


def test_stochastic_rounding_is_unbiased_and_keeps_bf16_values():
    torch.manual_seed(0)
    # 1 + 2^-9 lies a quarter of a bf16 step (2^-7) above 1; the negative one 3/8 of a step below -1
    values = torch.tensor([1.0 + 2**-9, -(1.0 + 3 * 2**-10), 0.3, 123.456, -7e-20])
    n = 200_000
    out = stochastic_round_bf16(values.repeat(n, 1))
    assert out.dtype == torch.bfloat16
    for j, x in enumerate(values.tolist()):
        col = out[:, j].float()
        # only the two bf16 neighbours of x ever come out: x cut to bf16 (towards zero), one step further out
        bits = torch.tensor([x], dtype=torch.float32).view(torch.int32).bitwise_and(-65536)
        down, up = bits.view(torch.float32).item(), (bits + 65536).view(torch.float32).item()
        assert set(col.unique().tolist()) == {down, up}, x
        step = abs(up - down)
        # the mean is x: within 5 standard errors of a two-point draw (<= step / 2 / sqrt(n))
        assert abs(col.double().mean().item() - x) < 5 * step / 2 / n**0.5, x
    frac = (out[:, 0].float() == 1.0 + 2**-7).double().mean().item()
    assert frac == pytest.approx(0.25, abs=0.005)  # rounds up with probability 1/4
    exact = torch.tensor([1.0, -2.5, 0.0, 3.0e38, 1.5e-38]).bfloat16().float()
    for _ in range(20):  # values bf16 holds come back unchanged, every time
        assert torch.equal(stochastic_round_bf16(exact).float(), exact)
    with pytest.raises(TypeError):
        stochastic_round_bf16(exact.bfloat16())


def test_on_fp32_weights_it_is_torch_adamw():
    torch.manual_seed(0)
    shapes = [(13, 7), (50,), (3, 4, 5)]
    start = [torch.randn(s) for s in shapes]
    ref = [torch.nn.Parameter(x.clone()) for x in start]
    ours = [torch.nn.Parameter(x.clone()) for x in start]
    a = torch.optim.AdamW(ref, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1, foreach=False)
    b = StochasticRoundingAdamW(ours, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1, chunk=9)  # tensors in chunks
    for _ in range(6):
        grads = [torch.randn(s) for s in shapes]
        for params, opt in ((ref, a), (ours, b)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for p, q in zip(ref, ours):
        assert torch.equal(p, q)
        assert torch.equal(a.state[p]["exp_avg_sq"], b.state[q]["exp_avg_sq"])
    assert float(b.state[ours[0]]["step"]) == 6


def _run(params, opt, grad_of_step, steps):
    for k in range(steps):
        for p in params:
            p.grad = torch.full_like(p, grad_of_step(k))
        opt.step()


def test_a_learning_rate_below_bf16_resolution_still_moves_bf16_weights_like_fp32():
    """The recipe's situation: updates ~1/400 of a bf16 step. Round-to-nearest bf16 AdamW (torch's,
    cosmos-rl's master_dtype = "bfloat16") never moves; the stochastic-rounding one follows fp32."""
    torch.manual_seed(0)
    n, steps, lr = 4096, 3000, 1e-5  # constant gradient: Adam's step is lr per step, 1 -> 0.97
    fp32 = [torch.nn.Parameter(torch.ones(n))]
    nearest = [torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))]
    sr = [torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))]
    kw = dict(lr=lr, weight_decay=0.01)
    _run(fp32, torch.optim.AdamW(fp32, foreach=False, **kw), lambda k: 1.0, steps)
    _run(nearest, torch.optim.AdamW(nearest, foreach=False, **kw), lambda k: 1.0, steps)
    _run(sr, StochasticRoundingAdamW(sr, **kw), lambda k: 1.0, steps)
    ref = fp32[0][0].item()
    assert 1 - ref == pytest.approx(steps * lr, rel=0.02)  # fp32 moved ~0.03 (7.7 bf16 steps of 2^-8; decay 1 %)
    assert torch.equal(nearest[0].float(), torch.ones(n))  # round-to-nearest: frozen at 1.0
    w = sr[0].float()
    # per weight a random walk on the bf16 grid around the fp32 path: spread ~sqrt(drift * step) = 0.011,
    # so the mean of 4096 weights is within ~0.0002 of it
    assert abs(w.mean().item() - ref) < 1e-3
    assert w.std().item() > 2**-8 and len(w.unique()) > 3


def test_bf16_moments_decay_like_fp32_where_round_to_nearest_sticks():
    """exp_avg_sq with beta2 = 0.999 changes by 0.1 % a step, under half a bf16 step: rounded to
    nearest it can never decrease; rounded stochastically its mean follows fp32."""
    torch.manual_seed(0)
    n = 4096
    grad = lambda k: 1.0 if k < 200 else 0.0  # noqa: E731
    fp32 = [torch.nn.Parameter(torch.ones(n))]
    nearest = [torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))]
    sr = [torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))]
    opts = [torch.optim.AdamW(fp32, lr=1e-6, foreach=False), torch.optim.AdamW(nearest, lr=1e-6, foreach=False),
            StochasticRoundingAdamW(sr, lr=1e-6)]
    for params, opt in zip((fp32, nearest, sr), opts):
        _run(params, opt, grad, 200)
    peak_nearest = opts[1].state[nearest[0]]["exp_avg_sq"].float().clone()
    for params, opt in zip((fp32, nearest, sr), opts):
        _run(params, opt, lambda k: 0.0, 1000)
    v32 = opts[0].state[fp32[0]]["exp_avg_sq"][0].item()
    v_nearest = opts[1].state[nearest[0]]["exp_avg_sq"].float()
    v_sr = opts[2].state[sr[0]]["exp_avg_sq"].float()
    assert v32 < 0.5 * peak_nearest[0].item()  # fp32 decayed by 0.999^1000 = 0.37
    assert torch.equal(v_nearest, peak_nearest)  # round-to-nearest: stuck at its peak
    assert v_sr.mean().item() == pytest.approx(v32, rel=0.02)
    assert opts[2].state[sr[0]]["exp_avg_sq"].dtype == torch.bfloat16


# ----------------------------------------------------------------------------- "auto"


def test_auto_picks_fp32_when_the_estimate_fits_and_bf16_when_not(tiny_model_dir):
    from transformers import AutoConfig

    cfg = load_config(None)
    est = sft_estimates(AutoConfig.from_pretrained(tiny_model_dir), cfg, 1)
    assert est["bfloat16"] < est["float32"]
    roomy = choose_master_dtype("auto", estimates=est, capacity_bytes=est["float32"] * 1.01)
    assert roomy.dtype == "float32" and not roomy.line.startswith("warning")
    assert "fits this GPU" in roomy.line
    tight = choose_master_dtype("auto", estimates=est, capacity_bytes=(est["float32"] + est["bfloat16"]) / 2)
    assert tight.dtype == "bfloat16"
    assert tight.line.startswith("warning: [train] master_dtype = auto: bfloat16 master weights")
    assert f"~{round(est['float32'] / GIB, 1)} GiB" in tight.line and "\n" not in tight.line
    assert tight.record()["estimate_gib"] == {k: round(v / GIB, 1) for k, v in est.items()}
    # the decision is "auto"'s only: an explicit setting stands, CPU and non-bf16 compute keep fp32
    assert choose_master_dtype("float32", estimates=est, capacity_bytes=1).dtype == "float32"
    assert choose_master_dtype("bfloat16", estimates=None, capacity_bytes=None).dtype == "bfloat16"
    assert choose_master_dtype("auto", estimates=est, capacity_bytes=None).dtype == "float32"
    assert choose_master_dtype("auto", estimates=None, capacity_bytes=1).dtype == "float32"
    assert choose_master_dtype("auto", estimates=est, capacity_bytes=1, param_dtype="float16").dtype == "float32"


def test_auto_for_the_recipe_8b_one_h100_is_bf16_eight_h100s_fp32():
    from avcap.models.qwen3_vl.cost import realsize_config

    cfg = load_config(RECIPE_PATH)  # mini_batch 4, model_max_length 4096, nframes 16, 360000 pixels
    h100 = 81559 * 2**20  # nvidia-smi's memory.total of an H100 80GB HBM3
    one = sft_estimates(realsize_config("8B"), cfg, 1)
    assert one["float32"] > 140 * GIB  # 8.77B x 16 bytes before any activation
    assert choose_master_dtype("auto", estimates=one, capacity_bytes=h100).dtype == "bfloat16"
    eight = sft_estimates(realsize_config("8B"), cfg, 8)
    assert choose_master_dtype("auto", estimates=eight, capacity_bytes=h100).dtype == "float32"
    # bf16 master weights: half the bytes of weights, gradients and moments, no autocast weight cache
    from avcap.models.qwen3_vl.cost import Shape, sft_memory

    shape = Shape.from_config(realsize_config("8B"))
    kw = dict(gpus=1, micro_batch=4, seq_len=4096, video_patches=11248)
    fp32, bf16 = sft_memory(shape, **kw), sft_memory(shape, master_dtype="bfloat16", **kw)
    assert bf16.sharded_states == 8 * shape.total_params() == fp32.sharded_states / 2
    assert fp32.gathered_params == 2 * shape.total_params() and bf16.gathered_params == 0
    assert bf16.checkpoints == fp32.checkpoints and bf16.as_gib()["master_dtype"] == "bfloat16"


def test_config_master_dtype_values():
    from avcap.core.config import ConfigError

    assert load_config(RECIPE_PATH).train.master_dtype == "auto"  # the recipe does not set it
    with pytest.raises(ConfigError, match="master_dtype"):
        load_config(None, overrides={"train": {"master_dtype": "float16"}})
    with pytest.raises(ConfigError, match="param_dtype must be"):
        load_config(None, overrides={"train": {"master_dtype": "bfloat16", "param_dtype": "float32"}})


# ----------------------------------------------------------------------------- training runs


def lean_config(curated, tiny_model_dir, name: str, master: str = "bfloat16"):
    path = train_config(curated, tiny_model_dir, name, per_rank=2, workers=0)
    return write_config(path, path.read_text().replace("[train]\n", f'[train]\nmaster_dtype = "{master}"\n', 1))


@pytest.fixture(scope="module")
def lean_run(curated, tiny_model_dir):
    """4 steps (global batch 2, 2 epochs) with bf16 master weights; checkpoints at 2 and 4."""
    from avcap.train.loop import train

    cfg = load_config(lean_config(curated, tiny_model_dir, "lean"))
    lines: list[str] = []
    written = train(cfg, echo=lines.append)
    return cfg.resolve(cfg.train.output_dir), written, lines


def test_bf16_master_weights_train_and_checkpoint_in_bf16(lean_run, tiny_model_dir):
    from safetensors.torch import load_file

    out, written, lines = lean_run
    assert [p.name for p in written] == ["step_2", "step_4"]
    assert any(line.startswith("[train] master_dtype = bfloat16: bfloat16 master weights") for line in lines)
    log = log_of(out)
    assert sorted(log) == [1, 2, 3, 4] and {r["master_dtype"] for r in log.values()} == {"bfloat16"}
    assert log[3]["loss"] + log[4]["loss"] < log[1]["loss"] + log[2]["loss"]  # it learns
    ckpt = out / "checkpoints/step_4"
    state = json.loads((ckpt / "avcap_train_state.json").read_text())
    assert state["master_dtype"] == "bfloat16" and state["master_dtype_choice"]["setting"] == "bfloat16"
    trained = weights_of(ckpt)
    assert {v.dtype for v in trained.values() if v.is_floating_point()} == {torch.bfloat16}
    start = load_file(tiny_model_dir / "model.safetensors")
    moved = [k for k in trained if k in start and not torch.equal(trained[k].float(), start[k].float())]
    assert len(moved) > len(trained) // 2
    blob = torch.load(ckpt / state["optimizer_file"], map_location="cpu", weights_only=False)
    moments = [s[k] for s in blob["optimizer"]["state"].values() for k in ("exp_avg", "exp_avg_sq")]
    assert moments and {m.dtype for m in moments} == {torch.bfloat16}


def test_bf16_resume_after_interruption_equals_uninterrupted_run(lean_run, curated, tiny_model_dir, monkeypatch):
    import avcap.train.loop as tr
    from avcap.train.loop import train

    full_out, _, _ = lean_run
    cfg = load_config(lean_config(curated, tiny_model_dir, "lean-resumed"))
    out = cfg.resolve(cfg.train.output_dir)
    real_step = tr.Logger.step

    def log_then_die(self, rec):
        real_step(self, rec)
        if rec["step"] == 3:
            raise KeyboardInterrupt  # after step 3, before its checkpoint (step 4)

    monkeypatch.setattr(tr.Logger, "step", log_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, echo=lambda s: None)
    monkeypatch.setattr(tr.Logger, "step", real_step)
    lines: list[str] = []
    assert [p.name for p in train(cfg, echo=lines.append)] == ["step_4"]
    assert any(line.startswith("resuming from") and "step 2/4" in line for line in lines)
    full, resumed = log_of(full_out), log_of(out)
    for step in (1, 2, 3, 4):
        assert resumed[step]["batch"] == full[step]["batch"]
        assert resumed[step]["loss"] == full[step]["loss"]
    a, b = weights_of(full_out / "checkpoints/step_4"), weights_of(out / "checkpoints/step_4")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same random roundings too


def test_a_resume_that_changes_the_master_weights_is_refused_in_one_line(lean_run, curated, tiny_model_dir):
    from typer.testing import CliRunner

    from avcap.cli import app

    out, _, _ = lean_run
    before = (out / "train_log.jsonl").read_text()
    for master in ("float32", "auto"):  # auto on a CPU: fp32
        cfg = lean_config(curated, tiny_model_dir, "lean", master=master)
        res = CliRunner().invoke(app, ["train", "--config", str(cfg)])
        assert res.exit_code == 2, res.output
        errors = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "step_4 was trained with bfloat16 master weights" in errors[0]
        assert f'master_dtype = {master} gives float32' in errors[0] and 'set master_dtype = "bfloat16"' in errors[0]
    assert (out / "train_log.jsonl").read_text() == before  # nothing touched


@pytest.mark.slow
def test_two_process_fsdp_bf16_master_weights_follow_one_process(lean_run, curated, tiny_model_dir):
    """torchrun, 2 CPU processes, FSDP2 over gloo with bf16 master weights: each rank updates its
    shards with its own random roundings, so the run equals the 1-process one up to bf16 noise; the
    checkpoint gathers bf16 weights and moments."""
    import os
    import subprocess
    import sys

    full_out, _, _ = lean_run
    cfg_path = train_config(curated, tiny_model_dir, "lean-ddp2", per_rank=1, workers=0)
    cfg_path.write_text(cfg_path.read_text().replace("[train]\n", '[train]\nmaster_dtype = "bfloat16"\n', 1))
    out = load_config(cfg_path).resolve("runs/lean-ddp2")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "avcap.train", "--config", str(cfg_path)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 2 x cpu" in proc.stdout and "master_dtype = bfloat16" in proc.stdout
    full, two = log_of(full_out), log_of(out)
    for step in (1, 2, 3, 4):
        assert two[step]["batch"] == full[step]["batch"] and two[step]["master_dtype"] == "bfloat16"
        assert two[step]["loss"] == pytest.approx(full[step]["loss"], rel=2e-3)  # step 1: equal; then ~2e-4
    a, b = weights_of(full_out / "checkpoints/step_4"), weights_of(out / "checkpoints/step_4")
    assert a.keys() == b.keys() and all(b[k].dtype == torch.bfloat16 for k in b)
    rel = max(((a[k].float() - b[k].float()).norm() / a[k].float().norm().clamp_min(1e-12)).item() for k in a)
    assert rel < 0.05  # 0.009 measured
    state = json.loads((out / "checkpoints/step_4/avcap_train_state.json").read_text())
    blob = torch.load(out / "checkpoints/step_4" / state["optimizer_file"], map_location="cpu", weights_only=False)
    assert {s["exp_avg_sq"].dtype for s in blob["optimizer"]["state"].values()} == {torch.bfloat16}


def test_bench_sft_8b_dry_run_changes_only_paths_and_sizes(tmp_path):
    """benchmarks/bench_sft_8b.py --tiny (CPU, tiny model): the recipe's TOML with paths and sizes
    changed, `avcap train --init-random` end to end, the report's master weights and rates."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sft_8b.py"
    proc = subprocess.run([sys.executable, str(script), "--tiny", "--master-dtype", "bfloat16", "--out", str(tmp_path),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench_sft_8b.json").read_text())
    t = report["train"]
    assert t["status"] == "ok" and t["steps_logged"] == 2 and t["master_dtype"] == ["bfloat16"]
    assert t["master_dtype_line"].startswith("[train] master_dtype = bfloat16: bfloat16 master weights")
    assert t["tokens_per_s"] > 0 and len(t["step_time_s"]) == 2
    assert set(report["recipe_changes"]) <= {
        "custom.dataset.dataset_root", "train.output_dir", "train.max_num_steps", "train.epoch",
        "train.train_policy.dataloader_num_workers", "train.ckpt.enable_checkpoint", "policy.model_name_or_path",
        "policy.parallelism.dp_shard_size", "train.train_batch_per_replica", "train.train_policy.mini_batch",
        "train.master_dtype"}
    assert (tmp_path / "bench_sft_8b_train.log").is_file() and (tmp_path / "bench_sft_8b.log").is_file()
