"""Suite-wide settings: one torch thread per test process (pytest-xdist runs one process per core)."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # Oversubscribed OpenMP threads are many times slower than one thread per process on a 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("ART_JACREG_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(previous)
