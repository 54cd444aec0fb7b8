"""The DDPM discrete-time schedule ([DDPM] Sec. 4: T = 1000, beta linear 1e-4..0.02) as a path, built
from its betas, from an existing `alphas_cumprod` table, or from a diffusers `scheduler_config.json`.

Timestep n in {0..T-1} (diffusers' indexing, alphas_cumprod[n] = prod_{i<=n} (1 - beta_i)) sits at
t = (n + 1) / T. Between timesteps, log of the EDM noise level is linear in t, which is exactly the
interpolation diffusers uses for fractional timesteps (`_sigma_to_t`), so a network trained the
diffusers way sees the same conditioning here. Below t = 1/T the first segment is extended.

A network trained with diffusers saw diffusers' float32 table (betas and their cumulative product in
float32); the float64 rebuild of the same betas differs from it by up to 8e-5 in log sigma. Build the
path from the table the network was trained with (`DDPMDiscrete.from_alphas_cumprod`,
`ddpm_from_scheduler_config`) and the noise levels it is shown are the ones it learned.
References: [DDPM] arXiv 2006.11239v2, [IDDPM] 2102.09672v1 (cosine schedule), [LDM] 2112.10752v2
(scaled_linear), [ZSNR] 2305.08891v4.
"""

import math
from pathlib import Path

import torch
from torch import Tensor

from diffspace.files import read_json
from diffspace.paths.base import GaussianPath
from diffspace.types import UserError

# why: a table point reaches the network as its exact integer timestep. A grid value at timestep k that
# went through float32 (samplers hand the Denoiser sigma in x's dtype) comes back from sigma -> t within
# 2^-24 / min_k (log sigma_{k+1} - log sigma_k) = 1.2e-5 timesteps for the default table; 1e-3 leaves a
# margin, and moving a non-table point by at most 1e-3 timesteps changes nothing a network can see.
TABLE_SNAP = 1e-3


class DDPMDiscrete(GaussianPath):
    """The table of `num_timesteps` linear betas from beta_start to beta_end, computed in float64.

    `DDPMDiscrete.from_alphas_cumprod(table)` uses a given table instead (see the module docstring).
    """

    name = "ddpm"

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        self._use_table(torch.cumprod(1 - betas, 0),
                        f"num_timesteps={num_timesteps}, beta_start={beta_start}, beta_end={beta_end}")

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod, source: str = "a table") -> "DDPMDiscrete":
        """The path of an existing table (e.g. the float32 `alphas_cumprod` a network was trained with),
        kept exactly (float64 holds every float32 value). Raises UserError unless the table is 1-D with at
        least 2 finite values strictly decreasing inside (0, 1)."""
        path = cls.__new__(cls)
        path._use_table(check_alphas_cumprod(alphas_cumprod, source), f"alphas_cumprod from {source}")
        return path

    def _use_table(self, alphas_cumprod: Tensor, description: str) -> None:
        self._set_log_sigmas(alphas_cumprod, 0.5 * torch.log((1 - alphas_cumprod) / alphas_cumprod))
        self._description = description

    def _set_log_sigmas(self, alphas_cumprod: Tensor, log_sigmas: Tensor) -> None:
        self.T = len(alphas_cumprod)
        self.alphas_cumprod = alphas_cumprod
        self.betas = 1 - alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        self.log_sigmas = log_sigmas  # log EDM sigma at the knots t_n = (n + 1) / T
        self.t_min, self.t_max = 1.0 / self.T, 1.0
        self._on_device: dict = {}

    def _knots(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log sigma at the knots, its increments, the inner knots) on like's device and dtype.

        why: copied there once, not on every call (a host-to-device copy per network call on a GPU)."""
        key = (like.device, like.dtype)
        if key not in self._on_device:
            ls = self.log_sigmas.to(like.device, like.dtype)
            self._on_device[key] = (ls, ls.diff(), ls[1:-1].contiguous())
        return self._on_device[key]

    def timestep_from_t(self, t: Tensor) -> Tensor:
        return t * self.T - 1

    def t_from_timestep(self, n: Tensor) -> Tensor:
        return (n + 1) / self.T

    def noise_cond(self, t: Tensor) -> Tensor:
        """The timestep, exactly the table's integer within TABLE_SNAP of one (fractional elsewhere)."""
        n = self.timestep_from_t(t)
        k = n.round()
        return torch.where((n - k).abs() <= TABLE_SNAP, k, n)

    def _log_sigma(self, t: Tensor):
        """log sigma(t) and its slope d log sigma / dt, linear between knots (extended at both ends)."""
        ls, inc, _ = self._knots(t)
        pos = self.timestep_from_t(t)
        i = pos.floor().clamp(0, self.T - 2).long()
        return ls[i] + (pos - i) * inc[i], inc[i] * self.T

    def sigma(self, t):
        return torch.exp(self._log_sigma(t)[0])

    def alpha_t(self, t):
        return self.alpha_from_sigma(self.sigma(t))

    def sigma_t(self, t):
        s = self.sigma(t)
        return s * torch.rsqrt(1 + s**2)

    def alpha_from_sigma(self, sigma: Tensor) -> Tensor:
        return torch.rsqrt(1 + sigma**2)  # variance preserving: alpha^2 (1 + sigma^2) = 1

    def d_alpha_t(self, t):
        # alpha = (1 + s^2)^(-1/2), ds/dt = s * slope
        log_s, slope = self._log_sigma(t)
        s = torch.exp(log_s)
        return -(s**2) * slope * (1 + s**2) ** -1.5

    def d_sigma_t(self, t):
        log_s, slope = self._log_sigma(t)
        s = torch.exp(log_s)
        return s * slope * (1 + s**2) ** -1.5

    def logsnr(self, t):
        return -2 * self._log_sigma(t)[0]

    def t_from_logsnr(self, logsnr):
        return self._t_from_log_sigma(-0.5 * logsnr)

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        return self._t_from_log_sigma(torch.log(sigma))

    def _t_from_log_sigma(self, log_s: Tensor) -> Tensor:
        ls, inc, inner = self._knots(log_s)
        i = torch.searchsorted(inner, log_s.contiguous())  # segment [ls_i, ls_i+1], the end ones extended
        return self.t_from_timestep(i + (log_s - ls[i]) / inc[i])

    def __repr__(self):
        return f"{type(self).__name__}({self._description})"


class DDPMZeroTerminalSNR(DDPMDiscrete):
    """A DDPM table rescaled to zero terminal SNR ([ZSNR] arXiv 2305.08891v4). [ZSNR] Alg. 1: shift and
    scale sqrt(alphas_cumprod) so its last value is 0 and its first is unchanged.

    why: in sigma space a zero terminal SNR is sigma = inf, which no sampler can start from. The last
    log sigma is instead continued by the table's last increment (sigma_T = sigma_{T-1}^2 / sigma_{T-2},
    about 3e4 for the default betas), finite and still increasing. (diffusers' Euler sets the last
    alphas_cumprod to 2^-24, which for these betas is larger than the one before it: sigma_T < sigma_{T-1}.)
    Zero terminal SNR is meant for v- or x0-prediction: eps cannot be read back at alpha_t = 0.
    """

    name = "ddpm_zsnr"

    def _use_table(self, alphas_cumprod: Tensor, description: str) -> None:
        root = alphas_cumprod.sqrt()
        root = (root - root[-1]) * root[0] / (root[0] - root[-1])  # [ZSNR] Alg. 1
        log_sigmas = 0.5 * torch.log((1 - root[:-1] ** 2) / root[:-1] ** 2)
        log_sigmas = torch.cat([log_sigmas, 2 * log_sigmas[-1:] - log_sigmas[-2:-1]])
        self._set_log_sigmas(torch.sigmoid(-2 * log_sigmas), log_sigmas)  # alpha^2 = 1 / (1 + sigma^2)
        self._description = description


def check_alphas_cumprod(alphas_cumprod, source: str = "a table") -> Tensor:
    """The table as float64; UserError unless 1-D, >= 2 finite values, strictly decreasing in (0, 1)."""
    table = torch.as_tensor(alphas_cumprod).detach().cpu().to(torch.float64)
    if table.ndim != 1 or len(table) < 2:
        raise UserError(f"alphas_cumprod from {source}: expected a 1-D table of at least 2 values, "
                        f"got shape {tuple(table.shape)}")
    bad = ~torch.isfinite(table) | (table <= 0) | (table >= 1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise UserError(f"alphas_cumprod from {source}: values must lie in (0, 1), got {float(table[i])!r} "
                        f"at timestep {i}")
    if (table.diff() >= 0).any():
        i = int((table.diff() >= 0).nonzero()[0])
        raise UserError(f"alphas_cumprod from {source}: values must strictly decrease, got "
                        f"{float(table[i])!r} then {float(table[i + 1])!r} at timestep {i}")
    return table


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> list[float]:
    """[IDDPM] Eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) pi/2), s = 0.008;
    beta_t = min(1 - alpha_bar_t / alpha_bar_{t-1}, 0.999) (the clipping of [IDDPM] Sec. 3.2). Python
    floats (float64), in the order of operations of diffusers' `squaredcos_cap_v2`, which rounds them to
    float32 afterwards."""
    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_timesteps
    return [min(1 - f((i + 1) / n) / f(i / n), max_beta) for i in range(n)]


def _betas_float32(cfg: dict, source: str) -> Tensor:
    """The float32 betas of a diffusers scheduler config (what its schedulers compute)."""
    n, b0, b1 = cfg["num_train_timesteps"], cfg["beta_start"], cfg["beta_end"]
    if cfg["trained_betas"] is not None:
        return torch.tensor(cfg["trained_betas"], dtype=torch.float32)
    kind = cfg["beta_schedule"]
    if kind == "linear":  # [DDPM] Sec. 4
        return torch.linspace(b0, b1, n, dtype=torch.float32)
    if kind == "scaled_linear":  # [LDM]: linear in sqrt(beta)
        return torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float32) ** 2
    if kind == "squaredcos_cap_v2":
        return torch.tensor(cosine_betas(n), dtype=torch.float32)
    raise UserError(f"{source}: beta_schedule {kind!r} is not supported; choose one of linear, "
                    "scaled_linear, squaredcos_cap_v2 (or give trained_betas)")


CONFIG_DEFAULTS = {  # the keys a path reads, with diffusers' DDPMScheduler defaults
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "rescale_betas_zero_snr": False}


def ddpm_from_scheduler_config(config: dict | str | Path) -> DDPMDiscrete:
    """The path of a diffusers scheduler config (a `scheduler_config.json` file, or its dict), with
    the table diffusers builds from it bit for bit: float32 betas (`trained_betas`, or `beta_schedule`
    linear / scaled_linear / squaredcos_cap_v2 with num_train_timesteps, beta_start, beta_end) and
    alphas_cumprod = cumprod(1 - betas) in float32. Keys a path does not need (timestep spacing,
    prediction type, ...) are ignored. With `rescale_betas_zero_snr` the result is a
    DDPMZeroTerminalSNR rescaled in float64 from that table (its entries agree with diffusers' float32
    rescale to float32 precision, its last one is finite; see DDPMZeroTerminalSNR).

    Raises UserError for a missing or malformed file, a value of the wrong type, an unsupported
    beta_schedule, or a table that is not strictly decreasing in (0, 1)."""
    source = str(config) if not isinstance(config, dict) else "a scheduler config"
    if not isinstance(config, dict):
        try:
            config = read_json(Path(config))
        except UserError as e:
            raise UserError(f"the scheduler config {e}") from None
    cfg = CONFIG_DEFAULTS | {k: v for k, v in config.items() if k in CONFIG_DEFAULTS}
    for key, kinds in (("num_train_timesteps", int), ("beta_start", (int, float)), ("beta_end", (int, float)),
                       ("beta_schedule", str), ("rescale_betas_zero_snr", bool)):
        if not isinstance(cfg[key], kinds) or (kinds is int and isinstance(cfg[key], bool)):
            raise UserError(f"{source}: {key} = {cfg[key]!r} has the wrong type")
    betas = _betas_float32(cfg, source)
    table = torch.cumprod(1.0 - betas, dim=0)  # float32, as diffusers computes it
    cls = DDPMZeroTerminalSNR if cfg["rescale_betas_zero_snr"] else DDPMDiscrete
    return cls.from_alphas_cumprod(table, source)
