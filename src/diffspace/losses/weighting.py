"""Loss weightings, all stated as w(sigma) on the x0 MSE (docs/design.md):

    ||eps_hat - eps||^2 = SNR ||x0_hat - x0||^2 with SNR = alpha_t^2 / sigma_t^2 = 1 / sigma^2,

so a weighting written for another target is the x0 weight below (sigma = EDM noise level).
"""

from torch import Tensor


def eps_weight(sigma: Tensor) -> Tensor:
    """[DDPM] "simple" eps-MSE: w = SNR."""
    return sigma**-2


def v_weight(sigma: Tensor) -> Tensor:
    """[PD] v-MSE on a VP path: ||v_hat - v||^2 = (SNR + 1) ||x0_hat - x0||^2."""
    return sigma**-2 + 1


def min_snr_weight(sigma: Tensor, gamma: float = 5.0) -> Tensor:
    """[MINSNR] Eq. 9 (gamma = 5, Sec. 4): eps-MSE times min(SNR, gamma) / SNR, i.e. w = min(SNR, gamma)."""
    return (sigma**-2).clamp(max=gamma)


def edm_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """[EDM] Eq. 8 / Table 1: lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def uniform_weight(sigma: Tensor) -> Tensor:
    """Plain x0-MSE."""
    return sigma.new_ones(sigma.shape)


WEIGHTINGS = {"eps": eps_weight, "v": v_weight, "min_snr": min_snr_weight, "edm": edm_weight,
              "uniform": uniform_weight}
