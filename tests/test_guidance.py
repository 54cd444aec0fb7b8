"""Guidance wrappers against a Gaussian mixture whose classes are its components: there the conditional
denoiser, the unconditional one and p(y | x, sigma) are all exact, so the algebra can be checked exactly."""

import pytest
import torch

from diffspace.data.gmm import GaussianMixture
from diffspace.samplers.grids import karras_sigmas
from diffspace.samplers.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    EDMClassifier,
    null_caption,
    null_class,
)
from diffspace.samplers.ode import sample_euler, sample_heun

K = 3
GMM = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]]), torch.tensor([0.3, 0.5, 0.4]),
                      torch.tensor([0.5, 0.3, 0.2]))


def exact_denoiser(x, sigma, class_labels=None):
    """E[x0 | x, y]; the null class K (or no label) gives the unconditional E[x0 | x]."""
    uncond = GMM.denoiser(x, sigma)
    if class_labels is None:
        return uncond
    y = class_labels.clamp(max=K - 1)
    mu, s2 = GMM.means[y].to(x), GMM.stds[y].to(x)[:, None] ** 2
    cond = mu + s2 / (s2 + sigma[:, None] ** 2) * (x - mu)
    return torch.where((class_labels == K)[:, None], uncond, cond)


def exact_classifier(x, sigma):
    """Logits of p(y | x, sigma): the mixture's component log-densities."""
    return GMM._component_logp(x, sigma)[0]


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    sigma = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-3, 2, generator=g))
    y = torch.randint(0, K, (n,), generator=g)
    return x, sigma, y


def test_cfg_end_points_and_linearity():
    x, sigma, y = _batch()
    uncond, cond = exact_denoiser(x, sigma), exact_denoiser(x, sigma, y)
    assert (cond - uncond).abs().max() > 0.1
    cfg = lambda w: ClassifierFreeGuidance(exact_denoiser, w, null_class(K))
    torch.testing.assert_close(cfg(0.0)(x, sigma, class_labels=y), uncond)
    torch.testing.assert_close(cfg(1.0)(x, sigma, class_labels=y), cond)
    torch.testing.assert_close(cfg(3.0)(x, sigma, class_labels=y), 3 * cond - 2 * uncond)
    torch.testing.assert_close(cfg(3.0)(x, sigma), uncond)
    torch.testing.assert_close(cfg(3.0)(x, sigma, class_labels=None), uncond)


def exact_text_denoiser(x, sigma, text_emb=None, text_mask=None, text_pooled=None):
    """A caption-conditioned oracle: a caption names a mixture component by the argmax of its pooled vector;
    the null caption (no real token) and no text at all give the unconditional denoiser."""
    if text_emb is None:
        return GMM.denoiser(x, sigma)
    labels = torch.where(text_mask.any(dim=1), text_pooled.argmax(dim=1), K)
    return exact_denoiser(x, sigma, labels)


def test_cfg_over_a_caption_uses_the_null_caption_in_one_batch():
    """The same wrapper guides a text-conditioned denoiser: the second half of its one 2B batch is the
    null caption (all-False mask, the other tensors unchanged), and the guided result is w cond + (1 - w)
    uncond against the oracle."""
    x, sigma, y = _batch()
    text = {"text_emb": torch.randn(len(x), 5, 3, dtype=torch.float64),
            "text_mask": torch.arange(5)[None] < torch.randint(1, 6, (len(x), 1)),
            "text_pooled": torch.nn.functional.one_hot(y, K).double()}
    calls = []

    def counted(x_, sigma_, **c):
        calls.append(c)
        return exact_text_denoiser(x_, sigma_, **c)

    guided = ClassifierFreeGuidance(counted, 2.5, null_caption)(x, sigma, **text)
    cond, uncond = exact_denoiser(x, sigma, y), exact_denoiser(x, sigma)
    torch.testing.assert_close(guided, 2.5 * cond - 1.5 * uncond)
    (seen,) = calls
    assert torch.equal(seen["text_mask"][:len(x)], text["text_mask"]) and not seen["text_mask"][len(x):].any()
    for key in ("text_emb", "text_pooled"):
        assert torch.equal(seen[key], torch.cat([text[key], text[key]]))
    assert null_caption(text)["text_mask"].shape == text["text_mask"].shape


def test_classifier_guidance_with_exact_classifier_equals_cfg():
    """D + s sigma^2 grad log p(y|x) with the exact classifier: s = 1 is the exact conditional denoiser,
    and for any s it equals CFG with w = s (both are the score of p(x) p(y|x)^s)."""
    x, sigma, y = _batch()
    for s in (0.0, 1.0, 2.5):
        cg = ClassifierGuidance(exact_denoiser, exact_classifier, s)(x, sigma, y)
        cfg = ClassifierFreeGuidance(exact_denoiser, s, null_class(K))(x, sigma, class_labels=y)
        torch.testing.assert_close(cg, cfg, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ClassifierGuidance(exact_denoiser, exact_classifier, 1.0)(x, sigma, y),
                               exact_denoiser(x, sigma, y), rtol=1e-9, atol=1e-9)


def test_guidance_interval():
    x, sigma, y = _batch()
    lo, hi = 0.3, 2.0
    got = ClassifierFreeGuidance(exact_denoiser, 4.0, null_class(K), sigma_interval=(lo, hi))(x, sigma,
                                                                                  class_labels=y)
    cond, uncond = exact_denoiser(x, sigma, y), exact_denoiser(x, sigma)
    inside = (sigma > lo) & (sigma <= hi)
    assert 0 < inside.sum() < len(sigma)
    torch.testing.assert_close(got[inside], (4 * cond - 3 * uncond)[inside])
    torch.testing.assert_close(got[~inside], cond[~inside])


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun])
@pytest.mark.parametrize("guide", ["cfg", "cg"])
def test_guided_sampling_lands_in_the_requested_class(sampler, guide):
    """Guidance wrappers are plain Denoisers: sample with them, under no_grad, and every sample lands
    in the requested component (the unguided mixture puts only 20% mass on component 2)."""
    g = torch.Generator().manual_seed(1)
    sigmas = karras_sigmas(30, 0.002, 20.0)
    y = torch.full((200,), 2)
    den = (ClassifierFreeGuidance(exact_denoiser, 1.0, null_class(K)) if guide == "cfg"
           else ClassifierGuidance(exact_denoiser, exact_classifier, 1.0))
    with torch.no_grad():
        noise = torch.randn(200, 2, generator=g, dtype=torch.float64)
        x = sampler(den, sigmas[0] * noise, sigmas, class_labels=y)
    assert (exact_classifier(x, torch.full((200,), 1e-3)).argmax(1) == 2).double().mean() > 0.99


def test_edm_classifier_scales_input_and_noise_condition():
    seen = {}

    def net(x, noise_cond):
        seen["x"], seen["nc"] = x, noise_cond
        return x.flatten(1)

    sigma = torch.tensor([0.1, 2.0], dtype=torch.float64)
    x = torch.ones(2, 1, 2, 2, dtype=torch.float64)
    EDMClassifier(net, sigma_data=0.5)(x, sigma)
    torch.testing.assert_close(seen["x"][:, 0, 0, 0], 1 / torch.sqrt(sigma**2 + 0.25))
    torch.testing.assert_close(seen["nc"], 250 * torch.log(sigma))
