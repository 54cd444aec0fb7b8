"""Golden tests against diffusers: the same eps-prediction network on the DDPM table and the same
noise give the same samples (catches timestep bookkeeping: spacing, first sigma, last step)."""

import math

import pytest
import torch

from diffspace.nets.mlp import MLP
from diffspace.param import NetDenoiser
from diffspace.paths import DDPMDiscrete
from diffspace.samplers.grids import GRIDS
from diffspace.samplers.registry import SAMPLERS

diffusers = pytest.importorskip("diffusers")

TABLE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
STEPS = 10


class ResidualEps(torch.nn.Module):
    """eps_hat = x_t + 0.3 mlp(x_t, t): random, but of the right scale at high noise (where the best
    eps is about x_t), so samples stay O(1) and float32 rounding stays far below the tolerance."""

    def __init__(self):
        super().__init__()
        self.mlp = MLP(2, hidden=64, depth=2)

    def forward(self, x, noise_cond):
        return x + 0.3 * self.mlp(x, noise_cond)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = ResidualEps().eval()
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    return net, noise


def run_diffusers(scheduler, net, noise):
    """The standard diffusers loop: x_T ~ N(0, init_noise_sigma^2), scale, predict eps, step."""
    scheduler.set_timesteps(STEPS)
    x = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, t)
            eps = net(inp, t.float().expand(len(x)))
            x = scheduler.step(eps, t, x).prev_sample
    return x


def run_diffspace(name, spacing, net, noise):
    path = DDPMDiscrete()
    sigmas = GRIDS[spacing](STEPS, path=path)
    # x_T ~ N(0, I) in VP space is noise / alpha_T = noise * sqrt(1 + sigma_T^2) in sigma space
    with torch.no_grad():
        x = noise * math.sqrt(1 + float(sigmas[0]) ** 2)
        return SAMPLERS[name].fn(NetDenoiser(net, path, "eps"), x, sigmas)


CASES = [
    ("ddim", "leading", lambda: diffusers.DDIMScheduler(**TABLE, clip_sample=False, set_alpha_to_one=True,
                                                        timestep_spacing="leading")),
    ("ddim", "trailing", lambda: diffusers.DDIMScheduler(**TABLE, clip_sample=False, set_alpha_to_one=True,
                                                         timestep_spacing="trailing")),
    ("euler", "trailing", lambda: diffusers.EulerDiscreteScheduler(**TABLE, timestep_spacing="trailing")),
    ("dpmpp_2m", "trailing", lambda: diffusers.DPMSolverMultistepScheduler(
        **TABLE, solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint",
        timestep_spacing="trailing", final_sigmas_type="zero")),
]


@pytest.mark.parametrize("name,spacing,make", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_matches_diffusers(setup, name, spacing, make):
    net, noise = setup
    ours, theirs = run_diffspace(name, spacing, net, noise), run_diffusers(make(), net, noise)
    assert 0.1 < theirs.abs().max() < 20  # a real sample of order one, not a collapsed one
    assert (ours - theirs).abs().max() < 1e-4


def test_grids_visit_the_diffusers_timesteps():
    path = DDPMDiscrete()
    for spacing, cls in (("leading", diffusers.DDIMScheduler), ("trailing", diffusers.DDIMScheduler),
                         ("trailing", diffusers.EulerDiscreteScheduler)):
        for n in (1, 7, 10, 50, 1000):
            s = cls(**TABLE, timestep_spacing=spacing)
            s.set_timesteps(n)
            expect = torch.exp(path.log_sigmas[s.timesteps.long()])
            assert torch.allclose(GRIDS[spacing](n, path=path)[:-1], expect, rtol=1e-12), (spacing, n)
