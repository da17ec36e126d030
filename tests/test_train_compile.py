"""avcap.models.qwen3_vl.compile (`[train] compile = true`): packed vision attention equals transformers'
per-frame loop; regionally compiled blocks give the eager losses and gradients over AdamW steps."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from avcap.models.qwen3_vl.compile import (
    block_modules,
    compile_blocks,
    equal_length_runs,
    pack_vision_attention,
)


def test_equal_length_runs():
    assert equal_length_runs([4, 4, 4]) == [(0, 4, 3)]
    assert equal_length_runs([3, 3, 0, 3, 2, 2, 5]) == [(0, 3, 3), (9, 2, 2), (13, 5, 1)]
    assert equal_length_runs([2, 5, 2]) == [(0, 2, 1), (2, 5, 1), (7, 2, 1)]
    assert equal_length_runs([]) == []


# `model_and_batches` (the tiny model with larger random weights and two video micro-batches) is a
# session fixture of conftest.py, shared with test_train_host_inputs.py: the tests train deep copies of it.


def _grid_lengths(batch):
    g = batch["video_grid_thw"]
    return [int(h * w) for t, h, w in g.tolist() for _ in range(t)]


def test_packed_vision_attention_equals_the_per_frame_loop(model_and_batches):
    from avcap.train.loop import micro_batch_loss

    base, same, mixed = model_and_batches
    assert len(set(_grid_lengths(same))) == 1 and len(set(_grid_lengths(mixed))) == 2
    packed = copy.deepcopy(base)
    assert pack_vision_attention(packed) == len(packed.model.visual.blocks)
    assert pack_vision_attention(packed) == 0  # idempotent
    for batch in (same, mixed):
        losses, grads = [], []
        for m in (base, packed):
            m.zero_grad(set_to_none=True)
            loss, n = micro_batch_loss(m, batch, "cpu", slice_logits=True)
            (loss / n).backward()
            losses.append(float(loss))
            grads.append(torch.cat([p.grad.flatten() for p in m.model.visual.parameters() if p.grad is not None]))
        assert losses[1] == pytest.approx(losses[0], rel=1e-5)
        assert torch.linalg.vector_norm(grads[1] - grads[0]) <= 1e-4 * torch.linalg.vector_norm(grads[0])


def _merged(out):
    """The vision tower's merged output: a tuple's first item (transformers 4.5x), `pooler_output` (5.x)."""
    return out[0] if isinstance(out, tuple) else out.pooler_output


def test_in_inference_a_vision_block_is_one_graph_with_the_same_output(model_and_batches):
    """Without gradients the packed attention is an operator inside the block's graph (no graph
    break: one compiled frame for every vision block instead of four or five), the output equals
    transformers' per-frame loop, and the runs are read from `cu_seqlens` once per forward."""
    import avcap.models.qwen3_vl.compile as compile_module

    base, same, mixed = model_and_batches
    compiled = copy.deepcopy(base).eval()
    compile_blocks(compiled, backend="inductor", linear_patch_embed=False)
    reads = []
    real = compile_module.remember_runs
    for batch in (same, mixed):
        px, grid = batch["pixel_values_videos"], batch["video_grid_thw"]
        with torch.no_grad():
            want = _merged(base.model.visual(px, grid_thw=grid))
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(compile_module, "remember_runs", lambda cu, host: reads.append(1) or real(cu, host))
                got = _merged(compiled.model.visual(px, grid_thw=grid))
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
        assert dict(torch._dynamo.utils.counters["stats"])["unique_graphs"] == 1
        assert not torch._dynamo.utils.counters["graph_break"]
    assert len(reads) == 2  # once per forward, not once per block


def _train_steps(model, batches, steps: int):
    from avcap.train.loop import micro_batch_loss

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    losses, norms = [], []
    for step in range(steps):
        batch = batches[step % len(batches)]
        loss, n = micro_batch_loss(model, batch, "cpu", slice_logits=True)
        (loss / n).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        losses.append(float(loss.detach()) / n)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, norms, [p.detach().clone() for p in model.parameters()]


def _compare(backend: str, model_and_batches, steps: int = 3, budget: float | None = None):
    base, same, mixed = model_and_batches
    eager, compiled = copy.deepcopy(base), copy.deepcopy(base)
    for m in (eager, compiled):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch._dynamo.reset()
    counts = compile_blocks(compiled, backend=backend, activation_memory_budget=budget)
    assert all(b.gradient_checkpointing == (budget is None) for b in block_modules(compiled))
    assert counts == {type(b).__name__: sum(type(x) is type(b) for x in block_modules(base)) for b in block_modules(base)}
    assert compile_blocks(compiled, backend=backend) == {}  # already compiled: left alone
    batches = [same, mixed]
    le, ne, pe = _train_steps(eager, batches, steps)
    lc, nc, pc = _train_steps(compiled, batches, steps)
    assert le[0] > le[-1]  # the steps train
    assert lc == pytest.approx(le, rel=1e-4)
    assert nc == pytest.approx(ne, rel=1e-3)
    # the weights after the steps: the two runs' difference is tiny beside what the steps changed (Adam
    # normalises each gradient, so rounding in near-zero gradients moves single weights by up to ~lr)
    p0 = torch.cat([p.detach().flatten() for p in base.parameters()])
    pc, pe = torch.cat([p.flatten() for p in pc]), torch.cat([p.flatten() for p in pe])
    assert torch.linalg.vector_norm(pc - pe) <= 1e-2 * torch.linalg.vector_norm(pe - p0)
    assert compiled.model.visual.patch_embed._avcap_linear  # the patch embedding ran as one GEMM


@pytest.fixture
def default_memory_budget():
    import torch._functorch.config as functorch_config

    before = functorch_config.activation_memory_budget
    yield
    functorch_config.activation_memory_budget = before


def test_compiled_blocks_match_eager_aot_eager(model_and_batches):
    """Dynamo capture of every block (graph break around the packed attention), AOTAutograd's
    backward through gradient checkpointing, no code generation: fast."""
    _compare("aot_eager", model_and_batches)


def test_compile_tuning_is_one_of_inductors_searches(model_and_batches):
    """[avcap.train] compile_tuning: an unknown choice is refused before anything compiles; the
    config accepts only the choices compile_blocks knows."""
    from avcap.core.config import AvcapTrain
    from avcap.models.qwen3_vl.compile import TUNING

    with pytest.raises(ValueError, match="compile tuning 'fastest'"):
        compile_blocks(copy.deepcopy(model_and_batches[0]), tuning="fastest")
    assert set(AvcapTrain.model_fields["compile_tuning"].annotation.__args__) == set(TUNING)
    with pytest.raises(ValueError):
        AvcapTrain(compile_tuning="fastest")


def test_memory_budget_replaces_checkpointing(model_and_batches, default_memory_budget):
    """[avcap.train] activation_memory_budget: block checkpointing off, the partitioner's budget set."""
    import torch._functorch.config as functorch_config

    with pytest.raises(ValueError, match="activation_memory_budget"):
        compile_blocks(copy.deepcopy(model_and_batches[0]), activation_memory_budget=1.5)
    _compare("aot_eager", model_and_batches, steps=2, budget=0.5)
    assert functorch_config.activation_memory_budget == 0.5


def _cxx_compiler() -> str | None:
    return shutil.which("c++") or shutil.which("g++") or shutil.which("gcc") or shutil.which("clang")


@pytest.mark.slow
@pytest.mark.skipif(_cxx_compiler() is None, reason="inductor needs a C++ compiler on CPU (none on PATH)")
def test_compiled_blocks_match_eager_inductor(model_and_batches):
    """What `[train] compile = true` runs (inductor); ~40 s of compilation on a 2-core CPU."""
    _compare("inductor", model_and_batches)


@pytest.mark.slow
@pytest.mark.skipif(_cxx_compiler() is None, reason="inductor needs a C++ compiler on CPU (none on PATH)")
def test_compiled_blocks_with_memory_budget_match_eager_inductor(model_and_batches, default_memory_budget):
    _compare("inductor", model_and_batches, steps=2, budget=0.5)


@pytest.mark.slow
@pytest.mark.skipif(_cxx_compiler() is None, reason="inductor needs a C++ compiler on CPU (none on PATH)")
def test_avcap_train_with_compile_logs_the_eager_losses(curated, tiny_model_dir, default_memory_budget, monkeypatch):
    """`avcap train` end to end with [train] compile = true and a memory budget: the losses and
    gradient norms of the run without, step for step (CPU, fp32)."""
    from test_train import log_of, train_config

    import avcap.models.qwen3_vl.compile as compile_module
    from avcap.core.config import load_config
    from avcap.train.loop import train

    calls = []
    real = compile_module.compile_blocks
    monkeypatch.setattr(compile_module, "compile_blocks", lambda model, **kw: calls.append(kw) or real(model, **kw))
    runs = {}
    for name, over in (("eager", {}), ("compiled", {"train": {"compile": True},
                                                     "avcap": {"train": {"activation_memory_budget": 0.5,
                                                                         "compile_tuning": "kernels"}}})):
        path = train_config(curated, tiny_model_dir, f"compile_{name}", per_rank=2, gc=True)
        cfg = load_config(path, overrides={**over, "train": {**over.get("train", {}), "max_num_steps": 2}})
        assert cfg.train.compile == (name == "compiled")
        train(cfg, echo=lambda s: None)
        runs[name] = log_of(cfg.resolve(cfg.train.output_dir))
    assert calls == [{"activation_memory_budget": 0.5, "tuning": "kernels"}]
    assert sorted(runs["eager"]) == sorted(runs["compiled"]) == [1, 2]
    for step in (1, 2):
        assert runs["compiled"][step]["loss"] == pytest.approx(runs["eager"][step]["loss"], rel=1e-4)
        assert runs["compiled"][step]["grad_norm"] == pytest.approx(runs["eager"][step]["grad_norm"], rel=1e-3)


def test_train_compile_on_cpu_without_a_compiler_is_a_clear_error(curated, tiny_model_dir, monkeypatch):
    from test_train import train_config

    from avcap.core.config import load_config
    from avcap.train.loop import TrainError, train

    path = train_config(curated, tiny_model_dir, "compile_no_cxx", per_rank=2, gc=True)
    cfg = load_config(path, overrides={"train": {"compile": True, "max_num_steps": 1}})
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(TrainError, match=r"\[train\] compile = true on the CPU needs a C\+\+ compiler"):
        train(cfg, echo=lambda s: None)
