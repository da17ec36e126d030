"""Weights read during the imports (avcap.engines.hf.weights): the model transformers builds from
them is the one it builds from the directory, and where that could differ they are not read early."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from avcap.engines.hf.weights import EarlyWeights, checkpoint_files, from_state_dict, why_not  # noqa: E402

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
