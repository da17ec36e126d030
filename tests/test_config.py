"""avcap.core.config: the recipe TOML loads verbatim and round-trips; every error case; `avcap config check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avcap.cli import app
from avcap.core.config import RECIPE_PATH, ConfigError, load_config, to_toml

SHARED_RECIPE = Path(__file__).resolve().parents[2] / "shared" / "recipe" / "uber_sft_blended.toml"

# The recipe's published training config (placeholders filled in), verbatim.
RECIPE_TOML = RECIPE_PATH.read_text()


@pytest.fixture
def recipe_file(tmp_path) -> Path:
    p = tmp_path / "uber_sft_blended.toml"
    p.write_text(RECIPE_TOML)
    return p


def _variant(tmp_path, old: str, new: str) -> Path:
    assert old in RECIPE_TOML, old
    p = tmp_path / "variant.toml"
    p.write_text(RECIPE_TOML.replace(old, new, 1))
    return p


@pytest.mark.skipif(not SHARED_RECIPE.exists(), reason="shared recipe absent")
def test_embedded_recipe_is_the_published_one():
    assert SHARED_RECIPE.read_text() == RECIPE_TOML
    load_config(SHARED_RECIPE)


def test_recipe_loads_verbatim_with_cosmos_rl_meaning(recipe_file):
    cfg = load_config(recipe_file)
    ds = cfg.custom.dataset
    assert ds.dataset_root == "data/train" and ds.meta_file == "meta.json"
    assert ds.subdirectories == ["cv_annotated", "human_annotated", "reason1_sft"]
    assert ds.weights == [0.3, 0.5, 0.2]
    assert ds.normalized_weights() == pytest.approx([0.3, 0.5, 0.2])
    v = cfg.custom.vision
    assert (v.min_pixels, v.max_pixels, v.nframes, v.fps) == (3136, 360000, 16, None)
    assert v.sampling() == {"min_pixels": 3136, "max_pixels": 360000, "total_pixels": None, "nframes": 16}
    t = cfg.train
    assert (t.output_dir, t.resume, t.compile, t.epoch, t.train_batch_per_replica) == ("outputs/uber", True, False, 3, 32)
    assert (t.optm_lr, t.optm_weight_decay, t.optm_warmup_steps, t.optm_decay_type) == (2e-7, 0.01, 0.03, "cosine")
    assert (t.optm_grad_norm_clip, t.seed) == (1.0, 42)
    assert (t.train_policy.type, t.train_policy.mini_batch, t.train_policy.dataloader_num_workers) == ("sft", 4, 4)
    assert t.grad_accumulation == 8  # 32 samples per rank per step in micro-batches of 4
    assert 0 <= t.warmup_steps(100) <= 3  # 3% of the steps (a fraction, since <= 1)
    assert (t.ckpt.enable_checkpoint, t.ckpt.save_freq) == (True, 20)
    p = cfg.policy
    assert (p.model_name_or_path, p.model_max_length, p.model_gradient_checkpointing) == ("nvidia/Cosmos-Reason2-8B", 4096, True)
    par = p.parallelism
    assert (par.tp_size, par.cp_size, par.dp_shard_size, par.pp_size) == (1, 1, 8, 1)
    lg = cfg.logging
    assert lg.logger == ["console", "wandb"] and lg.project_name == "cosmos_reason2_av_vqa"
    assert lg.experiment_name == "post_training_uber/av_vqa_sft_blended"
    assert cfg.eval_vision == v  # evaluation frames default to the training ones
    assert cfg.resolve("data/train") == recipe_file.parent / "data/train"


def test_recipe_vision_drives_the_video_layer(recipe_file, h264_clip):
    from avcap.video import load_video

    vf = load_video(h264_clip, **load_config(recipe_file).custom.vision.sampling())
    assert len(vf.frame_indices) == 16 and vf.resized_height % 32 == 0


@pytest.mark.parametrize("source", ["recipe", "defaults"])
def test_round_trip(tmp_path, recipe_file, source):
    cfg = load_config(recipe_file if source == "recipe" else None)
    out = tmp_path / "normalized.toml"
    out.write_text(to_toml(cfg))
    again = load_config(out)
    assert again.model_dump() == cfg.model_dump()
    out2 = tmp_path / "normalized2.toml"
    out2.write_text(to_toml(again))
    assert out2.read_text() == out.read_text()


ERRORS = {
    "typo key": ("optm_lr = 2e-7", "optm_lrr = 2e-7", ["train.optm_lrr", "unknown key", "did you mean 'optm_lr'"]),
    "typo table": ("[custom.vision]", "[custom.visoin]", ["custom.visoin", "unknown key", "did you mean 'vision'"]),
    "typo nested": ("mini_batch = 4", "mini_bach = 4", ["train.train_policy.mini_bach", "did you mean 'mini_batch'"]),
    "unknown table": ("[logging]", "[frobnicate]\nx = 1\n\n[logging]", ["frobnicate", "unknown key"]),
    "weights length": ("weights = [0.3, 0.5, 0.2]", "weights = [0.3, 0.7]", ["custom.dataset", "weights has 2 entries", "subdirectories has 3"]),
    "nframes and fps": ("nframes = 16 ", "nframes = 16\nfps = 2.0 ", ["custom.vision", "only one of nframes or fps"]),
    "negative int": ("epoch = 3 ", "epoch = -3 ", ["train.epoch", "greater than or equal to 1", "-3"]),
    "negative float": ("optm_lr = 2e-7", "optm_lr = -2e-7", ["train.optm_lr", "greater than or equal to 0"]),
    "negative pixels": ("min_pixels = 3136", "min_pixels = -3136", ["custom.vision.min_pixels", "greater than 0"]),
    "negative weight": ("weights = [0.3, 0.5, 0.2]", "weights = [0.3, -0.5, 0.2]", ["custom.dataset.weights", ">= 0"]),
    "negative warmup": ("optm_warmup_steps = 0.03", "optm_warmup_steps = -0.03", ["train.optm_warmup_steps"]),
    "non-numeric": ("optm_lr = 2e-7", 'optm_lr = "fast"', ["train.optm_lr", "number"]),
    "quoted number": ("optm_lr = 2e-7", 'optm_lr = "2e-7"', ["train.optm_lr", "expected a number, not a string"]),
    "boolean number": ("epoch = 3 ", "epoch = true ", ["train.epoch", "expected a number, not a boolean"]),
    "infinite": ("optm_lr = 2e-7", "optm_lr = inf", ["train.optm_lr", "finite"]),
    "non-numeric weight": ("weights = [0.3, 0.5, 0.2]", 'weights = ["a", 0.5, 0.2]', ["custom.dataset.weights", "expected numbers"]),
    "fractional frames": ("nframes = 16 ", "nframes = 16.5 ", ["custom.vision.nframes", "integer"]),
    "bad decay type": ('optm_decay_type = "cosine"', 'optm_decay_type = "exponential"', ["train.optm_decay_type", "'sqrt', 'cosine', 'linear' or 'none'", "exponential"]),
    "batch not a multiple": ("train_batch_per_replica = 32", "train_batch_per_replica = 30", ["train", "multiple of"]),
    "fractional warmup steps > 1": ("optm_warmup_steps = 0.03", "optm_warmup_steps = 2.5", ["train", "whole number"]),
    "bad logger": ("logger = ['console', 'wandb']", "logger = ['console', 'tensorboard']", ["logging.logger"]),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_error_cases(tmp_path, case):
    old, new, expect = ERRORS[case]
    p = _variant(tmp_path, old, new)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert len(e.value.problems) == 1, e.value.problems
    msg = e.value.problems[0]
    assert msg.startswith(f"{p}: "), msg
    for part in expect:
        assert part in msg, (part, msg)


def test_turns_per_video_is_for_vqa_sources_only(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text('[avcap.curate.sources.cv]\nkind = "cv_annotated"\npath = "raw/cv"\nturns = "per_video"\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    (msg,) = e.value.problems
    assert msg.startswith(f"{p}: avcap.curate.sources.cv") and 'kind = "vqa"' in msg
    p.write_text('[avcap.curate.sources.q]\nkind = "vqa"\npath = "raw/eval"\nturns = "per_video"\n')
    assert load_config(p).avcap.curate.sources["q"].turns == "per_video"


def test_every_problem_is_reported(tmp_path):
    text = RECIPE_TOML.replace("epoch = 3 ", "epoch = -3 ").replace("optm_lr = 2e-7", "optm_lrr = 2e-7")
    p = tmp_path / "two.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert len(e.value.problems) == 2


def test_malformed_toml(tmp_path):
    p = _variant(tmp_path, "epoch = 3", "epoch = = 3")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.problems[0].startswith(f"{p}: not valid TOML") and "line" in e.value.problems[0]


def test_not_utf8(tmp_path):
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe[train]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


def test_missing_file(tmp_path):
    p = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.problems == [f"{p}: no such config file"]


def test_unknown_dataset_suggests(recipe_file):
    cfg = load_config(recipe_file)
    with pytest.raises(ConfigError, match="did you mean 'LINGOQA'"):
        cfg.dataset("LINGO_QA")


# ----------------------------------------------------------------------------- CLI


def test_config_check_ok(recipe_file):
    r = CliRunner().invoke(app, ["config", "check", str(recipe_file)])
    assert r.exit_code == 0, r.output
    assert "OK" in r.stdout and "[custom.vision]" in r.stdout and "nframes = 16" in r.stdout
    r = CliRunner().invoke(app, ["config", "check", str(recipe_file), "--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout)["train"]["train_batch_per_replica"] == 32


@pytest.mark.parametrize("case", ["typo key", "nframes and fps", "bad decay type"])
def test_config_check_errors_exit_2(tmp_path, case):
    old, new, expect = ERRORS[case]
    p = _variant(tmp_path, old, new)
    r = CliRunner().invoke(app, ["config", "check", str(p)])
    assert r.exit_code == 2
    assert expect[0] in r.output and str(p) in r.output and "Traceback" not in r.output


def test_config_check_missing_and_malformed(tmp_path):
    r = CliRunner().invoke(app, ["config", "check", str(tmp_path / "absent.toml")])
    assert r.exit_code == 2 and "no such config file" in r.output
    p = _variant(tmp_path, "epoch = 3", "epoch = = 3")
    r = CliRunner().invoke(app, ["config", "check", str(p)])
    assert r.exit_code == 2 and "not valid TOML" in r.output


@pytest.mark.parametrize("value,steps", [(1, 1), (1.0, 100), (0.03, 3), (20, 20), (20.0, 20), (0, 0)])
def test_warmup_int_is_steps_float_is_fraction_as_in_cosmos_rl(value, steps):
    from avcap.core.config import load_config

    cfg = load_config(None, {"train": {"optm_warmup_steps": value}})
    assert cfg.train.warmup_steps(100) == steps
