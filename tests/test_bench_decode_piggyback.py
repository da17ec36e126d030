"""benchmarks/bench_decode_piggyback.py: its pure parts, and a CPU smoke run of the script."""

from __future__ import annotations

import json

from conftest import load_benchmark

pig = load_benchmark("bench_decode_piggyback")


def test_free_tokens_stop_at_the_first_chunk_over_the_line():
    ms = {0: 1.0, 32: 1.01, 64: 1.04, 128: 1.2, 256: 1.03}
    assert pig.free_tokens(ms, 0.05) == 64  # 256 is under the line again, but 128 ended the search
    assert pig.free_tokens({0: 1.0, 32: 1.5}, 0.05) == 0


def test_layer_shapes_are_the_8b_text_layer():
    from avcap.models.qwen3_vl.cost import ARCHS

    shapes = pig.layer_shapes(ARCHS["8B"]["text"])
    assert shapes[:3] == [(4096, 4096), (1024, 4096), (1024, 4096)]
    assert sum(o * i for o, i in shapes) == 192_937_984  # 36 layers of these + 1.24 B embeddings = 8.2 B


def test_cpu_smoke_run_writes_its_record(tmp_path):
    assert pig.main(["--device", "cpu", "--out", str(tmp_path), "--repeats", "1"]) == 0
    res = json.loads((tmp_path / "bench_decode_piggyback.json").read_text())
    assert set(res["ms"]) == {"0", "32", "64"} and res["layers"] == 2
    assert res["free_tokens"] == pig.free_tokens({int(c): ms for c, ms in res["ms"].items()}, res["tolerance"])
