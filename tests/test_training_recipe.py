"""The pieces of the diffusers training recipe (issue 13 item 7, benchmarks/eps_recipe.py): integer
timesteps of the table, the cosine to an lr floor, the EMA with the warmup of diffusers' EMAModel, the
plain MLP, the bounded output of a LayerNorm head, and the checkerboard's exact denoiser."""

import math

import pytest
import torch

from diffspace.config import build
from diffspace.data.toy import CHECKERBOARD_CELLS, checkerboard_denoiser
from diffspace.losses.proposals import table_t
from diffspace.nets.mlp import MLP, PlainMLP
from diffspace.paths import PATHS
from diffspace.paths.ddpm import DDPMDiscrete
from diffspace.rng import Streams
from diffspace.train.loop import TrainConfig, TrainSetup, lr_lambda, make_ema, train
from diffspace.types import UserError


def test_table_t_draws_the_integer_timesteps_uniformly():
    path = DDPMDiscrete()
    t = table_t(200_000, torch.Generator().manual_seed(0), path)
    assert t.dtype == torch.float64
    k = path.noise_cond(t)
    assert torch.equal(k, k.round()) and k.min() == 0 and k.max() == path.T - 1
    assert torch.equal(path.sigma(t), torch.exp(path.log_sigmas[k.long()]))  # exactly the table's levels
    counts = torch.bincount(k.long(), minlength=path.T).double()
    chi2 = float(((counts - 200.0) ** 2 / 200.0).sum())  # 999 degrees of freedom: mean 999, sd 44.7
    assert chi2 < 999 + 5 * 44.7


def test_table_t_per_example_streams_and_bad_path():
    path = DDPMDiscrete()
    whole = table_t(6, Streams(3, 6), path)
    assert torch.equal(whole[2:], table_t(4, Streams(3, 4, offset=2), path))  # draw i depends on (seed, i)
    with pytest.raises(UserError, match="'ddpm' path"):
        table_t(4, torch.Generator(), PATHS["vp"]())


def test_cosine_ends_at_the_lr_floor():
    cfg = TrainConfig(steps=1000, lr=2e-3, warmup_steps=100, lr_min=2e-5)
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(1 / 100) and f(99) == pytest.approx(1.0)
    assert f(1000) * cfg.lr == pytest.approx(2e-5, rel=1e-12)
    mid = f(100 + 450)  # half way down the cosine: the midpoint of lr and lr_min
    assert mid * cfg.lr == pytest.approx((2e-3 + 2e-5) / 2, rel=1e-12)
    values = [f(s) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert lr_lambda(TrainConfig(steps=1000))(1000) == pytest.approx(0.0, abs=1e-15)  # default: to 0
    with pytest.raises(UserError, match="lr_min"):
        build(TrainConfig, {"lr": 2e-3, "lr_min": 3e-3})


def _ema_trajectory(decay: float, warmup: bool, values: list[float]) -> float:
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    model = torch.nn.ParameterList([p])
    ema = make_ema(model, decay, warmup)
    for v in values:
        p.data.fill_(v)
        ema.update_parameters(model)
    return float(ema.module[0].detach())


def test_ema_warmup_is_diffusers_recurrence():
    values = [float(v) for v in torch.linspace(-1, 3, 40, dtype=torch.float64)]
    expected = values[0]  # diffusers' EMAModel: decay 0 on its first step, then min(d, (1 + n) / (10 + n))
    for n, v in enumerate(values[1:], start=1):
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * v
    assert _ema_trajectory(0.9, True, values) == pytest.approx(expected, rel=1e-12)
    plain = values[0]
    for v in values[1:]:
        plain = 0.9 * plain + 0.1 * v
    assert _ema_trajectory(0.9, False, values) == pytest.approx(plain, rel=1e-12)
    with pytest.raises(UserError, match="EMA decay"):
        make_ema(torch.nn.Linear(1, 1), 1.0)


def test_trainer_reads_the_recipe_fields(tmp_path):
    """train.lr_min / ema_decay / ema_warmup reach the Trainer."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    setup = TrainSetup(model, lambda g, n: {"x": torch.randn(n, 2, generator=g)},
                       lambda m, b: m(b["x"]).pow(2).squeeze(1))
    cfg = TrainConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=2, lr_min=1e-4, ema_decay=0.5,
                      ema_warmup=True, log_every=100, ckpt_every=100)
    history = []
    tr = train(setup, cfg, tmp_path, {}, progress=False, stop_after=1)
    history.append([p.detach().clone() for p in model.parameters()])
    while tr.step < cfg.steps:  # step by step, to follow the weights the EMA saw
        tr.train_step()
        history.append([p.detach().clone() for p in model.parameters()])
    assert tr.sched.get_last_lr()[0] == pytest.approx(1e-4, rel=1e-12)
    expected = history[0]
    for n, params in enumerate(history[1:], start=1):
        d = min(0.5, (1 + n) / (10 + n))
        expected = [d * e + (1 - d) * p for e, p in zip(expected, params, strict=True)]
    for e, p in zip(expected, tr.ema.module.parameters(), strict=True):
        torch.testing.assert_close(p, e, rtol=1e-6, atol=1e-7)


def test_plain_mlp_broadcasts_one_noise_level():
    torch.manual_seed(0)
    net = PlainMLP(2, 32, 3)
    x, level = torch.randn(5, 2), torch.tensor([123.0])
    torch.testing.assert_close(net(x, level), net(x, level.expand(5)))
    assert sum(isinstance(m, torch.nn.Linear) for m in net.modules()) == 4  # 3 hidden + output


def test_layernorm_head_bounds_the_output(randomize):
    """The residual MLP's output head Linear(SiLU(LayerNorm(h))) is bounded whatever the input,
    |out| <= ||W||_2 (||gamma||_inf sqrt(H) + ||beta||) + ||b|| (|SiLU(u)| <= |u|, ||LayerNorm_0(h)|| =
    sqrt(H)), so it cannot follow eps ~ x_t; without the norm the output grows with the input."""
    torch.manual_seed(0)
    bounded, free = randomize(MLP(2, 32, 2)), randomize(MLP(2, 32, 2, out_norm=False))
    norm, lin = bounded.out[0], bounded.out[2]
    bound = (torch.linalg.matrix_norm(lin.weight, 2) * (norm.weight.abs().max() * math.sqrt(32)
                                                         + norm.bias.norm()) + lin.bias.norm())
    x, level = torch.randn(64, 2), torch.full((64,), 500.0)
    with torch.no_grad():
        for scale in (1.0, 1e3, 1e6):
            assert bounded(scale * x, level).norm(dim=1).max() <= bound
        grow = free(1e3 * x, level).norm(dim=1) / free(x, level).norm(dim=1)
    assert grow.median() > 100


def _quadrature_x0(x: tuple[float, float], sigma: float, m: int = 4000) -> torch.Tensor:
    """E[x0 | x] by the midpoint rule on an m x m grid of [-2, 2]^2, restricted to the black cells."""
    g = (torch.arange(m, dtype=torch.float64) + 0.5) / m * 4 - 2
    g1, g2 = torch.meshgrid(g, g, indexing="ij")
    black = (torch.floor(g1) + torch.floor(g2)) % 2 == 0
    logw = -((g1 - x[0]) ** 2 + (g2 - x[1]) ** 2) / (2 * sigma**2)
    w = torch.softmax(torch.where(black, logw, -math.inf).flatten(), 0)
    return torch.stack([(w * g1.flatten()).sum(), (w * g2.flatten()).sum()])


@pytest.mark.parametrize("x,sigma", [((0.3, -1.7), 0.2), ((2.5, 2.5), 0.5), ((-0.5, 0.5), 1.0),
                                     ((1.0, 0.0), 0.3), ((-3.0, 1.2), 2.0)])
def test_checkerboard_denoiser_against_quadrature(x, sigma):
    exact = checkerboard_denoiser(torch.tensor([x], dtype=torch.float64), torch.tensor([sigma]))[0]
    torch.testing.assert_close(exact, _quadrature_x0(x, sigma), rtol=0, atol=1e-6)


def test_checkerboard_denoiser_limits():
    """Large sigma: the data mean (0, 0); small sigma: a point inside a cell is its own denoised value."""
    far = checkerboard_denoiser(torch.tensor([[3.0, -4.0]], dtype=torch.float64), torch.tensor([1e4]))
    torch.testing.assert_close(far, torch.zeros(1, 2, dtype=torch.float64), rtol=0, atol=1e-3)
    inside = CHECKERBOARD_CELLS + 0.5
    denoised = checkerboard_denoiser(inside, torch.full((8,), 1e-3))
    torch.testing.assert_close(denoised, inside, rtol=0, atol=1e-12)
