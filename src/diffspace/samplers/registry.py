"""The sampler registry: name -> SamplerSpec. Every fn is called the same way,

    fn(denoiser, x, sigmas, *, generator=None, callback=None, **cond_and_options)

with x the initial noise already multiplied by sigmas[0] and sigmas a float64 grid from `GRIDS`
(n steps = len(sigmas) - 1, ending in 0). `nfe(n)` is the number of network calls for such a grid.
`options` describes the sampler's own keyword options (name, type, default, meaning, allowed range), so
a caller can validate a `sampler_options` dict (`check_sampler_options`) and a command line can make
one flag per option.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

from diffspace.samplers import fewstep, multistep, ode, sde
from diffspace.types import UserError


class SamplerOption(NamedTuple):
    """One keyword option of a sampler: its type (bool, int or float), default, meaning and the closed
    range [low, high] a number must lie in."""

    name: str
    type: type
    default: bool | int | float
    meaning: str
    low: float = -math.inf
    high: float = math.inf


LOWER_ORDER_FINAL = SamplerOption(
    "lower_order_final", bool, True,
    "lower the order of the last steps of a grid of fewer than 15 steps (DPM-Solver's trick)")


class SamplerSpec(NamedTuple):
    fn: Callable
    order: int  # deterministic: global order measured in tests/test_samplers_ode.py; SDE: weak order
    stochastic: bool
    nfe: Callable[[int], int] | None  # None: adaptive, set by rtol/atol
    description: str
    options: tuple[SamplerOption, ...] = ()


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
                            "DPM-Solver++(2M), data prediction, steps in logSNR [DPM++]",
                            (LOWER_ORDER_FINAL,)),
    "dpmpp_3m": SamplerSpec(multistep.sample_dpmpp_3m, 3, False, _per_step(1, 1),
                            "DPM-Solver++ 3rd-order multistep (quadratic x0 in logSNR)",
                            (LOWER_ORDER_FINAL,)),
    "unipc": SamplerSpec(multistep.sample_unipc, 3, False, _per_step(1, 1),
                         "UniPC: 2nd-order UniP + UniC corrector, order 3 at 1 NFE/step [UniPC]",
                         (SamplerOption("order", int, 2, "order of the predictor UniP (the corrector adds "
                                        "one)", 1, 3), LOWER_ORDER_FINAL)),
    "deis": SamplerSpec(multistep.sample_deis, 3, False, _per_step(1, 1),
                        "DEIS rho-AB3 = linear multistep (LMS) in sigma on eps [DEIS]",
                        (SamplerOption("order", int, 3, "number of past eps values extrapolated", 1, 4),
                         LOWER_ORDER_FINAL)),
    "rk45": SamplerSpec(ode.sample_rk45, 5, False, None,
                        "adaptive Dormand-Prince (torchdiffeq), rtol/atol; uses only the grid's ends",
                        (SamplerOption("rtol", float, 1e-5, "relative tolerance of each step", 1e-12),
                         SamplerOption("atol", float, 1e-5, "absolute tolerance of each step", 1e-12))),
    "ddim": SamplerSpec(sde.sample_ddim, 1, False, _per_step(1, 1),
                        "DDIM(eta), eta=0 default (= Euler in sigma); eta>0 needs a generator [DDIM]",
                        (SamplerOption("eta", float, 0.0, "fraction of the posterior noise kept (0: ODE, "
                                       "1: DDPM ancestral)", 0.0, 1.0),)),
    "ddpm": SamplerSpec(sde.sample_ddpm, 1, True, _per_step(1, 1),
                        "ancestral, exact posterior q(x_s|x_t,x0) = DDIM(eta=1) [DDPM]"),
    "euler_ancestral": SamplerSpec(sde.sample_ddpm, 1, True, _per_step(1, 1),
                                   "Euler ancestral: the same update as ddpm in sigma space (alias)"),
    "euler_maruyama": SamplerSpec(sde.sample_euler_maruyama, 1, True, _per_step(1, 1),
                                  "Euler-Maruyama on the reverse SDE [SDE]"),
    "edm_sde": SamplerSpec(sde.sample_edm_sde, 1, True, _per_step(2, 1),
                           "EDM Alg. 2 (S_churn, S_tmin, S_tmax, S_noise), Heun steps",
                           (SamplerOption("s_churn", float, 40.0, "total noise added back over the grid "
                                          "(gamma = min(s_churn / n, sqrt 2 - 1) per step)", 0.0),
                            SamplerOption("s_tmin", float, 0.05, "lowest sigma that gets noise", 0.0),
                            SamplerOption("s_tmax", float, 50.0, "highest sigma that gets noise", 0.0),
                            SamplerOption("s_noise", float, 1.0, "scale of the added noise", 0.0))),
    "dpmpp_2m_sde": SamplerSpec(sde.sample_dpmpp_2m_sde, 1, True, _per_step(1, 1),
                                "SDE-DPM-Solver++(2M) [DPM++]", (LOWER_ORDER_FINAL,)),
    "pc": SamplerSpec(sde.sample_pc, 1, True, _per_step(2, 1),
                      "predictor-corrector: Euler-Maruyama + Langevin corrector (snr) [SDE]",
                      (SamplerOption("snr", float, 0.16, "signal-to-noise ratio of the Langevin corrector "
                                     "step", 0.0),)),
    "flow_map": SamplerSpec(fewstep.sample_map_jumps, 1, False, _per_step(1, 1),
                            "N jumps of an average-velocity map [MEANFLOW] (runs of model.parameterization = "
                            "average_velocity; a Denoiser without jump: Euler steps); grid uniform_t_jumps"),
    "consistency": SamplerSpec(fewstep.sample_consistency, 1, True, _per_step(1, 1),
                               "multistep consistency sampling, [CM] Alg. 1 (stochastic beyond one step; "
                               "runs of model.parameterization = consistency); grid karras_jumps",
                               (SamplerOption("boundary", float, 0.002, "[CM]'s epsilon, the consistency "
                                              "function's sigma_min (f(x, epsilon) = x)", 0.0),)),
}


def check_sampler_options(name: str, options: dict | None) -> dict:
    """The options dict for sampler `name`, each value checked against its SamplerOption (type, range)
    and missing ones filled with their defaults. Raises UserError with one line naming the sampler,
    the option and what was expected (an unknown sampler or option, a wrong type, a value out of range)."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    known = {o.name: o for o in SAMPLERS[name].options}
    unknown = sorted(set(options or {}) - set(known))
    if unknown:
        has = ", ".join(known) or "none"
        raise UserError(f"sampler {name!r} has no option {unknown[0]!r}; its options: {has}")
    out = {}
    for key, opt in known.items():
        value = (options or {}).get(key, opt.default)
        out[key] = _check_option(name, opt, value)
    return out


def _check_option(sampler: str, opt: SamplerOption, value):
    numeric = opt.type in (int, float) and not isinstance(value, bool)
    if opt.type is bool and isinstance(value, bool):
        return value
    if numeric and (isinstance(value, int) or (opt.type is float and isinstance(value, float))):
        value = opt.type(value)
        if opt.low <= value <= opt.high:
            return value
        raise UserError(f"option {opt.name} of sampler {sampler!r} must lie in [{opt.low:g}, {opt.high:g}], "
                        f"got {value!r}")
    raise UserError(f"option {opt.name} of sampler {sampler!r} must be {opt.type.__name__}, got {value!r}")


def describe_samplers() -> str:
    """A plain-text table of the samplers and their options with defaults (for `diffspace samplers`)."""
    rows = [("name", "order", "stochastic", "NFE(n steps)", "description")]
    for name, s in SAMPLERS.items():
        nfe = "adaptive" if s.nfe is None else _nfe_rule(s.nfe)
        opts = "; options: " + ", ".join(f"{o.name}={o.default}" for o in s.options) if s.options else ""
        rows.append((name, str(s.order), "yes" if s.stochastic else "no", nfe, s.description + opts))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
                     for r in rows)


def _nfe_rule(nfe: Callable[[int], int]) -> str:
    """'k*n - j' read off the rule's values (every rule here is affine in n)."""
    k, j = nfe(2) - nfe(1), nfe(1) - (nfe(2) - nfe(1))
    kn = "n" if k == 1 else f"{k}n"
    return kn if j == 0 else f"{kn}{j:+d}"


def nfe_steps(sampler: str, nfe: int) -> tuple[int, int]:
    """(steps, NFE): the most steps whose NFE rule makes at most `nfe` network calls, and those calls.
    UserError for an unknown or adaptive sampler (no fixed NFE) or an `nfe` below one step's."""
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    rule = SAMPLERS[sampler].nfe
    if rule is None:
        raise UserError(f"sampler {sampler!r} is adaptive (no fixed NFE); choose another with --sampler")
    if rule(1) > nfe:
        raise UserError(f"sampler {sampler!r} needs at least {rule(1)} NFE for one step, asked for {nfe}")
    steps = 1
    while rule(steps + 1) <= nfe:
        steps += 1
    return steps, rule(steps)
