"""Networks: forward(x, noise_cond, **cond); they know nothing about diffusion."""
