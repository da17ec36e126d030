"""How `avcap train` feeds the model: the DataLoader wait in train_log.jsonl (`data_wait_s`)."""

from __future__ import annotations

import pytest
from test_train import curated, log_of, train_config  # noqa: F401  (curated: a fixture)

from avcap.core.config import load_config


@pytest.fixture(scope="module")
def fed(curated, tiny_model_dir):
    """2 steps of global batch 2 in micro-batches of 1 (2 per step), one DataLoader worker process,
    a checkpoint after each step."""
    from avcap.train.loop import train

    path = train_config(curated, tiny_model_dir, "fed", per_rank=2, workers=1)
    cfg = load_config(path, overrides={"train": {"max_num_steps": 2, "ckpt": {"save_freq": 1}}})
    lines: list[str] = []
    train(cfg, echo=lines.append)
    return cfg, cfg.resolve(cfg.train.output_dir), lines


def test_every_step_records_its_wait_for_the_dataloader(fed):
    _, out, lines = fed
    log = log_of(out)
    assert sorted(log) == [1, 2]
    for rec in log.values():
        wait = rec["data_wait_s"]
        assert isinstance(wait, float) and 0 <= wait <= rec["step_time_s"]
    # step 1 waits for the worker process to start and encode its first micro-batches
    assert log[1]["data_wait_s"] > 0
    assert any(line.startswith("step 2/2 ") and " data_wait " in line for line in lines)
