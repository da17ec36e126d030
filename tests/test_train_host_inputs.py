"""avcap.train.host_inputs: a training forward with the positions and vision inputs computed on
the host gives the plain forward's loss and gradients bit for bit, and says when it is off."""

from __future__ import annotations

import copy

import pytest
import torch
from test_train import log_of, train_config

from avcap.core.config import load_config
from avcap.models.qwen3_vl import compile as qcompile
from avcap.models.qwen3_vl.compile import pack_vision_attention
from avcap.train.host_inputs import HostInputs
from avcap.train.loop import micro_batch_loss


def _loss_and_grads(model, batch, host):
    model.zero_grad(set_to_none=True)
    loss, n = micro_batch_loss(model, batch, "cpu", slice_logits=True, host=host)
    (loss / n).backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("packed", [False, True], ids=["library-attention", "packed-attention"])
def test_host_inputs_give_the_plain_loss_and_gradients_bit_for_bit(model_and_batches, packed):
    base, same, mixed = model_and_batches
    model = copy.deepcopy(base)
    if packed:
        pack_vision_attention(model)
    host = HostInputs(model)
    if not host.on:  # transformers before 5.17: no vision helpers (the next test checks it says so)
        pytest.skip(f"host inputs off: {host.error}")
    for batch in (same, mixed):  # one video size; two sizes (unequal attention groups)
        plain_loss, plain_grads = _loss_and_grads(model, batch, None)
        host_loss, host_grads = _loss_and_grads(model, batch, host)
        assert torch.equal(host_loss, plain_loss)
        assert plain_grads.keys() == host_grads.keys() and any(k.startswith("model.visual") for k in plain_grads)
        assert all(torch.equal(host_grads[k], g) for k, g in plain_grads.items())
    assert host.used == 2 and host.fallbacks == {}
    assert host.record() == {"on": True, "micro_batches": 2, "fallbacks": {}}
    assert host.record()["micro_batches"] == 0  # per step: counted since the last record


def test_the_host_forward_derives_nothing_from_the_grid_on_the_device(model_and_batches, monkeypatch):
    """The forward gets its mRoPE positions (the model's own get_rope_index is not called inside it),
    the vision tower its precomputed inputs with the attention runs already known (the packed
    attention never reads cu_seqlens back), and the grid stays on the host."""
    base, _, mixed = model_and_batches
    model = copy.deepcopy(base)
    pack_vision_attention(model)
    host = HostInputs(model)
    if not host.on:
        pytest.skip(f"host inputs off: {host.error}")
    inputs = {k: v for k, v in mixed.items() if k in ("input_ids", "pixel_values_videos", "video_grid_thw",
                                                      "mm_token_type_ids")}
    kwargs, context = host.prepare(mixed, inputs, "cpu")
    assert kwargs["position_ids"].shape[0] == 3 and kwargs["video_grid_thw"].device.type == "cpu"
    expected, _ = model.model.get_rope_index(mixed["input_ids"], video_grid_thw=mixed["video_grid_thw"],
                                             **({"mm_token_type_ids": mixed["mm_token_type_ids"]} if host._types_kw else {}))
    assert torch.equal(kwargs["position_ids"], expected)
    seen = {}

    def no_rope(*a, **kw):
        raise AssertionError("get_rope_index called inside the forward")

    def recorded_runs(cu_seqlens):
        seen["remembered"] = getattr(cu_seqlens, qcompile._LENGTHS_ATTR, None) is not None
        return real_runs(cu_seqlens)

    real_runs = qcompile._runs_of
    monkeypatch.setattr(model.model, "get_rope_index", no_rope)
    monkeypatch.setattr(qcompile, "_runs_of", recorded_runs)
    with torch.no_grad(), context:
        out = model(**kwargs, use_cache=False)
    assert torch.isfinite(out.logits).all() and seen == {"remembered": True}


def test_text_only_micro_batches_and_switched_off_runs_use_the_plain_forward(model_and_batches, monkeypatch):
    base, same, _ = model_and_batches
    text = {k: v for k, v in same.items() if k not in ("pixel_values_videos", "video_grid_thw")}
    host = HostInputs(base)
    kwargs, _ = host.prepare(text, {"input_ids": text["input_ids"]}, "cpu")
    assert kwargs == {"input_ids": text["input_ids"]} and host.used == 0 and host.fallbacks == {}
    off = HostInputs(base, enabled=False)
    assert not off.on and off.prepare(same, {"x": 1}, "cpu")[0] == {"x": 1}
    assert off.record()["off_because"] == "[avcap.train] host_inputs = false"
    from avcap.models.qwen3_vl import host_vision

    monkeypatch.setattr(host_vision, "_helpers", lambda: None)  # a transformers without the helpers (< 5.17)
    old = HostInputs(base)
    assert not old.on and "lacks the transformers.vision_utils helpers" in old.error


def test_training_logs_host_inputs_and_false_trains_the_same(curated, tiny_model_dir, uninterrupted):
    """The run's log says host inputs were used for its micro-batches; the same run with
    `host_inputs = false` logs the same losses and gradient norms exactly."""
    from avcap.train.loop import train

    out, _, lines = uninterrupted
    logged = log_of(out)
    if logged[1]["host_inputs"]["on"]:
        assert all(r["host_inputs"]["on"] and r["host_inputs"]["fallbacks"] == {} for r in logged.values())
        assert all(r["host_inputs"]["micro_batches"] > 0 for r in logged.values())  # this step's
        assert any("positions and vision inputs from the host" in line for line in lines)
    else:  # transformers before 5.17: said at the start, every record says why
        reason = logged[1]["host_inputs"]["off_because"]
        assert "vision_utils" in reason and any(f"from the GPU ({reason})" in line for line in lines)
    cfg = load_config(train_config(curated, tiny_model_dir, "full_no_host", per_rank=2, workers=1, gc=True),
                      overrides={"avcap": {"train": {"host_inputs": False}}})
    off_lines: list[str] = []
    train(cfg, echo=off_lines.append)
    off = log_of(cfg.resolve(cfg.train.output_dir))
    assert [(r["loss"], r["grad_norm"]) for r in off.values()] == [(r["loss"], r["grad_norm"]) for r in logged.values()]
    assert all(not r["host_inputs"]["on"] for r in off.values())
    assert any("from the GPU ([avcap.train] host_inputs = false)" in line for line in off_lines)


def test_host_work_runs_on_one_cpu_thread_and_gives_the_threads_back():
    from avcap.models.qwen3_vl.host_vision import one_cpu_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(ValueError):
            with one_cpu_thread():
                assert torch.get_num_threads() == 1
                raise ValueError("a failing micro-batch")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_overlapping_host_work_in_two_threads_gives_the_count_back_once_both_leave():
    import threading

    from avcap.models.qwen3_vl.host_vision import one_cpu_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def a():
        with one_cpu_thread():
            a_in.set()
            b_in.wait()
        a_out.set()

    def b():
        a_in.wait()
        with one_cpu_thread():  # enters while a is inside: must not take 1 as the count to restore
            b_in.set()
            a_out.wait()
            seen.append(torch.get_num_threads())  # a left, b is still inside: 1
    try:
        ta, tb = threading.Thread(target=a), threading.Thread(target=b)
        ta.start(), tb.start()
        ta.join(), tb.join()
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
