"""Tests of pipeline.learn.device: resolve_device."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.learn.device import resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_is_the_cpu_without_cuda(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("auto", local_rank=2) == torch.device("cpu")


@pytest.mark.parametrize("available", [False, True])
def test_cpu_is_the_cpu(monkeypatch, available):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")


@pytest.mark.parametrize("choice", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_config_error_naming_the_device(no_cuda, choice):
    with pytest.raises(ConfigError, match=f"'{choice}'.*no CUDA device"):
        resolve_device(choice)


def test_bare_cuda_takes_the_local_rank(cuda):
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)


def test_auto_with_cuda_takes_the_local_rank(cuda):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=3) == torch.device("cuda", 3)


def test_an_explicit_cuda_index_is_kept(cuda):
    assert resolve_device("cuda:1", local_rank=0) == torch.device("cuda", 1)
