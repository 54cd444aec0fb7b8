"""Forward processes of token data, the discrete counterpart of `paths/`: each token is kept with
probability alpha_t (the schedule, 1 at t = 0) and otherwise corrupted, independently per position.

- `Absorbing`: a corrupted token becomes the mask token and stays so ([D3PM] absorbing state, arXiv
  2107.03006v3; [MDLM] Eq. 2, arXiv 2406.07524v2). NELBO weight of a masked token:
  -alpha'_t / (1 - alpha_t) ([MDLM] Eq. 10; [MD4] Eq. 5, arXiv 2406.04329v4). MDLM, LLaDA, BD3-LM and
  SEDD's absorbing process use it.
- `Uniform`: a corrupted token is replaced by one drawn uniformly from the n_tokens data tokens, the
  process of rate matrix Q = 11^T / V - I ([SEDD] Sec. 3, arXiv 2310.16834v3). Its score-entropy weight
  is SEDD's rate sigma(t) = -alpha'_t / alpha_t (times Q's 1/V per transition, in the loss). It needs
  alpha_t > 0: at alpha_t = 0 every ratio is 1 whatever the data and the rate is infinite.

Every corruption takes its randomness as tensors (uniforms u, replacement tokens y) drawn by the caller,
so a loss is a deterministic function of its batch.
"""

import torch
from torch import Tensor

from diffspace import rng
from diffspace.discrete.schedules import Schedule


class Process:
    """A schedule alpha_t and a way to corrupt tokens (the subclasses)."""

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def alpha(self, t: Tensor) -> Tensor:
        return self.schedule.alpha(t)

    def draw(self, n: int, seq_len: int, g: torch.Generator) -> dict[str, Tensor]:
        """Randomness of `corrupt` beyond t and the uniforms u (none unless a subclass says so)."""
        return {}

    @staticmethod
    def schedule_problem(schedule: Schedule) -> str | None:
        """Why a schedule cannot serve the process; None: it can (at alpha = 0 every formula is taken as
        its limit)."""
        return None


class Absorbing(Process):
    """The masked (absorbing) process of a schedule; the mask token is `mask_id`."""

    def __init__(self, schedule: Schedule, mask_id: int):
        super().__init__(schedule)
        self.mask_id = mask_id

    def weight(self, t: Tensor) -> Tensor:
        """-alpha'_t / (1 - alpha_t): the NELBO weight of a masked token ([MDLM] Eq. 10); infinite at t = 0,
        where no token is masked."""
        return -self.schedule.d_alpha(t) / (1 - self.schedule.alpha(t))

    def corrupt(self, x0: Tensor, t: Tensor, u: Tensor) -> Tensor:
        """[MDLM] Eq. 2: x_t for x0 (B, L) at times t (B,) or (B, L); a token becomes mask_id where its
        uniform u (B, L) < 1 - alpha_t."""
        alpha_t = self.alpha(t).reshape(len(x0), -1)
        return torch.where(u < 1 - alpha_t, torch.full_like(x0, self.mask_id), x0)

    def prior(self, x: Tensor, g: rng.Generator) -> Tensor:
        """x_1 for a batch x (B, L) whose masked entries are to be generated: x itself (all masks)."""
        return x


class Uniform(Process):
    """The uniform process over the data tokens 0 .. n_tokens - 1 of a schedule with alpha_1 > 0."""

    def __init__(self, schedule: Schedule, n_tokens: int):
        super().__init__(schedule)
        self.n_tokens = n_tokens

    def weight(self, t: Tensor) -> Tensor:
        """SEDD's rate sigma(t) = -alpha'_t / alpha_t = d sigma_bar / dt, sigma_bar = -log alpha_t."""
        return -self.schedule.d_alpha(t) / self.schedule.alpha(t)

    def corrupt(self, x0: Tensor, t: Tensor, u: Tensor, y: Tensor) -> Tensor:
        """Keep a token of x0 (B, L) where u < alpha_t (t of shape (B,)), else take y (B, L)."""
        return torch.where(u < self.alpha(t).view(-1, 1), x0, y)

    def draw(self, n: int, seq_len: int, g: torch.Generator) -> dict[str, Tensor]:
        """The replacement tokens y (n, seq_len) of `corrupt`."""
        return {"y": torch.randint(self.n_tokens, (n, seq_len), generator=g)}

    def prior(self, x: Tensor, g: rng.Generator) -> Tensor:
        """x_1 for a batch shaped like x (B, L): uniform tokens, row b from g's stream b (rng.Streams)."""
        return rng.randint(self.n_tokens, tuple(x.shape), g, x.device)

    @staticmethod
    def schedule_problem(schedule: Schedule) -> str | None:
        if schedule.alpha(torch.tensor(1.0)) > 0:
            return None
        # why: at alpha = 0 the rate is infinite and the scores carry nothing (module docstring)
        return "the uniform process needs alpha_1 > 0 (loss.schedule = 'loglinear')"
