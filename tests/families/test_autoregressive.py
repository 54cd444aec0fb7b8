"""Autoregressive models, float64: masks give the chain rule (the logits of position i do not depend on
positions >= i, and the PixelCNN has no blind spot), probabilities sum to 1 over every configuration,
the exact NLL on an i.i.d. Bernoulli source equals its entropy (with the output layer set to the true
conditional, and after a short fit with the project's training loop), and sampling reproduces the
model's distribution."""

import itertools
import math

import pytest
import torch
from scipy.stats import chisquare

from diffspace.data.quantized import BINARY, Grid
from diffspace.families.autoregressive import MADE, PixelCNN, ar_loss, sample_autoregressive
from diffspace.rng import Streams
from diffspace.train.loop import TrainConfig, TrainSetup, train
from diffspace.types import UserError

P = 0.3  # P(pixel on) of the i.i.d. source
ENTROPY = -(P * math.log(P) + (1 - P) * math.log(1 - P))  # nats per dimension


def _random(build):
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    try:
        model = build()
    finally:
        torch.set_default_dtype(torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _all_configs(shape, grid: Grid) -> torch.Tensor:
    values = grid.value(torch.arange(grid.levels), torch.float64).tolist()
    configs = list(itertools.product(values, repeat=math.prod(shape)))
    return torch.tensor(configs, dtype=torch.float64).view(-1, *shape)


MODELS = {
    "made-binary": (lambda: MADE((4,), BINARY, hidden=16, depth=2), (4,), BINARY),
    "made-3-levels": (lambda: MADE((3,), Grid(3), hidden=16, depth=3), (3,), Grid(3)),
    "pixelcnn-binary": (lambda: PixelCNN((1, 3, 3), BINARY, channels=8, layers=3), (1, 3, 3), BINARY),
    "pixelcnn-4-levels": (lambda: PixelCNN((1, 2, 2), Grid(4, -2, 2), channels=8, layers=2), (1, 2, 2),
                          Grid(4, -2, 2)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_probabilities_sum_to_one(name):
    build, shape, grid = MODELS[name]
    model = _random(build)
    with torch.no_grad():
        total = model(_all_configs(shape, grid)).exp().sum()
    assert abs(float(total) - 1) < 1e-12


@pytest.mark.parametrize("name", ["made-binary", "made-3-levels", "pixelcnn-binary"])
def test_logits_depend_only_on_earlier_positions(name):
    build, shape, grid = MODELS[name]
    model = _random(build)
    x = torch.randn(1, *shape, dtype=torch.float64, requires_grad=True)
    logits = model.logits(x).reshape(-1, grid.levels)  # (positions, L)
    D = logits.shape[0]
    for i in range(D):
        (g,) = torch.autograd.grad(logits[i].sum(), x, retain_graph=True)
        support = g.flatten() != 0
        assert not support[i:].any(), (name, i)
        assert support[:i].all(), (name, i)  # every earlier position is seen: no blind spot


def test_pixelcnn_has_no_blind_spot_on_a_larger_image():
    model = _random(lambda: PixelCNN((1, 5, 5), BINARY, channels=8, layers=4))
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(model.logits(x)[0, 0, 2, 2].sum(), x)
    assert torch.equal(g.flatten() != 0, torch.arange(25) < 12)  # exactly the 12 pixels before (2, 2)


def _set_true_conditional(last: torch.nn.Module):
    """Output layer with zero weights and the bias of log P(off), log P(on): p(x_i | x_<i) = Bernoulli(P)."""
    with torch.no_grad():
        last.weight.zero_()
        per_dim = torch.tensor([math.log(1 - P), math.log(P)], dtype=torch.float64)
        last.bias.copy_(per_dim.repeat(len(last.bias) // 2))


def _bernoulli(n, shape, seed):
    u = torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.where(u < P, 1.0, -1.0).double()


def _exact_log_p(x):
    log_on, log_off = torch.tensor([math.log(P), math.log(1 - P)], dtype=torch.float64)
    return torch.where(x > 0, log_on, log_off).flatten(1).sum(1)


@pytest.mark.parametrize("kind", ["made", "pixelcnn"])
def test_true_conditional_gives_the_entropy(kind):
    """With the output layer set to the true conditional the NLL is exact for every x, and its mean over
    the source is D H(p) (within 4 standard errors)."""
    if kind == "made":
        model, shape = _random(lambda: MADE((16,), BINARY, hidden=32)), (16,)
        _set_true_conditional(model.net[-1])
    else:
        model, shape = _random(lambda: PixelCNN((1, 4, 4), BINARY, channels=8, layers=3)), (1, 4, 4)
        _set_true_conditional(model.head[-1])
    x = _bernoulli(20_000, shape, 1)
    with torch.no_grad():
        nll = -model(x)
    assert (nll + _exact_log_p(x)).abs().max() < 1e-12
    assert abs(float(nll.mean()) - 16 * ENTROPY) < 4 * float(nll.std()) / math.sqrt(len(x))


def test_short_fit_reaches_the_entropy(tmp_path):
    """MADE trained by the project's loop for 300 steps: the held-out NLL is within 1 % of D H(p), and
    not below the exact NLL of the same points by more than its noise (no model beats the truth)."""
    torch.manual_seed(0)
    model, D = MADE((8,), BINARY, hidden=64, depth=2), 8
    data = _bernoulli(20_000, (D,), 2).float()
    batch = lambda g, n: {"x": data[torch.randint(len(data), (n,), generator=g)]}
    cfg = TrainConfig(steps=300, batch_size=256, lr=3e-3, warmup_steps=20, ema_halflife_steps=30.0,
                      log_every=10**9, ckpt_every=10**9)
    tr = train(TrainSetup(model, batch, ar_loss), cfg, tmp_path, {}, progress=False)
    test = _bernoulli(20_000, (D,), 3)
    with torch.no_grad():
        nll = -tr.ema.module(test.float()).double()
    gap = nll + _exact_log_p(test)  # paired with the true NLL: an estimate of KL(source || model)
    assert abs(float(nll.mean()) / (D * ENTROPY) - 1) < 0.01
    assert float(gap.mean()) > -3 * float(gap.std()) / math.sqrt(len(gap))


@pytest.mark.parametrize("name", ["made-3-levels", "pixelcnn-4-levels"])
def test_sampling_reproduces_the_model(name):
    build, shape, grid = MODELS[name]
    model = _random(build)
    configs = _all_configs(shape, grid)
    with torch.no_grad():
        probs = model(configs).exp()
    n = 20_000
    x = sample_autoregressive(model, n, Streams(11, n))
    assert x.shape == (n, *shape) and x.dtype == torch.float64
    codes = (grid.index(x).flatten(1) * grid.levels ** torch.arange(x[0].numel() - 1, -1, -1)).sum(1)
    counts = torch.bincount(codes, minlength=len(configs))
    assert chisquare(counts.numpy(), (n * probs / probs.sum()).numpy()).pvalue > 1e-3
    assert torch.equal(sample_autoregressive(model, 5, Streams(11, 5, offset=100)), x[100:105])


@pytest.mark.parametrize("build", [lambda: PixelCNN((3, 8, 8), BINARY), lambda: MADE((4,), Grid(1)),
                                   lambda: PixelCNN((1, 8, 8), BINARY, kernel=4)])
def test_bad_configs_are_refused(build):
    with pytest.raises(UserError):
        build()
