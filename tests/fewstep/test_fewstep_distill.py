"""Distillation and consistency models against exact solutions: one progressive-distillation round on the
exact Gaussian-mixture teacher reproduces two teacher steps; the consistency parameterization keeps
f(x, sigma_min) = x exactly; the exact consistency function zeroes the distillation loss with an exact
teacher step; consistency training is distillation with the one-sample denoiser; multistep consistency
sampling with the exact function; straightness against a closed form; bad input raises UserError."""

import math

import numpy as np
import pytest
import torch

from diffspace import rng
from diffspace.data.gmm import GaussianMixture, eight_gaussians_mixture
from diffspace.families.consistency import (
    consistency_distillation_loss,
    consistency_training_loss,
    draw_pairs,
    ict_levels,
    ict_num_levels,
    ict_pair_probs,
    pseudo_huber,
    squared_l2,
)
from diffspace.families.distill import (
    halve_grid,
    progressive_distillation_loss,
    progressive_target,
    reflow_pairs,
    straightness,
)
from diffspace.nets.mlp import MLP
from diffspace.param import VelocityFromDenoiser
from diffspace.param.maps import ConsistencyPrecond
from diffspace.paths import LinearFlow
from diffspace.samplers.fewstep import sample_consistency, uniform_times
from diffspace.samplers.grids import karras_sigmas
from diffspace.samplers.ode import euler_step, sample_adaptive
from diffspace.samplers.sde import ddim_step, sample_ddim
from diffspace.types import UserError

GMM = eight_gaussians_mixture(radius=2.0, std=0.5)
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
TOL = 1e-9  # adaptive ODE tolerance of the exact solutions


def noisy(n, sigma, seed=0):
    g = torch.Generator().manual_seed(seed)
    return GMM.sample(n, g) + sigma * torch.randn(n, 2, dtype=torch.float64, generator=g)


# ---- progressive distillation --------------------------------------------------------------------

def test_student_target_through_one_student_step_gives_two_teacher_steps():
    """[PD] Alg. 2: the target x~, used as the student's x0_hat in one DDIM step sigma -> sigma'', lands
    where two teacher DDIM steps sigma -> sigma' -> sigma'' land; per-example levels, last step to 0."""
    sigmas = karras_sigmas(8, SIGMA_MIN, SIGMA_MAX)  # teacher: 8 steps, student: 4
    k = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    s, s_mid, s_next = sigmas[2 * k], sigmas[2 * k + 1], sigmas[2 * k + 2]
    x = GMM.sample(8, torch.Generator().manual_seed(0)) + s[:, None] * torch.randn(8, 2, dtype=torch.float64)
    target = progressive_target(GMM.denoiser, x, s, s_mid, s_next)
    for i in range(8):
        xi = x[i:i + 1]
        two = ddim_step(GMM.denoiser, ddim_step(GMM.denoiser, xi, float(s[i]), float(s_mid[i]))[0],
                        float(s_mid[i]), float(s_next[i]))[0]
        student = ddim_step(lambda y, sig, row=i: target[row:row + 1], xi, float(s[i]), float(s_next[i]))[0]
        torch.testing.assert_close(student, two, rtol=1e-12, atol=1e-12 * float(xi.abs().max()))


class OracleStudent:
    """The student that predicts the [PD] target exactly: x~ at its own level of the halved grid."""

    def __init__(self, teacher_grid):
        self.grid = teacher_grid

    def __call__(self, x, sigma):
        i = int((self.grid - float(sigma[0])).abs().argmin())
        s, s_mid, s_next = (torch.full((len(x),), float(self.grid[j]), dtype=torch.float64)
                            for j in (i, i + 1, i + 2))
        return progressive_target(GMM.denoiser, x, s, s_mid, s_next)


def test_one_round_on_exact_teacher_reproduces_teacher_sampling():
    """Sampling the oracle student on the halved grid (N/2 NFE) equals DDIM sampling of the teacher on the
    full grid; and the distillation loss of that student is zero."""
    sigmas = karras_sigmas(16, SIGMA_MIN, SIGMA_MAX)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * SIGMA_MAX
    teacher = sample_ddim(GMM.denoiser, x, sigmas)
    student = sample_ddim(OracleStudent(sigmas), x, halve_grid(sigmas))
    torch.testing.assert_close(student, teacher, rtol=1e-10, atol=1e-10)
    g = torch.Generator().manual_seed(2)
    x0, eps = GMM.sample(32, g), torch.randn(32, 2, dtype=torch.float64, generator=g)
    k = torch.full((32,), 3)
    loss = progressive_distillation_loss(OracleStudent(sigmas), GMM.denoiser, x0, eps, k, sigmas,
                                         torch.ones(32, dtype=torch.float64))
    assert loss.max() < 1e-24
    # the teacher itself as the student is not a zero: the loss measures the mismatch
    loss_teacher = progressive_distillation_loss(GMM.denoiser, GMM.denoiser, x0, eps, k, sigmas,
                                                 torch.ones(32, dtype=torch.float64))
    assert loss_teacher.mean() > 1e-4


def test_progressive_distillation_rejects_bad_grids():
    with pytest.raises(UserError, match="even number of steps"):
        halve_grid(karras_sigmas(7))
    with pytest.raises(UserError, match="last noise level must be 0"):
        halve_grid(karras_sigmas(8)[:-1])
    x0 = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(UserError, match=r"student step indices must lie in \[0, 3\]"):
        progressive_distillation_loss(GMM.denoiser, GMM.denoiser, x0, x0, torch.tensor([0, 4]),
                                      karras_sigmas(8), torch.ones(2))


# ---- consistency models --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_consistency_parameterization_is_identity_at_sigma_min(dtype, randomize):
    # the nets embed noise in float32; in float64 a stand-in network of the same signature
    mlp = randomize(MLP(2, hidden=32, depth=2))
    net = mlp if dtype == torch.float32 else lambda x, c: 1e3 * torch.tanh(3 * x) + c[:, None]
    f = ConsistencyPrecond(net, sigma_data=0.5, sigma_min=SIGMA_MIN)
    x = 50 * torch.randn(256, 2, dtype=dtype, generator=torch.Generator().manual_seed(3))
    assert torch.equal(f(x, torch.full((256,), SIGMA_MIN, dtype=dtype)), x)
    # elsewhere the network acts: f is not the identity
    assert (f(x, torch.full((256,), 0.5, dtype=dtype)) - x).abs().min() > 0


class ExactConsistency:
    """f(x, sigma) = the PF-ODE solution from sigma down to SIGMA_MIN (adaptive, tolerance `tol`), x itself
    at SIGMA_MIN; rows that share a level are solved together."""

    def __init__(self, tol=TOL):
        self.tol = tol

    def __call__(self, x, sigma):
        out = x.clone()
        for s in sigma.unique().tolist():
            rows = sigma == s
            if s != SIGMA_MIN:
                out[rows] = sample_adaptive(GMM.denoiser, x[rows], s, SIGMA_MIN, self.tol, self.tol,
                                            denoise_last=False)
        return out


def exact_step(denoiser, x, sigma, sigma_next, **cond):
    """The exact ODE step between two levels, in the one-step sampler signature."""
    return sample_adaptive(denoiser, x, sigma, sigma_next, TOL, TOL, denoise_last=False), None


def test_exact_consistency_function_zeroes_distillation_loss():
    """[CM] Eq. 7: with the teacher's exact ODE step between adjacent levels, the exact consistency
    function has zero loss at every pair; the posterior mean (the denoiser, not an ODE endpoint) does not."""
    levels = ict_levels(8)
    g = torch.Generator().manual_seed(4)
    x0, z = GMM.sample(14, g), torch.randn(14, 2, dtype=torch.float64, generator=g)
    k = torch.arange(14) % 7
    loss = consistency_distillation_loss(ExactConsistency(), GMM.denoiser, exact_step, x0, z, k, levels,
                                         weight=torch.ones(14), distance=squared_l2)
    assert loss.max() < 1e-14, loss  # squared distances at ODE tolerance
    wrong = consistency_distillation_loss(GMM.denoiser, GMM.denoiser, exact_step, x0, z, k, levels,
                                          weight=torch.ones(14), distance=squared_l2)
    assert wrong.mean() > 1e-2, wrong  # near the data the two agree, at high noise they differ by O(1)


def test_consistency_training_is_distillation_with_the_one_sample_denoiser():
    """x0 + lo z is the Euler step from x0 + hi z with x0_hat = x0 ([CM] Alg. 3 vs Alg. 2)."""
    levels = ict_levels(11)
    g = torch.Generator().manual_seed(5)
    x0, z = GMM.sample(16, g), torch.randn(16, 2, dtype=torch.float64, generator=g)
    model = ConsistencyPrecond(lambda x, c: torch.sin(x) * c[:, None] / 100, sigma_data=0.5)
    for k in range(10):
        kk = torch.full((16,), k)
        ct = consistency_training_loss(model, x0, z, kk, levels)
        cd = consistency_distillation_loss(model, lambda x, s: x0, euler_step, x0, z, kk, levels)
        torch.testing.assert_close(ct, cd, rtol=1e-9, atol=1e-12)
    # pseudo-Huber at c: sqrt(|d|^2 + c^2) - c, with iCT's c = 0.00054 sqrt(D)
    d = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    c = 0.00054 * math.sqrt(2)
    expected = torch.tensor([math.sqrt(25 + c * c) - c], dtype=torch.float64)
    torch.testing.assert_close(pseudo_huber(d), expected)


def test_ict_schedule_and_pair_proposal():
    K = 800_000  # K' = floor(K / (log2(128) + 1)) = 100_000
    assert [ict_num_levels(k, K) for k in (0, 99_999, 100_000, 350_000, 700_000, 799_999)] == \
        [11, 11, 21, 81, 1281, 1281]
    levels = ict_levels(81)
    assert levels[0] == SIGMA_MAX and levels[-1] == SIGMA_MIN and (levels.diff() < 0).all()
    p = ict_pair_probs(levels)
    e = torch.erf((levels.log() + 1.1) / (math.sqrt(2) * 2.0))
    torch.testing.assert_close(p, (e[:-1] - e[1:]) / (e[0] - e[-1]))
    n = 200_000
    counts = torch.bincount(draw_pairs(n, p, torch.Generator().manual_seed(6)), minlength=80).double()
    sd = (n * p * (1 - p)).sqrt()
    assert ((counts - n * p).abs() <= 5 * sd + 1).all()
    a, b = draw_pairs(6, p, rng.Streams(1, 6)), draw_pairs(2, p, rng.Streams(1, 2, offset=4))
    assert torch.equal(a[4:], b)


def test_consistency_sampling_with_exact_function():
    """One step of the exact consistency function is the exact ODE endpoint; every further step renoises
    an exact sample to the next level and maps it back, so the samples stay distributed as the data (at
    sigma_min): mean and covariance within Monte Carlo error."""
    n = 1000
    x = rng.randn((n, 2), torch.Generator().manual_seed(7), torch.float64) * SIGMA_MAX
    f = ExactConsistency(tol=1e-7)
    one = sample_consistency(f, x, torch.tensor([SIGMA_MAX, 0.0], dtype=torch.float64))
    torch.testing.assert_close(one, sample_adaptive(GMM.denoiser, x, SIGMA_MAX, SIGMA_MIN, 1e-7, 1e-7,
                                                    denoise_last=False))
    three = sample_consistency(f, x, torch.tensor([SIGMA_MAX, 2.0, 0.5, 0.0], dtype=torch.float64),
                               generator=torch.Generator().manual_seed(8))
    data = GMM.sample(400_000, torch.Generator().manual_seed(9))
    mean_err = (three.mean(0) - data.mean(0)).abs().max()
    cov_err = (torch.cov(three.T) - torch.cov(data.T)).abs().max()
    assert mean_err < 4 * math.sqrt(float(data.var(0).max()) / n), mean_err
    assert cov_err < 0.4, cov_err  # entries about 2.2; s.e. of a covariance entry at n = 1000 about 0.1
    with pytest.raises(UserError, match="boundary level"):
        sample_consistency(f, x, torch.tensor([SIGMA_MAX, 0.001, 0.0], dtype=torch.float64))
    with pytest.raises(UserError, match="last noise level must be 0"):
        sample_consistency(f, x, torch.tensor([SIGMA_MAX, 1.0], dtype=torch.float64))


# ---- reflow and straightness ---------------------------------------------------------------------

def test_reflow_pairs_refuse_stochastic_or_unknown_samplers():
    sigmas = karras_sigmas(4)
    eps = torch.zeros(2, 2, dtype=torch.float64)
    for name in ("ddpm", "euler_ancestral", "edm_sde", "pc", "dpmpp_2m_sde", "euler_maruyama"):
        with pytest.raises(UserError, match=f"deterministic sampler, got stochastic '{name}'"):
            reflow_pairs(GMM.denoiser, name, eps, sigmas)
    with pytest.raises(UserError, match="unknown sampler 'huen'"):
        reflow_pairs(GMM.denoiser, "huen", eps, sigmas)
    x0 = reflow_pairs(GMM.denoiser, "heun", noisy(4, 0.0), sigmas)
    assert x0.shape == (4, 2) and torch.isfinite(x0).all()


@pytest.mark.parametrize("s", [0.0, 0.3, 2.0])
def test_straightness_of_gaussian_data_matches_closed_form(s):
    """Data N(m, s^2 I) on the linear path: x_t = (1 - t) m + g(t) xi with g(t) = sqrt((1 - t)^2 s^2 + t^2),
    so per example S = |xi|^2 times the time average of ((g(a) - g(b)) / (a - b) - g'(t))^2 (0 for s = 0,
    a point mass: straight lines)."""
    path, a, b = LinearFlow(), 1 - 1e-3, 1e-3
    data = GaussianMixture(torch.tensor([[1.0, -2.0]]), torch.tensor(max(s, 1e-300)))
    velocity = VelocityFromDenoiser(data.denoiser, path)
    xi = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    g = lambda t: np.sqrt((1 - t) ** 2 * s**2 + t**2)
    x_start = (1 - a) * data.means + float(g(a)) * xi
    got = straightness(velocity, x_start, uniform_times(400, a, b))
    tt = np.linspace(b, a, 2_000_001)
    dg = ((1 - tt) * -s**2 + tt) / g(tt)
    factor = np.trapezoid(((g(a) - g(b)) / (a - b) - dg) ** 2, tt) / (a - b)
    expected = (xi**2).sum(1) * factor
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-10)
