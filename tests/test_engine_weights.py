"""Weights read during the imports (avcap.engines.hf.weights): the model transformers builds from
them is the one it builds from the directory, and where that could differ they are not read early."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from avcap.engines.hf.weights import (  # noqa: E402
    EarlyWeights, checkpoint_files, from_state_dict, read_checkpoint, safetensors_header, why_not)

pytestmark = pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5, reason="transformers 5 only")


def test_a_model_from_early_weights_is_the_model_from_the_directory(varied_model_dir):
    from transformers import AutoModelForImageTextToText

    reader, why = EarlyWeights.start(varied_model_dir, "cpu", torch.float32)
    assert why is None and reader is not None
    kw = dict(dtype=torch.float32, attn_implementation="sdpa")
    early = from_state_dict(varied_model_dir, reader.result(), **kw)
    plain = AutoModelForImageTextToText.from_pretrained(varied_model_dir, **kw)
    assert reader.read_s >= 0 and reader.waited_s >= 0
    assert type(early) is type(plain)
    a, b = early.state_dict(), plain.state_dict()
    assert list(a) == list(b)
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert dict(early.named_buffers()).keys() == dict(plain.named_buffers()).keys()
    assert all(torch.equal(x, y) for x, y in zip(early.buffers(), plain.buffers()))
    assert early.config.to_dict() == plain.config.to_dict()
    assert early.generation_config.to_dict() == plain.generation_config.to_dict()
    tied = early.lm_head.weight is early.get_input_embeddings().weight
    assert tied == (plain.lm_head.weight is plain.get_input_embeddings().weight)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(early(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_weights_that_would_load_differently_are_not_read_early(varied_model_dir, tmp_path):
    assert why_not(varied_model_dir, torch.float32) is None
    # a float32 checkpoint for a bfloat16 run: transformers casts, the early read would hold both
    assert "float32 tensors, the run is bfloat16" in why_not(varied_model_dir, torch.bfloat16)
    assert why_not(tmp_path / "missing", torch.float32) == "not a local directory"
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(varied_model_dir / "config.json", bare / "config.json")
    assert why_not(bare, torch.float32) == "no safetensors files"
    quant = tmp_path / "quant"
    shutil.copytree(varied_model_dir, quant)
    cfg = json.loads((quant / "config.json").read_text())
    (quant / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "fp8"}}))
    assert why_not(quant, torch.float32) == "a quantized checkpoint"
    reader, why = EarlyWeights.start(quant, "cpu", torch.float32)
    assert reader is None and why == "a quantized checkpoint"


def test_a_sharded_checkpoint_is_read_shard_by_shard(varied_model_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(varied_model_dir, dtype=torch.float32)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="2MB")
    for f in ("generation_config.json",):
        if (varied_model_dir / f).is_file():
            shutil.copy(varied_model_dir / f, sharded / f)
    files = checkpoint_files(sharded)
    assert len(files) > 1 and all(f.is_file() for f in files)
    reader, why = EarlyWeights.start(sharded, "cpu", torch.float32)
    assert why is None
    early = from_state_dict(sharded, reader.result(), dtype=torch.float32)
    assert all(torch.equal(x, y) for x, y in zip(early.state_dict().values(), model.state_dict().values()))


def test_a_failed_read_is_raised_to_whoever_waits(varied_model_dir, tmp_path):
    """A file that fails between the header check and the read (here: cut short) raises in
    `result`, which the engine's load turns into its ModelLoadError; a checked-unreadable one is
    not read early at all."""
    broken = tmp_path / "broken"
    shutil.copytree(varied_model_dir, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert why_not(broken, torch.float32).startswith("model.safetensors: unreadable")
    reader = EarlyWeights(checkpoint_files(broken), "cpu")
    reader._thread.start()
    with pytest.raises(Exception, match="incomplete metadata|not fully covered") as caught:
        reader.result()
    assert type(caught.value).__name__ == "SafetensorError"
    assert reader.read_s >= 0


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def test_the_chunked_reader_gives_what_safetensors_loads(varied_model_dir, tmp_path):
    """`read_checkpoint` (the CUDA reader: byte ranges through staging buffers, several threads) gives
    safetensors' `load_file` exactly: every dtype torch has, a scalar, an empty tensor, tensors larger
    than a chunk and chunks that end mid-tensor, across files. Here on the CPU, where the buffers are
    not pinned and the copies synchronous: the same ranges and bytes as on the GPU."""
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(0)
    odd = {
        "bf16": torch.randn(37, 11, generator=g).to(torch.bfloat16),
        "f16": torch.randn(5, generator=g).to(torch.float16),
        "f64": torch.randn(3, 2, generator=g, dtype=torch.float64),
        "i64": torch.arange(-7, 13),
        "i32": torch.arange(9, dtype=torch.int32).reshape(3, 3),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.arange(200, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }
    save_file(odd, tmp_path / "odd.safetensors", metadata={"format": "pt"})
    files = [tmp_path / "odd.safetensors", *checkpoint_files(varied_model_dir)]
    want = {k: v for f in files for k, v in load_file(f).items()}
    assert "__metadata__" not in safetensors_header(files[0])[1]
    for threads, chunk in ((1, 1 << 20), (3, 4096), (4, 13)):  # 13 bytes: every tensor split mid-element
        assert _same(read_checkpoint(files, "cpu", threads=threads, chunk=chunk), want), (threads, chunk)


def test_a_chunked_reader_that_cannot_start_raises(varied_model_dir, monkeypatch):
    """A reader thread failing before its first range (here: its staging buffer) raises in the caller;
    no tensor comes back half read."""
    real = torch.empty

    def no_buffer(*a, **kw):
        if "pin_memory" in kw:
            raise RuntimeError("no pinned memory (injected)")
        return real(*a, **kw)

    monkeypatch.setattr(torch, "empty", no_buffer)
    with pytest.raises(RuntimeError, match="injected"):
        read_checkpoint(checkpoint_files(varied_model_dir), "cpu", threads=2, chunk=1 << 16)


def test_the_chunked_reader_names_a_truncated_file(varied_model_dir, tmp_path):
    cut = tmp_path / "cut.safetensors"
    data = (varied_model_dir / "model.safetensors").read_bytes()
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(OSError, match="cut.safetensors: ends before byte"):
        read_checkpoint([cut], "cpu", threads=2, chunk=1 << 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the GPU machine)")
def test_the_chunked_reader_on_the_gpu_gives_what_safetensors_loads(varied_model_dir):
    from safetensors.torch import load_file

    files = checkpoint_files(varied_model_dir)
    got = read_checkpoint(files, "cuda:0", chunk=1 << 16)
    want = {k: v for f in files for k, v in load_file(f).items()}
    assert _same({k: v.cpu() for k, v in got.items()}, want)


def test_a_failing_chunked_reader_gives_way_to_safetensors_loudly(varied_model_dir, monkeypatch):
    """On CUDA the chunked reader reads (`EarlyWeights.chunked`; set here on the CPU); should it fail
    (here: made to), safetensors reads the files, with a warning, and the reader says why (run.json's
    `early_weights.fallback`). Without a failure it is the chunked reader's tensors."""
    import avcap.engines.hf.weights as weights
    from safetensors.torch import load_file

    files = checkpoint_files(varied_model_dir)
    want = {k: v for f in files for k, v in load_file(f).items()}
    reader = EarlyWeights(files, "cpu")
    assert reader.chunked is False  # the host maps the files
    reader.chunked = True
    reader._thread.start()
    assert _same(reader.result(), want) and reader.fallback is None

    def broken(files, device, **kw):
        raise RuntimeError("cudaHostAlloc failed (injected)")

    monkeypatch.setattr(weights, "read_checkpoint", broken)
    reader = EarlyWeights(files, "cpu")
    reader.chunked = True
    with pytest.warns(UserWarning, match="the chunked reader failed .*injected.*reading the weights with safetensors"):
        reader._read()
    assert _same(reader.result(), want) and reader.fallback == "RuntimeError: cudaHostAlloc failed (injected)"
