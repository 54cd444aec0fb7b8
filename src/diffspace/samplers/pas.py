"""A PCA-direction correction of Euler (DDIM) steps with a few coordinates learned on a calibration
batch, after PAS: [PAS] Wang et al., "Diffusion Sampling Correction via Approximately 10 Parameters",
arXiv 2411.06503 (the id the authors' repository gives; REFERENCES.md lists 2411.16318). Written from
the method as the authors' README and code describe it; no section numbers are cited because the
paper's text was not at hand.

An Euler step in sigma ([EDM] Alg. 1) moves x_i along d_i = (x_i - D(x_i, sigma_i)) / sigma_i. Sampling
trajectories lie close to a low-dimensional subspace ([PAS], [GITS] arXiv 2405.11326), so
the truncation error of the step is corrected inside the span of a few per-example basis vectors
([PAS]): u_1 = d_i / |d_i|, then the top principal directions of the example's own history
[x_T / sigma_0, d_0, ..., d_i] (centred; x_T in direction units, [PAS]'s "use x_T"), Gram-Schmidt
orthonormalized against the earlier ones and signed to point along x_i - x_T (their sign rule). The
corrected direction is

    d~_i = |d_i| sum_k c_{i,k} u_k,

with coordinates c_i shared by every example, so one step costs k numbers. Learning runs step by
step along the corrected trajectory of the calibration batch: c_i minimizes the mean squared distance
of x_{i+1} to the adaptive PF-ODE solution at sigma_{i+1}; a step keeps its coordinates only when
that lowers the error by more than a relative `tol` (the adaptive search of [PAS]); the others stay
plain Euler steps and store nothing.

Two choices differ from the paper, each for a reason. The coordinates are relative to |d_i| and start
at (1, 0, ...) (the uncorrected step for every example), where [PAS] uses absolute coordinates started
at the batch-mean norm: in low dimensions norms spread and that start changes every step. The step is
linear in c, so c is the least-squares solution in closed form (the basis is orthonormal: one division
per coordinate) instead of SGD: exact, deterministic, free. No network calls are added: sampling costs
the Euler NFE (n), learning the reference solve plus n calls.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from diffspace.samplers.grids import check_grid
from diffspace.samplers.ode import Callback, slope
from diffspace.samplers.optimize_grid import reference_trajectory
from diffspace.types import Denoiser, UserError

RANK_RTOL = 1e-6  # why: a direction of relative size below this is round-off, not a principal direction


class PASCorrection(NamedTuple):
    """Learned coordinates per corrected step of one grid: sigmas (float64 grid), k basis vectors,
    coords {step index: [c_1..c_k]}."""

    sigmas: Tensor
    k: int
    coords: dict[int, list[float]]

    @property
    def n_params(self) -> int:
        return self.k * len(self.coords)

    def to_json(self) -> dict:
        return {"sigmas": self.sigmas.tolist(), "k": self.k,
                "coords": {str(i): c for i, c in sorted(self.coords.items())}}

    @classmethod
    def from_json(cls, data: dict) -> "PASCorrection":
        """Raises UserError for a bad grid, or coordinates that do not fit its steps and k."""
        sigmas = check_grid(torch.tensor(data["sigmas"], dtype=torch.float64), what="stored PAS grid")
        k, coords = int(data["k"]), {int(i): [float(v) for v in c] for i, c in data["coords"].items()}
        if k < 1 or any(not 0 <= i < len(sigmas) - 1 or len(c) != k for i, c in coords.items()):
            raise UserError(f"stored PAS coordinates do not fit {len(sigmas) - 1} steps of {k} coordinates")
        return cls(sigmas, k, coords)


def _orthonormal(vectors: list[Tensor]) -> Tensor:
    """Gram-Schmidt of (B, D) vectors in order, (B, K, D); a vector with (relatively) nothing left is 0."""
    basis: list[Tensor] = []
    for v in vectors:
        size = v.norm(dim=1, keepdim=True)
        for u in basis:
            v = v - (v * u).sum(1, keepdim=True) * u
        norm = v.norm(dim=1, keepdim=True)
        basis.append(torch.where(norm > RANK_RTOL * size, v / norm.clamp_min(torch.finfo(v.dtype).tiny), 0.0))
    return torch.stack(basis, 1)


def _principal(stacked: Tensor) -> tuple[Tensor, Tensor]:
    """The singular values (B, r), descending, and principal directions (B, r, D) of each example's
    centred rows (B, m, D), r = min(m, D), in float64: from the eigenvectors of the smaller of the
    covariance C^T C (D, D) and the Gram matrix C C^T (m, m), whose eigenvalues are the squared singular
    values. why: the same directions as the SVD of C, which costs 1.2 to 3 times more for the small
    matrices of a history (m <= steps + 1, and D of a few coordinates or many pixels; one CPU thread)."""
    c = stacked.double()
    c = c - c.mean(1, keepdim=True)
    m, dim = c.shape[1:]
    eig, vec = torch.linalg.eigh(c.mT @ c if dim <= m else c @ c.mT)  # ascending
    s = eig.flip(-1).clamp_min(0.0).sqrt()
    vec = vec.flip(-1)
    if dim <= m:
        return s, vec.mT
    return s, (vec.mT @ c) / s.clamp_min(torch.finfo(c.dtype).tiny)[..., None]


def direction_basis(history: list[Tensor], d: Tensor, x: Tensor, x_start: Tensor, k: int) -> Tensor:
    """The k per-example basis vectors (B, k, D) of [PAS] for the current direction d (B, D):
    d / |d|, then the top k - 1 principal directions of the centred history (B, m, D), Gram-Schmidt
    orthonormalized and signed along x - x_start; directions the history lacks are 0."""
    s, vh = _principal(torch.stack(history, 1))
    keep = s > RANK_RTOL * d.norm(dim=1, keepdim=True)  # why: centred rank-deficient histories
    pcs = [torch.where(keep[:, j:j + 1], vh[:, j], 0.0).to(d) for j in range(min(k - 1, vh.shape[1]))]
    pcs += [torch.zeros_like(d)] * (k - 1 - len(pcs))
    basis = _orthonormal([d, *pcs])
    drift = x - x_start
    sign = torch.where((basis * drift[:, None]).sum(2, keepdim=True) < 0, -1.0, 1.0)
    sign[:, 0] = 1.0  # u_1 is the direction itself
    return basis * sign


def _corrected(d: Tensor, basis: Tensor, coords: Tensor) -> Tensor:
    """|d| sum_k c_k u_k, (B, D)."""
    return d.norm(dim=1, keepdim=True) * torch.einsum("bkd,k->bd", basis, coords.to(d))


def _fit(x: Tensor, d: Tensor, basis: Tensor, h: float, target: Tensor) -> Tensor:
    """argmin_c mean_b |x_b + h |d_b| U_b^T c - target_b|^2 in closed form: U_b has orthonormal (or
    zero) rows, so the normal equations are diagonal."""
    scale = h * d.norm(dim=1)  # (B,)
    rhs = torch.einsum("bkd,bd,b->k", basis, target - x, scale)
    gram = torch.einsum("bkd,bkd,b->k", basis, basis, scale**2)
    return torch.where(gram > 0, rhs / gram.clamp_min(torch.finfo(gram.dtype).tiny), 0.0)


def _flat(x: Tensor) -> Tensor:
    return x.flatten(1)


def check_pas_options(k: int, tol: float) -> None:
    """UserError unless k >= 1 basis vectors (an int) and 0 <= tol < 1."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or not 0 <= tol < 1:
        raise UserError(f"PAS needs k >= 1 basis vectors and 0 <= tol < 1, got k={k!r}, tol={tol!r}")


def learn_pas(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, k: int = 4, tol: float = 1e-2,
              reference: Tensor | None = None, **cond) -> PASCorrection:
    """Coordinates for Euler on `sigmas` from the calibration noise x (scaled to sigmas[0]); see the
    module docstring. reference: reference_trajectory(denoiser, x, sigmas) if already computed.
    Raises UserError for k < 1 or tol outside [0, 1)."""
    check_pas_options(k, tol)
    sigmas = check_grid(sigmas, what="PAS grid")
    grid = sigmas.tolist()
    with torch.no_grad():
        ref = reference_trajectory(denoiser, x, sigmas, **cond) if reference is None else reference
        x_start, coords, history = _flat(x), {}, [_flat(x) / grid[0]]
        for i in range(len(grid) - 1):
            d = _flat(slope(denoiser, x, grid[i], cond))
            history.append(d.clone())  # why: d may be the network's output buffer (`ode.slope`)
            h, target = grid[i + 1] - grid[i], _flat(ref[i + 1])
            basis = direction_basis(history, d, _flat(x), x_start, k)
            c = _fit(_flat(x), d, basis, h, target)
            plain, fitted = _flat(x) + h * d, _flat(x) + h * _corrected(d, basis, c)
            keep = (fitted - target).pow(2).sum() < (1 - tol) * (plain - target).pow(2).sum()
            if keep:
                coords[i] = c.tolist()
            x = (fitted if keep else plain).reshape(x.shape)
    return PASCorrection(sigmas, k, coords)


def sample_euler_pas(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, pas: PASCorrection, generator=None,
                     callback: Callback | None = None, **cond) -> Tensor:
    """Euler on `sigmas` with the steps of `pas` corrected; x: noise already scaled by sigmas[0]. NFE:
    the Euler NFE (one per step). Raises UserError when sigmas is not the grid `pas` was learned on."""
    sigmas = check_grid(sigmas)
    if sigmas.shape != pas.sigmas.shape or not torch.equal(sigmas, pas.sigmas.to(sigmas)):
        raise UserError("the PAS coordinates were learned on another grid; learn them for this one "
                        f"(got {len(sigmas) - 1} steps from {float(sigmas[0]):.6g})")
    grid = sigmas.tolist()
    x_start, history = _flat(x), [_flat(x) / grid[0]]
    for i in range(len(grid) - 1):
        d = _flat(slope(denoiser, x, grid[i], cond))
        history.append(d.clone())  # why: d may be the network's output buffer (`ode.slope`)
        x_prev = x
        if i in pas.coords:
            basis = direction_basis(history, d, _flat(x), x_start, pas.k)
            d = _corrected(d, basis, torch.tensor(pas.coords[i], dtype=torch.float64))
        x = (_flat(x) + (grid[i + 1] - grid[i]) * d).reshape(x.shape)
        if callback is not None:
            callback(i, grid[i], x, x_prev - grid[i] * history[-1].reshape(x.shape))  # x0_hat
    return x
