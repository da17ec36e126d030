"""cosmos-rl's real SFT data path on avcap's dataset script, against avcap's own trainer.

Runs only where cosmos-rl is installed — its own environment, `pip install -c constraints/cosmos-rl.txt
-e ".[cosmos-rl]"` (README, "With cosmos-rl"), with AVCAP_TINY_MODEL naming a tiny model built in
avcap's main environment (see the `tiny_model_dir` fixture); the main environment skips it. On CPU: the recipe TOML
through cosmos-rl's `Config.from_dict`, avcap's script (loaded from its file, as cosmos-rl runs it)
for the dataset, the blend sampler and the data packer, cosmos-rl's `construct_dataset` ->
DataLoader -> `sft_collate_fn` as its SFT worker and trainer call them; the packed input ids,
labels and pixels must equal what `avcap train` packs from the same TOML.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tomllib
from pathlib import Path

import pytest
import torch
from test_curate import HUMAN, make_source, write_config

pytest.importorskip("cosmos_rl", reason="cosmos-rl is not installed; its environment: "
                    "pip install -c constraints/cosmos-rl.txt -e '.[cosmos-rl]' (README, 'With cosmos-rl')")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """avcap's tiny Qwen3-VL. Its builder needs transformers >= 5 and cosmos-rl needs < 5, so in
    cosmos-rl's environment the checkpoint comes from avcap's main one: AVCAP_TINY_MODEL=DIR, DIR
    written by `avcap tiny-model --out DIR` there (transformers 4.57 loads it)."""
    import transformers

    given = os.environ.get("AVCAP_TINY_MODEL")
    if given:
        if not (Path(given) / "config.json").is_file():
            pytest.fail(f"AVCAP_TINY_MODEL={given}: no config.json there; write it with `avcap tiny-model --out DIR`")
        return Path(given)
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip(f"transformers {transformers.__version__} cannot build avcap's tiny model: run "
                    "`avcap tiny-model --out DIR` in avcap's main environment and set AVCAP_TINY_MODEL=DIR")
    from avcap.demo.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", size="tiny", seed=0)


def _load_script():
    """Import avcap's script from its file path, the way `cosmos-rl --config F <path>` runs it."""
    import avcap.train.cosmos_rl_dataset as m

    spec = importlib.util.spec_from_file_location("cosmos_rl_user_script", m.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _recipe(model: Path, output_dir: Path, *, model_max_length: int = 4096) -> str:
    """The recipe's TOML, pointed at the tiny model and the curated test data, batch 4 in one
    micro-batch, with avcap's own keys that cosmos-rl ignores ([avcap], train.ckpt.save_final)."""
    from avcap.core.config import RECIPE_PATH

    text = RECIPE_PATH.read_text()
    for old, new in [
        ('subdirectories = ["cv_annotated", "human_annotated", "reason1_sft"]',
         'subdirectories = ["human_annotated", "cv_annotated"]'),
        ("weights = [0.3, 0.5, 0.2]", "weights = [0.5, 0.5]"),
        ("max_pixels = 360000 ", "max_pixels = 6144 "),
        ("nframes = 16 ", "nframes = 4 "),
        ('output_dir = "outputs/uber"', f'output_dir = "{output_dir}"'),
        ("train_batch_per_replica = 32", "train_batch_per_replica = 4"),
        ('model_name_or_path = "nvidia/Cosmos-Reason2-8B"', f'model_name_or_path = "{model}"'),
        ("model_max_length = 4096", f"model_max_length = {model_max_length}"),
        ("mini_batch = 4", "mini_batch = 4"),
        ("dataloader_num_workers = 4", "dataloader_num_workers = 0"),
        ("save_freq = 20", "save_freq = 20\nsave_final = false"),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    return text + '\n[avcap.train]\nloss_reduction = "sample"\n'


@pytest.fixture(scope="module")
def curated_root(tmp_path_factory):
    """Two curated sources (human 2, cv 2) under root/data/train, 4-frame clips of 64x96."""
    from avcap.core.config import load_config
    from avcap.data.sources import curate

    root = tmp_path_factory.mktemp("cosmos-rl-data")
    make_source(root / "raw/human", "human_annotated", 2, seed=0,
                annotate=lambda i: {**HUMAN, "weather": ["Sunny", "Overcast"][i]})
    make_source(root / "raw/cv", "cv_annotated", 2, seed=50)
    cfg = write_config(root / "curate.toml", """
[custom.dataset]
dataset_root = "data/train"
subdirectories = ["human_annotated", "cv_annotated"]
[custom.vision]
nframes = 4
max_pixels = 6144
[avcap.curate.sources.human_annotated]
kind = "human_annotated"
path = "raw/human"
[avcap.curate.sources.cv_annotated]
kind = "cv_annotated"
path = "raw/cv"
""")
    assert not curate(load_config(cfg), echo=lambda s: None).problems
    return root


def _cosmos(toml_path: Path):
    """cosmos-rl's Config, avcap's dataset / sampler factory / set-up packer, as cosmos-rl builds them."""
    from cosmos_rl.policy.config import Config
    from cosmos_rl.utils.util import call_setup

    mod = _load_script()
    config = Config.from_dict(tomllib.loads(toml_path.read_text()))
    dataset, make_sampler = mod.from_config_file(toml_path)
    packer = mod.data_packer(config)
    call_setup(packer, config)
    return mod, config, dataset, make_sampler, packer


def _avcap_step(toml_path: Path):
    """Step 1 of `avcap train` on this TOML, one rank: its DataLoader's batch (avcap.train.loop._train's
    SFTDataset, StepBatches and Collator)."""
    from torch.utils.data import DataLoader
    from transformers import AutoProcessor

    from avcap.core.config import load_config
    from avcap.data.blend import BlendPlan
    from avcap.train.data import Collator, SFTDataset, StepBatches, index_sources

    cfg = load_config(toml_path)
    t, ds = cfg.train, cfg.custom.dataset
    processor = AutoProcessor.from_pretrained(cfg.policy.model_name_or_path)
    index = index_sources(cfg.resolve(ds.dataset_root), ds.subdirectories, ds.meta_file)
    plan = BlendPlan(tuple(index.sizes), tuple(ds.normalized_weights()), t.seed, t.train_batch_per_replica,
                     names=tuple(index.names))
    dataset = SFTDataset(index, processor, vision=cfg.custom.vision, model_max_length=cfg.policy.model_max_length)
    loader = DataLoader(dataset, batch_sampler=StepBatches(plan, rank=0, world_size=1, mini_batch=t.train_policy.mini_batch,
                                                           start_step=0, end_step=1),
                        collate_fn=Collator(processor.tokenizer.pad_token_id))
    return cfg, dataset, next(iter(loader))


def test_cosmos_rl_packs_what_avcap_train_packs(curated_root, tiny_model_dir, tmp_path):
    from cosmos_rl.dispatcher.data.packer.hf_vlm_data_packer import HFVLMDataPacker
    from cosmos_rl.policy.worker.sft_worker import collate_fn, construct_dataset
    from torch.utils.data import DataLoader

    toml_path = write_config(curated_root / "recipe.toml", _recipe(tiny_model_dir, tmp_path / "out"))
    mod, config, dataset, make_sampler, packer = _cosmos(toml_path)

    # what cosmos-rl keeps of the recipe TOML: [custom] for the script; [avcap] and save_final dropped;
    # output_dir gets a timestamp directory
    assert config.custom == tomllib.loads(toml_path.read_text())["custom"]
    assert not hasattr(config, "avcap") and "save_final" not in config.train.ckpt.model_dump()
    assert Path(config.train.output_dir).parent == tmp_path / "out"
    assert type(packer) is HFVLMDataPacker and packer.use_qwen_vl_process  # the explicit packer, Qwen-VL video path

    # cosmos-rl's SFT worker: construct_dataset over the user dataset, the user sampler factory, its DataLoader
    train_ds, _ = construct_dataset(config, data_packer=packer, user_provided_dataset=dataset, val_data_packer=packer)
    sampler = make_sampler(train_ds, num_replicas=1, rank=0, shuffle=True, drop_last=False)
    loader = DataLoader(train_ds, batch_size=config.train.train_batch_per_replica, shuffle=False, sampler=sampler,
                        num_workers=config.train.train_policy.dataloader_num_workers, collate_fn=collate_fn)
    raw = next(iter(loader))
    # cosmos-rl's SFT trainer: one micro-batch (mini_batch = batch), padded to min(model_max_length, longest)
    assert config.train.train_policy.mini_batch == len(raw) == 4
    max_len = min(config.policy.model_max_length, packer.sft_compute_max_len(raw))
    batch = packer.sft_collate_fn(raw, computed_max_len=max_len, ignore_label_id=-100)

    cfg, _, ours = _avcap_step(toml_path)
    assert list(sampler)[:4] == ours["indices"] and not ours["skipped"]
    assert sorted(ours["indices"]) == [0, 1, 2, 3]  # both sources in the step
    assert torch.equal(batch["input_ids"], ours["input_ids"])
    assert torch.equal(batch["label_ids"], ours["labels"])
    assert ((ours["labels"] != -100).sum(dim=1) > 5).all()  # every sample has its answer labelled
    assert torch.equal(batch["video_grid_thw"], ours["video_grid_thw"])
    assert batch["pixel_values_videos"].shape == ours["pixel_values_videos"].shape
    assert torch.equal(batch["pixel_values_videos"], ours["pixel_values_videos"])


def test_cosmos_rl_truncates_what_avcap_train_skips(curated_root, tiny_model_dir, tmp_path):
    """A sample longer than policy.model_max_length whose video tokens fit: cosmos-rl's packer cuts
    its trailing text (and labels); avcap's trainer skips it."""
    from avcap.train.data import IGNORE_INDEX

    full = write_config(curated_root / "full.toml", _recipe(tiny_model_dir, tmp_path / "out"))
    _, _, dataset, _, _ = _cosmos(full)
    _, avcap_ds, _ = _avcap_step(full)
    sample = avcap_ds[0]
    n = sample["input_ids"].shape[1]
    answer = int((sample["labels"][0] != IGNORE_INDEX).sum())
    limit = n - answer // 2  # inside the answer, well after the video

    short = write_config(curated_root / "short.toml", _recipe(tiny_model_dir, tmp_path / "out", model_max_length=limit))
    _, _, dataset, _, packer = _cosmos(short)
    cut = packer.sft_process_sample(dataset[0])
    assert len(cut["input_ids"]) == len(cut["label_ids"]) == limit
    assert cut["input_ids"] == sample["input_ids"][0, :limit].tolist()
    assert cut["label_ids"] == sample["labels"][0, :limit].tolist()
    _, avcap_short, _ = _avcap_step(short)
    assert f"{n} tokens > model_max_length {limit}" in avcap_short[0]["skipped"]


def test_data_packer_refuses_other_model_types(tmp_path):
    from avcap.train.cosmos_rl_dataset import CosmosRLDatasetError, data_packer

    model = tmp_path / "qwen2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    config = type("Config", (), {"policy": type("Policy", (), {"model_name_or_path": str(model)})})()
    with pytest.raises(CosmosRLDatasetError, match="model_type 'qwen2'.*qwen3_vl"):
        data_packer(config)
