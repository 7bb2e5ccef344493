"""Shared fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread: on two shared cores, torch's default threads can oversubscribe (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
