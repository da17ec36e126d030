"""`[avcap.train] mixed_precision = "copy"` (avcap.train.precision): a param_dtype copy computes, the
fp32 masters take the summed gradients, the optimizer and checkpoints see only the masters, and a
resumed run equals an uninterrupted one. On CPU with bf16 (the tiny model)."""

from __future__ import annotations

import pytest
import torch
from test_train import log_of, train_config, weights_of
from test_train_compile import default_memory_budget  # noqa: F401  (a fixture)

from avcap.core.config import load_config
from avcap.train.precision import ComputeCopy


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 8)
        self.mid = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 11, bias=False)
        self.out.weight = self.emb.weight  # tied, as transformers ties word embeddings and lm_head

    def forward(self, ids):
        return self.out(torch.tanh(self.mid(self.emb(ids))))


def test_the_copy_computes_and_the_masters_sum_its_gradients_in_fp32():
    torch.manual_seed(0)
    model = Tied()
    masters = list(model.parameters())
    assert len(masters) == 3 + 0  # the tied weight once: emb/out, mid.weight, mid.bias
    copy = ComputeCopy(model, torch.bfloat16)
    assert copy.masters == masters and all(p.dtype == torch.float32 for p in masters)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.out.weight is model.emb.weight  # still tied, to one copy

    grads = []  # each backward's bf16 gradients, as autograd gives them to the copies
    for ids in (torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5, 6]])):
        model(ids).float().logsumexp(-1).sum().backward()
        grads.append([m.grad.clone() for m in masters])
    assert all(c.grad is None for c in copy.copies)  # moved to the masters as soon as accumulated
    # the masters' gradients are fp32 sums; the first backward's equals its bf16 gradient exactly
    assert all(m.grad.dtype == torch.float32 for m in masters)
    first = grads[0]
    assert all(torch.equal(g, g.bfloat16().float()) for g in first)

    opt = torch.optim.SGD(masters, lr=0.1)
    before = [m.detach().clone() for m in masters]
    opt.step()
    assert any(not torch.equal(b, m) for b, m in zip(before, masters))
    copy.refresh()
    assert all(torch.equal(c, m.detach().bfloat16()) for c, m in zip(copy.copies, masters))

    with copy.masters_installed():  # what a checkpoint saves and loads
        assert all(p.dtype == torch.float32 for p in model.parameters())
        sd = model.state_dict()
        assert torch.equal(sd["mid.weight"], masters[1].detach())
        with torch.no_grad():
            masters[1].add_(1.0)  # a load changes the masters ...
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.equal(model.mid.weight, masters[1].detach().bfloat16())  # ... and the copies follow


def _run(curated, tiny_model_dir, name: str, mode: str, steps: int = 2, budget=None, **train):
    from avcap.train.loop import train as run_train

    path = train_config(curated, tiny_model_dir, name, per_rank=2)
    avcap_train = {"mixed_precision": mode, **({"activation_memory_budget": budget} if budget else {})}
    cfg = load_config(path, overrides={"train": {"max_num_steps": steps, "ckpt": {"save_freq": 1}, **train},
                                       "avcap": {"train": avcap_train}})
    lines: list[str] = []
    run_train(cfg, echo=lines.append)
    return cfg, cfg.resolve(cfg.train.output_dir), lines


@pytest.fixture(scope="module")
def both(curated, tiny_model_dir):
    return {mode: _run(curated, tiny_model_dir, f"mp_{mode}", mode) for mode in ("autocast", "copy")}


def test_a_copy_run_logs_its_mode_and_stays_near_the_fp32_run(both):
    _, out_ref, _ = both["autocast"]
    _, out, lines = both["copy"]
    ref, log = log_of(out_ref), log_of(out)
    assert [r["mixed_precision"] for r in log.values()] == ["copy", "copy"]
    assert [r["mixed_precision"] for r in ref.values()] == ["float32", "float32"]  # CPU: no autocast
    assert any("computing with copy ([avcap.train] mixed_precision)" in line for line in lines)
    for step in (1, 2):  # the same samples; bf16 compute within bf16 tolerance of fp32
        assert log[step]["batch"] == ref[step]["batch"]
        assert log[step]["loss"] == pytest.approx(ref[step]["loss"], rel=2e-2)
        assert log[step]["grad_norm"] == pytest.approx(ref[step]["grad_norm"], rel=5e-2)


def test_a_copy_run_saves_its_fp32_masters(both):
    _, out, _ = both["copy"]
    w = weights_of(out / "checkpoints/step_2")
    assert {t.dtype for t in w.values()} == {torch.float32}
    # the masters, not the bf16 copies: trained values that bf16 cannot hold exactly
    assert any(not torch.equal(t, t.bfloat16().float()) for t in w.values())
    first = weights_of(out / "checkpoints/step_1")
    assert any(not torch.equal(first[k], w[k]) for k in w)


def test_a_resumed_copy_run_equals_the_uninterrupted_one(both, curated, tiny_model_dir):
    import shutil

    cfg, out_full, _ = both["copy"]
    out = out_full.parent / "mp_copy_resumed"
    shutil.rmtree(out, ignore_errors=True)
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(out_full / "checkpoints/step_1", out / "checkpoints/step_1")
    _, out2, lines = _run(curated, tiny_model_dir, "mp_copy_resumed_cfg", "copy", output_dir=str(out))
    assert out2 == out and any(line.startswith("resuming from") for line in lines)
    full, resumed = weights_of(out_full / "checkpoints/step_2"), weights_of(out / "checkpoints/step_2")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert log_of(out)[2]["loss"] == log_of(out_full)[2]["loss"]


def test_a_compiled_copy_run_with_a_memory_budget_trains_like_the_eager_copy(both, curated, tiny_model_dir,
                                                                             default_memory_budget):  # noqa: F811
    """The combination the GPU runs: compiled blocks, selective recompute, the bf16 copy and its hooks."""
    _, out, _ = _run(curated, tiny_model_dir, "mp_copy_compiled", "copy", budget=0.5, compile=True)
    eager, compiled = log_of(both["copy"][1]), log_of(out)
    for step in (1, 2):
        assert compiled[step]["mixed_precision"] == "copy"
        assert compiled[step]["loss"] == pytest.approx(eager[step]["loss"], rel=2e-2)
        assert compiled[step]["grad_norm"] == pytest.approx(eager[step]["grad_norm"], rel=5e-2)
