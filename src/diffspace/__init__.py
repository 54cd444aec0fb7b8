"""diffspace: one design space for diffusion and flow generative models.

Conventions (see docs/design.md): t in [0, 1] with t = 0 data; x_t = alpha_t * x0 + sigma_t * eps;
`sigma` alone always means the EDM noise level sigma_t / alpha_t.
"""

__version__ = "0.1.0"
