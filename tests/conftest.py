import os

import pytest
import torch

# Tests run on CPU in float64 where they check maths; keep thread use modest on 2-core machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def f64():
    return torch.float64
