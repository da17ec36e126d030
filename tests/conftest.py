"""Shared pytest fixtures."""

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen3-VL checkpoint directory (avcap tiny-model, seed 0), built once per session."""
    from avcap.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", size="tiny", seed=0)
