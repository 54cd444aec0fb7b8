"""Sampling bookkeeping of the text task: every random draw per sequence (sequence i the same for any n,
chunk size or cache), exactly the network calls asked for (and reported)."""

import pytest
import torch
from torch import nn

from diffspace import rng
from diffspace.config import build
from diffspace.nets.transformer import Transformer, TransformerConfig
from diffspace.runs import text as task
from diffspace.runs.text import (
    TextConfig,
    generate_tokens,
    resolve_sampling,
    sample_tokens,
)
from diffspace.types import UserError

V, L = 10, 16  # data tokens; id V is the mask (and AR's start token)
PROMPT = torch.tensor([1, 2, 3])


def _cfg(kind, **sample):
    """A text config of kind `kind` (sedd kinds and bd3 see t: their paths without the no-change cache)."""
    tc = kind.startswith("sedd")
    return build(TextConfig, {"task": "text", "data": {"seq_len": L},
                              "model": {"kind": kind, "block": 4, "noise_cond": tc},
                              "loss": {"schedule": "linear" if kind == "llada" else "loglinear"},
                              "sample": {"steps": 6, **sample}})


def _net(noise_cond, seed=0):
    torch.manual_seed(seed)
    net = Transformer(TransformerConfig(vocab_size=V + 1, max_len=L, dim=32, depth=1, heads=2,
                                        noise_cond=noise_cond))
    for p in net.parameters():  # why: a sharper random model, so that draws differ between streams
        nn.init.normal_(p, std=0.5)
    return net.eval()


STOCHASTIC = [("ar", "ar", {}), ("mdlm", "ancestral", {}), ("mdlm", "remask", {"block": 4}),
              ("mdlm", "remask_random", {"block": 4}), ("llada", "remask", {}),
              ("sedd_absorb", "tweedie", {}), ("sedd_absorb", "euler", {}), ("sedd_uniform", "tweedie", {}),
              ("sedd_uniform", "euler", {}), ("bd3", "bd3", {})]


@pytest.mark.parametrize("kind, sampler, extra", STOCHASTIC)
def test_sequence_i_depends_only_on_the_seed_and_i(kind, sampler, extra, monkeypatch):
    """The first three of n = 5 equal n = 3, and n = 5 in chunks of 2 (the batches of torchrun ranks)
    equals one chunk; a sequence changes with the seed, and sequences differ from each other."""
    cfg, net = _cfg(kind, sampler=sampler, **extra), _net(kind.startswith("sedd"))
    prompt = None if kind == "sedd_uniform" else PROMPT
    five = sample_tokens(net, cfg, V, 5, seed=4, prompt=prompt)
    assert torch.equal(sample_tokens(net, cfg, V, 3, seed=4, prompt=prompt), five[:3])
    monkeypatch.setattr(task, "SAMPLE_CHUNK", 2)
    assert torch.equal(sample_tokens(net, cfg, V, 5, seed=4, prompt=prompt), five)
    other = sample_tokens(net, cfg, V, 5, seed=5, prompt=prompt)
    assert (five != other).any(dim=1).all() and len(set(map(tuple, five.tolist()))) == 5
    assert (five < V).all()


@pytest.mark.parametrize("kind, noise_cond", [("mdlm", False), ("bd3", False), ("bd3", True), ("ar", False)])
def test_caches_do_not_change_the_tokens_of_per_sequence_streams(kind, noise_cond):
    """The no-change cache (mdlm, bd3 without t input) and the key/value cache (bd3, ar) skip work but
    draw the same noise: the same tokens as without them, in a batch of 3 and of 5."""
    cfg = build(TextConfig, {"task": "text", "data": {"seq_len": L},
                             "model": {"kind": kind, "block": 4, "noise_cond": noise_cond},
                             "loss": {"estimator": "time" if noise_cond else "count"},
                             "sample": {"steps": 6}})
    net = _net(noise_cond)
    runs = [generate_tokens(net, cfg, V, n, rng.Streams(8, n), prompt=PROMPT, kv_cache=cache).tokens[:3]
            for n in (3, 5) for cache in (True, False)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


class Counted(nn.Module):
    """A network that counts its calls and the sequences they evaluate."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls, self.rows = net, 0, 0

    def forward(self, x, *args, **kw):
        self.calls, self.rows = self.calls + 1, self.rows + len(x)
        return self.net(x, *args, **kw)

    def new_cache(self):
        return self.net.new_cache()


B = 4
# (kind, sampler, t input, caches, steps, block, prompt length, network calls asked for, exact?)
# ar: one call per token after the prompt. remask: 12 masked tokens in blocks of 4 are 3 blocks, and
# 5 or 128 steps are 5 or 128 calls (they were 3 and 126). sedd: steps + the final Tweedie step. bd3: steps
# per block that has masks, plus one commit per finished block but the last with the key/value cache.
# The no-change cache (mdlm, bd3 without t input) skips calls: at most the count, reported exactly.
CALLS = [("ar", "ar", False, True, 6, 0, 3, L - 3, True),
         ("ar", "ar", False, False, 6, 0, 3, L - 3, True),
         ("mdlm", "ancestral", False, False, 9, 0, 3, 9, True),
         ("mdlm", "ancestral", False, True, 40, 0, 3, 40, False),
         ("mdlm", "remask", False, True, 5, 4, 4, 5, True),
         ("mdlm", "remask", False, True, 128, 4, 4, 128, True),
         ("mdlm", "remask_random", False, True, 7, 4, 4, 7, True),
         ("llada", "remask", False, True, 7, 0, 4, 7, True),
         ("sedd_absorb", "tweedie", True, True, 6, 0, 3, 7, True),
         ("sedd_absorb", "euler", True, True, 6, 0, 3, 7, True),
         ("sedd_uniform", "tweedie", True, True, 6, 0, 0, 7, True),
         ("sedd_uniform", "euler", True, True, 6, 0, 0, 7, True),
         ("bd3", "bd3", True, True, 5, 0, 3, 4 * 5 + 3, True),  # the prompt ends inside block 0
         ("bd3", "bd3", True, True, 5, 0, 5, 3 * 5 + 3, True),  # block 0 is all prompt
         ("bd3", "bd3", True, False, 5, 0, 5, 3 * 5, True),
         ("bd3", "bd3", False, True, 5, 0, 3, 4 * 5 + 3, False)]


@pytest.mark.parametrize("kind, sampler, tc, caches, steps, block, n_prompt, calls, exact", CALLS)
@torch.no_grad()
def test_network_calls_are_the_steps_asked_for_and_reported(kind, sampler, tc, caches, steps, block,
                                                             n_prompt, calls, exact):
    cfg = build(TextConfig, {"task": "text", "data": {"seq_len": L},
                             "model": {"kind": kind, "block": 4, "noise_cond": tc},
                             "loss": {"schedule": "linear" if kind == "llada" else "loglinear",
                                      "estimator": "time" if tc else "count"}})
    net = Counted(_net(tc))
    out = generate_tokens(net, cfg, V, B, rng.Streams(0, B), sampler, steps, PROMPT.repeat(2)[:n_prompt],
                          block, kv_cache=caches)
    assert out.nfe == net.rows / B  # the report is what ran, per sequence
    if exact:
        assert net.calls == calls and net.rows == calls * B
    else:
        assert net.calls <= calls and out.nfe < calls  # with the no-change cache
    assert (out.tokens < V).all()


def test_remasking_refuses_fewer_steps_than_blocks():
    cfg = _cfg("mdlm", sampler="remask")
    x = torch.tensor([1, 2, 3, 4])
    with pytest.raises(UserError, match=r"^steps=2 cannot decode 3 blocks of 4 tokens"):
        generate_tokens(_net(False), cfg, V, 2, rng.Streams(0, 2), steps=2, prompt=x, block=4)



def test_resolve_sampling_takes_the_config_for_what_is_not_given():
    cfg = _cfg("mdlm", sampler="remask", block=4)
    assert resolve_sampling(cfg) == ("remask", 6, 4)
    assert resolve_sampling(cfg, "ancestral", 3, 0) == ("ancestral", 3, 0)
    assert resolve_sampling(_cfg("bd3")) == ("bd3", 6, 4)  # block 0: model.block
    assert resolve_sampling(_cfg("mdlm")) == ("ancestral", 6, 0)  # "auto": the kind's default
    with pytest.raises(UserError, match=r"^block=4 does not apply to sampler 'ancestral'"):
        resolve_sampling(cfg, "ancestral")
    with pytest.raises(UserError, match=r"^block=5 must divide data.seq_len=16 for bd3$"):
        resolve_sampling(_cfg("bd3"), block=5)
