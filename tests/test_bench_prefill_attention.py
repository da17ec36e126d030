"""benchmarks/bench_prefill_attention.py on the CPU (`--smoke`): every case runs forward and, for
training cases, backward; each backend's output and gradients are compared with torch's choice."""

from __future__ import annotations

import json

from conftest import load_benchmark


def _bench():
    return load_benchmark("bench_prefill_attention")


def test_smoke_times_every_case_and_compares_backends(tmp_path):
    bench = _bench()
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    blob = json.loads((tmp_path / "bench_prefill_attention.json").read_text())
    rows = blob["rows"]
    assert {r["case"] for r in rows} == set(bench.SMOKE)
    assert all("error" not in r and r["forward_s"] > 0 and r["forward_backward_s"] > 0 for r in rows)
    compared = [r for r in rows if r["backend"] != "torch's choice"]
    assert compared and all(r["max_diff_out"] < 1e-5 and r["max_diff_grad"] < 1e-5 for r in compared)
    assert "vision_2B_train" in (tmp_path / "bench_prefill_attention_table.txt").read_text()


def test_flops_count_half_the_square_when_causal():
    bench = _bench()
    full = bench.flops((2, 10, 4, 4, 8, False, True))
    causal = bench.flops((2, 10, 4, 4, 8, True, True))
    assert full == (4.0 * 2 * 4 * 10 * 10 * 8, 2.5 * 4.0 * 2 * 4 * 10 * 10 * 8)
    assert causal == (full[0] / 2, full[1] / 2)
