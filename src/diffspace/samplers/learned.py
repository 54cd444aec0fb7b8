"""A multistep solver whose weights and noise levels are learned on a calibration batch, after S4S:
[S4S] Frankel et al., "S4S: Solving for a Diffusion Model Solver", arXiv 2502.17423 (solver
coefficients learned to match a teacher solver's output; S4S-Alt learns the steps too) and [LD3] Tong et
al., "Learning to Discretize Denoising Diffusion ODEs", arXiv 2405.15506 (the steps learned by
backpropagating the final error through the solver). Written from the methods as the abstracts describe
them, in this project's own form; no equation numbers are cited because the papers' text was not at hand.

The solver is DPM-Solver++(2M) ([DPM++] Alg. 2) in EDM space with its fixed weights set free. Step i of
n, from sigma_i to sigma_{i+1} with rho_i = sigma_{i+1} / sigma_i and D_i = D(x_i, sigma_i):

    x_i     <- x_i + (1 - rho_{i-1}) gamma_{i-1} (D_i - D_{i-1})          (i >= 1: a corrector, no call)
    D~_i     = D_i + sum_{j=1..m} beta_{i,j} (D_{i-j} - D_i)              (m = min(i, history - 1))
    x_{i+1}  = rho_i x_i + (1 - rho_i) D~_i                                ([DPM++] Eq. 9, first order in D~)

2M is beta_{i,1} = -h_i / (2 h_{i-1}) (h the steps in lam = -log sigma), every other weight 0; the
corrector redoes the step just taken with the new output, as UniC does ([UniPC] Alg. 1) with a weight of
its own. The weights on past outputs sum to one with D_i's, so a constant D is integrated exactly
whatever was learned. A last step to sigma = 0 (rho = 0) returns D~_{n-1}.

Learning (`learn_solver`) minimizes the mean squared per-example distance between the solver's output
from the calibration noise and the adaptive PF-ODE solution from the same noise, over beta, gamma and the
n - 1 interior levels, with Adam on the whole batch (the gradient runs through the network, whose weights
stay fixed). The levels are learned as log sigma, clamped to the sampling range; the parameters of the lowest
calibration loss seen among the iterates whose levels descend are kept, so the result is a grid and
never worse than the start. Sampling costs n network calls, the
same NFE as the 2M it starts from; the plan is (n - 1) levels + about 3 n weights, JSON round-trippable.

why learned, not derived: at 5-10 calls a step is too long for a Taylor expansion to model D in lam
(multistep.py's docstring), and the fixed weights of every classical solver are then a guess; the error
that matters can be measured on a few thousand calibration noises and the weights fitted to it.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor

from diffspace.samplers.grids import check_grid
from diffspace.samplers.multistep import dpmpp_2m_weight
from diffspace.samplers.ode import Callback, sample_adaptive, sigma_batch
from diffspace.types import Denoiser, UserError
from diffspace.utils import lincomb


class LearnedSolver(NamedTuple):
    """A learned plan: the float64 grid (n + 1 levels ending in 0), beta[i] (the weights of D_{i-j} - D_i,
    j = 1..len(beta[i]), len(beta[i]) <= i) and gamma[i] (the corrector weight applied after call i + 1;
    gamma[n - 1] is unused and 0)."""

    sigmas: Tensor
    beta: tuple[tuple[float, ...], ...]
    gamma: tuple[float, ...]

    @property
    def n_params(self) -> int:
        return len(self.sigmas) - 2 + sum(map(len, self.beta)) + len(self.gamma) - 1

    def to_json(self) -> dict:
        return {"sigmas": self.sigmas.tolist(), "beta": [list(b) for b in self.beta],
                "gamma": list(self.gamma)}

    @classmethod
    def from_json(cls, data: dict) -> "LearnedSolver":
        """Raises UserError for a bad grid or weights that do not fit its steps."""
        sigmas = check_grid(torch.tensor(data["sigmas"], dtype=torch.float64), what="stored learned grid")
        beta = tuple(tuple(float(v) for v in b) for b in data["beta"])
        gamma = tuple(float(v) for v in data["gamma"])
        n = len(sigmas) - 1
        if len(beta) != n or len(gamma) != n or any(len(b) > i for i, b in enumerate(beta)) \
                or not all(map(math.isfinite, [*gamma, *(v for b in beta for v in b)])):
            raise UserError(f"stored learned solver: its weights must be finite numbers that fit a grid "
                            f"of {n} steps")
        return cls(sigmas, beta, gamma)


def _step_weights(grid: list, beta, gamma, i: int) -> list:
    """Step i's weights on [x_i, D_i, D_{i-1}, ...]: rho (x + c (D_i - D_{i-1})) + (1 - rho) D~_i with c the
    corrector's weight (floats, or 0-d tensors while learning)."""
    rho, w = grid[i + 1] / grid[i], list(beta[i])
    c = (1 - grid[i] / grid[i - 1]) * gamma[i - 1] if i > 0 else 0.0
    weights = [rho, (1 - rho) * (1 - sum(w)) + rho * c]
    weights += [(1 - rho) * w_j - (rho * c if j == 0 else 0.0) for j, w_j in enumerate(w)]
    return weights + ([-rho * c] if i > 0 and not w else [])


def _solve(denoiser: Denoiser, x: Tensor, grid: list, beta, gamma, callback: Callback | None,
           cond: dict) -> Tensor:
    """The solver of the module docstring on `grid` (floats, or 0-d tensors while learning); beta[i] and
    gamma[i] are sequences of floats or 0-d tensors. n network calls; each step is one weighted sum over
    x and the outputs. Levels and weights are formed before the loop (why: on the CPU, host work between
    network calls runs with cold caches and costs several times what it costs here)."""
    n = len(grid) - 1
    levels = [sigma_batch(s, x) if isinstance(s, float) else s.to(x).reshape(1).expand(len(x))
              for s in grid[:-1]]
    weights = [_step_weights(grid, beta, gamma, i) for i in range(n)]
    sampling = all(isinstance(v, float) for w in weights for v in w)
    if sampling:  # one pass over the batch per step, zero weights skipped (D_i's is always there)
        weights = [[(j, v) for j, v in enumerate(w) if v != 0.0 or j == 1] for w in weights]
    keep = [max(len(beta[i + 1]) if i + 1 < n else 0, 1) for i in range(n)]  # outputs step i + 1 reads
    past: list[Tensor] = []  # D_{i-1}, D_{i-2}, ...: newest first
    for i in range(n):
        d = denoiser(x, levels[i], **cond)
        terms = [x, d, *past]
        if sampling:
            x = lincomb(*[(v, terms[j]) for j, v in weights[i]])
        else:
            x = sum(v * t for v, t in zip(weights[i], terms, strict=False))
        past = [d, *past][:keep[i]]
        if callback is not None:
            callback(i, float(grid[i]), x, d)
    return x


def sample_learned(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, solver: LearnedSolver, generator=None,
                   callback: Callback | None = None, **cond) -> Tensor:
    """The learned solver on `sigmas`; x: noise already scaled by sigmas[0]. NFE: len(sigmas) - 1.
    Raises UserError when sigmas is not the grid the solver was learned on."""
    sigmas = check_grid(sigmas)
    if sigmas.shape != solver.sigmas.shape or not torch.equal(sigmas, solver.sigmas.to(sigmas)):
        raise UserError("the solver's weights were learned on another grid; learn them for this one "
                        f"(got {len(sigmas) - 1} steps from {float(sigmas[0]):.6g})")
    return _solve(denoiser, x, sigmas.tolist(), solver.beta, solver.gamma, callback, cond)


def dpmpp_2m_beta(sigmas: Tensor, history: int) -> list[list[float]]:
    """beta of DPM-Solver++(2M) on `sigmas` with `history` - 1 weights per step where the history allows:
    -h_i / (2 h_{i-1}) on D_{i-1} ([DPM++] Alg. 2 line 7), 0 on older outputs and on the last step to 0
    (2M's lower-order final step)."""
    lv, n = sigmas.tolist(), len(sigmas) - 1
    beta = [[0.0] * min(i, history - 1) for i in range(n)]
    for i in range(1, n - 1):
        if beta[i]:
            beta[i][0] = dpmpp_2m_weight(lv[i - 1], lv[i], lv[i + 1])
    return beta


def _levels(sigmas: Tensor, log_inner: Tensor, sigma_min: float) -> list[Tensor]:
    """[sigmas[0], the interior levels exp(log_inner) clamped to [sigma_min, sigmas[0]], 0] as 0-d float64
    tensors (a grid only if they descend: `learn_solver` keeps only iterates that do)."""
    inner = log_inner.clamp(math.log(sigma_min), math.log(float(sigmas[0]))).exp()
    return [sigmas[0], *inner.unbind(), sigmas[-1]]


class _Fit:
    """Adam on the solver's parameters from one start grid; `best` is (loss, grid, beta, gamma) of the
    lowest calibration loss seen among the iterates whose levels descend."""

    def __init__(self, sigmas: Tensor, sigma_min: float, history: int, lr: float, fit_grid: bool):
        n = len(sigmas) - 1
        self.sigmas, self.sigma_min = sigmas, sigma_min
        self.beta = [torch.tensor(b, dtype=torch.float64, requires_grad=True)
                     for b in dpmpp_2m_beta(sigmas, history)]
        self.gamma = torch.zeros(n, dtype=torch.float64, requires_grad=n > 1)
        self.log_inner = sigmas[1:-1].log().requires_grad_(fit_grid and n > 1)
        self.params = [p for p in (*self.beta, self.gamma, self.log_inner) if p.requires_grad and p.numel()]
        self.opt = torch.optim.Adam(self.params, lr=lr) if self.params else None
        self.best = (math.inf, sigmas, [b.tolist() for b in self.beta], self.gamma.tolist())

    def run(self, denoiser: Denoiser, x: Tensor, target: Tensor, iters: int, cond: dict) -> float:
        """`iters` Adam steps (one evaluation without one), the best loss so far."""
        for it in range(iters + 1):
            grid = _levels(self.sigmas, self.log_inner, self.sigma_min)
            with torch.set_grad_enabled(self.opt is not None):
                out = _solve(denoiser, x, grid, self.beta, self.gamma, None, cond)
                loss = (out.double() - target).pow(2).flatten(1).sum(1).mean()
            levels = torch.stack([g.detach() for g in grid])
            value = float(loss.detach())
            if value < self.best[0] and bool((levels.diff() < 0).all()):
                self.best = (value, levels, [b.tolist() for b in self.beta], self.gamma.tolist())
            if self.opt is None or it == iters:
                break
            # why: autograd.grad, not backward: the network's own parameters must not collect gradients
            for p, g in zip(self.params, torch.autograd.grad(loss, self.params), strict=True):
                p.grad = g
            self.opt.step()
        return self.best[0]


def learn_solver(denoiser: Denoiser, x: Tensor, starts: list[Tensor], sigma_min: float, *, history: int = 3,
                 iters: int = 400, lr: float = 0.02, fit_grid: bool = True, reference: Tensor | None = None,
                 **cond) -> LearnedSolver:
    """Weights (and with `fit_grid` the interior levels) of the module docstring's solver, learned from the
    calibration noise x (B, ...) at the start grids' first level with full-batch Adam of rate `lr`, started
    from DPM-Solver++(2M) on each of `starts` (float64 grids of n steps from the same top level to 0,
    interior levels in [sigma_min, top]). The fit is not convex and its end depends on the start, so each
    start gets iters // 4 steps and the best continues for the rest (iters + 3 iters // 4 ... in all:
    about (len(starts) + 3) / 4 * iters solver runs with their gradients). `history`: outputs a step may
    combine (2: 2M's, 3: one more). reference: the adaptive PF-ODE solution from x denoised at sigma_min,
    if already computed. Returns the parameters of the lowest calibration loss seen. Raises UserError for
    bad arguments."""
    if isinstance(history, bool) or not isinstance(history, int) or history < 1 or iters < 0 or not lr > 0:
        raise UserError(f"learned solver: need history >= 1, iters >= 0, lr > 0; got {history!r}, {iters!r}, "
                        f"{lr!r}")
    starts = [check_grid(s, what="start grid") for s in starts]
    if not starts or len({(len(s), float(s[0])) for s in starts}) > 1:
        raise UserError("learned solver: need start grids of one length from one top level")
    if not 0 < sigma_min <= min(float(s[-2]) for s in starts):
        raise UserError(f"sigma_min must be in (0, the lowest nonzero level of the start grids], "
                        f"got {sigma_min}")
    if reference is None:
        with torch.no_grad():
            reference = sample_adaptive(denoiser, x, float(starts[0][0]), sigma_min, **cond)
    target = reference.detach().double()
    fits = [_Fit(s, sigma_min, history, lr, fit_grid) for s in starts]
    losses = [f.run(denoiser, x, target, iters // 4, cond) for f in fits]
    fit = fits[losses.index(min(losses))]
    fit.run(denoiser, x, target, iters - iters // 4, cond)
    _, grid, beta, gamma = fit.best
    gamma[-1] = 0.0
    return LearnedSolver(check_grid(grid, what="learned grid"), tuple(map(tuple, beta)), tuple(gamma))
