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


@pytest.fixture
def randomize():
    """perturb(net) adds N(0, 0.2^2) noise to every weight (seed 0) and sets eval mode: zero-initialized
    output layers make a fresh net constant, so tests of what a net depends on perturb it first."""

    def perturb(net):
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g))
        return net.eval()

    return perturb
