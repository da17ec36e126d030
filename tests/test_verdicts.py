"""avcap.core.verdicts: passed self-checks kept across processes, exactly per key."""

from __future__ import annotations

import json

import pytest

from avcap.core.verdicts import passed_before, remember_pass, verdict_path


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVCAP_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_a_pass_is_kept_for_its_exact_key(cache):
    key = {"torch": "2.11", "sources": {"a": "1f"}, "dtype": "torch.bfloat16"}
    assert not passed_before("check", key)
    assert remember_pass("check", key)
    assert passed_before("check", dict(reversed(list(key.items()))))  # the key's order does not matter
    assert not passed_before("check", {**key, "torch": "2.12"})
    assert not passed_before("check", {**key, "sources": {"a": "2e"}})
    assert not passed_before("other", key)
    assert [p.name for p in (cache / "verdicts").iterdir()] == [verdict_path("check", key).name]


def test_a_torn_or_foreign_file_is_no_pass(cache):
    key = {"k": 1}
    path = verdict_path("check", key)
    path.parent.mkdir(parents=True)
    path.write_text('{"name": "check", "passed": tr')
    assert not passed_before("check", key)
    path.write_text(json.dumps({"name": "check", "passed": True, "key": {"k": 2}}))  # a digest collision
    assert not passed_before("check", key)
    path.write_text(json.dumps({"name": "check", "passed": False, "key": key}))
    assert not passed_before("check", key)


def test_an_unwritable_cache_keeps_nothing_and_raises_nothing(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # the cache root is a file: no folder can be made under it, not even by root
    monkeypatch.setenv("AVCAP_CACHE_DIR", str(blocker))
    assert remember_pass("check", {"k": 1}) is False
    assert not passed_before("check", {"k": 1})
