import os

import pytest
import torch

# Tests run on CPU. One thread per test process: the suite runs in two xdist workers on a 2-core
# machine (see the Makefile), and tiny models gain nothing from intra-op threads (oversubscribed
# threads were measured to slow small work by up to 50x).
torch.set_num_threads(int(os.environ.get("DIFFSPACE_TEST_THREADS", "1")))


@pytest.fixture
def f64():
    return torch.float64
