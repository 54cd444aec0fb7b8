"""The sampler registry: name -> SamplerSpec. Every fn is called the same way,

    fn(denoiser, x, sigmas, *, generator=None, callback=None, **cond_and_options)

with x the initial noise already multiplied by sigmas[0] and sigmas a float64 grid from `GRIDS`
(n steps = len(sigmas) - 1, ending in 0). `nfe(n)` is the number of network calls for such a grid.
"""

from collections.abc import Callable
from typing import NamedTuple

from diffspace.samplers import multistep, ode, sde


class SamplerSpec(NamedTuple):
    fn: Callable
    order: int  # deterministic: global order measured in tests/test_samplers_ode.py; SDE: weak order
    stochastic: bool
    nfe: Callable[[int], int] | None  # None: adaptive, set by rtol/atol
    description: str


def _per_step(k: int, last: int) -> Callable[[int], int]:
    """k NFE per step, `last` on the final step to sigma = 0."""
    return lambda n: k * (n - 1) + last


SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec(ode.sample_euler, 1, False, _per_step(1, 1), "Euler on the PF-ODE in sigma [EDM]"),
    "heun": SamplerSpec(ode.sample_heun, 2, False, _per_step(2, 1),
                        "Heun, EDM Alg. 1; Euler on the last step"),
    "midpoint": SamplerSpec(ode.sample_midpoint, 2, False, _per_step(2, 2),
                            "explicit midpoint rule in sigma"),
    "rk4": SamplerSpec(ode.sample_rk4, 4, False, _per_step(4, 1),
                       "classical RK4 in sigma; Euler on the last step"),
    "dpmpp_2m": SamplerSpec(multistep.sample_dpmpp_2m, 2, False, _per_step(1, 1),
                            "DPM-Solver++(2M), data prediction, steps in logSNR [DPM++]"),
    "dpmpp_3m": SamplerSpec(multistep.sample_dpmpp_3m, 3, False, _per_step(1, 1),
                            "DPM-Solver++ 3rd-order multistep (quadratic x0 in logSNR)"),
    "unipc": SamplerSpec(multistep.sample_unipc, 3, False, _per_step(1, 1),
                         "UniPC: 2nd-order UniP + UniC corrector, order 3 at 1 NFE/step [UniPC]"),
    "deis": SamplerSpec(multistep.sample_deis, 3, False, _per_step(1, 1),
                        "DEIS rho-AB3 = linear multistep (LMS) in sigma on eps [DEIS]"),
    "rk45": SamplerSpec(ode.sample_rk45, 5, False, None,
                        "adaptive Dormand-Prince (torchdiffeq), rtol/atol; uses only the grid's ends"),
    "ddim": SamplerSpec(sde.sample_ddim, 1, False, _per_step(1, 1),
                        "DDIM(eta), eta=0 default (= Euler in sigma); eta>0 needs a generator [DDIM]"),
    "ddpm": SamplerSpec(sde.sample_ddpm, 1, True, _per_step(1, 1),
                        "ancestral, exact posterior q(x_s|x_t,x0) = DDIM(eta=1) [DDPM]"),
    "euler_ancestral": SamplerSpec(sde.sample_ddpm, 1, True, _per_step(1, 1),
                                   "Euler ancestral: the same update as ddpm in sigma space (alias)"),
    "euler_maruyama": SamplerSpec(sde.sample_euler_maruyama, 1, True, _per_step(1, 1),
                                  "Euler-Maruyama on the reverse SDE [SDE]"),
    "edm_sde": SamplerSpec(sde.sample_edm_sde, 1, True, _per_step(2, 1),
                           "EDM Alg. 2 (S_churn, S_tmin, S_tmax, S_noise), Heun steps"),
    "dpmpp_2m_sde": SamplerSpec(sde.sample_dpmpp_2m_sde, 1, True, _per_step(1, 1),
                                "SDE-DPM-Solver++(2M) [DPM++]"),
    "pc": SamplerSpec(sde.sample_pc, 1, True, _per_step(2, 1),
                      "predictor-corrector: Euler-Maruyama + Langevin corrector (snr) [SDE]"),
}


def describe_samplers() -> str:
    """A plain-text table of the samplers (for `diffspace samplers`)."""
    rows = [("name", "order", "stochastic", "NFE(n steps)", "description")]
    for name, s in SAMPLERS.items():
        nfe = "adaptive" if s.nfe is None else _nfe_rule(s.nfe)
        rows.append((name, str(s.order), "yes" if s.stochastic else "no", nfe, s.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
                     for r in rows)


def _nfe_rule(nfe: Callable[[int], int]) -> str:
    """'k*n - j' read off the rule's values (every rule here is affine in n)."""
    k, j = nfe(2) - nfe(1), nfe(1) - (nfe(2) - nfe(1))
    kn = "n" if k == 1 else f"{k}n"
    return kn if j == 0 else f"{kn}{j:+d}"
