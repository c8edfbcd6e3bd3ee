import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    # the tiny models gain nothing from threads, and spinning OpenMP threads on a busy shared CPU is 10x slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
