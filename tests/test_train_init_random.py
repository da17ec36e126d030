"""avcap train --init-random: a model built from config.json alone (meta device, to_empty,
transformers' initialisation) — the same initial distribution, buffers and tying as a model built
normally, no weights file read, and a training run from it."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from test_curate import curated_human_source

from avcap.core.config import load_config


@pytest.fixture(scope="module")
def config_only_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model's directory without its weights: config, processor, tokenizer only."""
    out = tmp_path_factory.mktemp("config-only") / "model"
    shutil.copytree(tiny_model_dir, out, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    assert not list(out.glob("*.safetensors"))
    return out


def test_init_random_matches_transformers_initialisation(config_only_dir):
    from transformers import AutoConfig, AutoModelForImageTextToText

    from avcap.train.loop import Dist, load_model

    cfg = load_config(None, overrides={"policy": {"model_gradient_checkpointing": True}})
    torch.manual_seed(0)
    model = load_model(str(config_only_dir), cfg, Dist(0, 1, 0, torch.device("cpu")), init_random=True)
    ref = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(config_only_dir), dtype=torch.float32)
    ref_params = {n: p.detach() for n, p in ref.named_parameters()}
    assert set(ref_params) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        p, r = p.detach(), ref_params[name]
        assert p.device.type == "cpu" and p.dtype == torch.float32 and torch.isfinite(p).all(), name
        if r.numel() == 1 or float(r.std()) == 0.0:  # norms (ones) and biases (zeros): exactly
            assert torch.equal(p, r), name
        else:  # normal(0, initializer_range): the same spread
            assert float(p.std()) == pytest.approx(float(r.std()), rel=0.15), name
            assert abs(float(p.mean())) < 0.2 * float(r.std()) + 1e-3, name
    ref_buffers = dict(ref.named_buffers())
    for name, b in model.named_buffers():  # rotary frequencies: computed, not left as to_empty memory
        assert torch.equal(b, ref_buffers[name]), name
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied again
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    assert model.training and (checkpointing if checkpointing is not None else model.is_gradient_checkpointing)


def test_train_cli_init_random_trains_from_a_config_only_directory(tmp_path, config_only_dir):
    from typer.testing import CliRunner

    from avcap.cli import app
    from avcap.core.records import iter_records

    cfg_path = curated_human_source(tmp_path, f"""
[train]
output_dir = "run"
max_num_steps = 1
train_batch_per_replica = 2
[train.train_policy]
mini_batch = 1
dataloader_num_workers = 0
[train.ckpt]
save_freq = 1
[policy]
model_name_or_path = "{config_only_dir}"
""")
    runner = CliRunner()
    plain = runner.invoke(app, ["train", "--config", str(cfg_path)])
    assert plain.exit_code != 0  # without the flag the weights are needed, and there are none
    res = runner.invoke(app, ["train", "--config", str(cfg_path), "--init-random"])
    assert res.exit_code == 0, res.output
    assert "(random weights, --init-random)" in res.output
    (rec,) = list(iter_records(tmp_path / "run/train_log.jsonl"))
    vocab = load_config(cfg_path).resolve(str(config_only_dir))
    from transformers import AutoConfig

    v = AutoConfig.from_pretrained(vocab).text_config.vocab_size
    # small random weights give near-uniform next-token probabilities: loss ~ ln(vocab)
    assert rec["step"] == 1 and abs(rec["loss"] - math.log(v)) < 0.5
    assert (tmp_path / "run/checkpoints/step_1/model.safetensors").is_file()
