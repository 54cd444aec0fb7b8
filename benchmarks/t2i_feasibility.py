"""Feasibility of text-to-image on a laptop CPU (issue 16, phase 1): how far a few CPU-minutes take the
contrastive encoder (zero-shot attribute accuracy on held-out shape-colour pairs, retrieval recall@1)
and the KL autoencoder (reconstruction PSNR) on the procedural shapes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/t2i_feasibility.py contrastive --loss clip --steps 1000
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/t2i_feasibility.py contrastive --loss siglip --steps 1000
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/t2i_feasibility.py autoencoder --steps 1000

Each run trains on one thread for a number of steps (warmup, then a cosine decay) and appends its
figures to benchmarks/results/t2i_feasibility.json with its training time and the load average at the
end (on a shared machine the times are upper bounds; equal steps and batch are equal compute).

Zero-shot attribute accuracy: each one-object image is given the best-matching of all 432 one-object
prompts ("a small red circle at the top left", ...); an attribute is right when that prompt's value
equals the image's. Held-out images have (shape, colour) pairs never seen in training.
"""

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from diffspace.data.captions import tokenize_captions
from diffspace.data.shapes import ATTRIBUTES, SHAPES, make_shapes, single_object_prompts
from diffspace.data.text import make_tokenizer
from diffspace.families.autoencoder import KL_WEIGHT, autoencoder_loss, latent_scale, psnr
from diffspace.families.contrastive import (
    CLIP_INIT,
    SIGLIP_INIT,
    ContrastiveEncoder,
    clip_loss,
    nearest,
    recall_at_1,
    siglip_loss,
)
from diffspace.nets.autoencoder import KLAutoencoder
from diffspace.nets.towers import ImageTower, TextTower

RESULTS = Path(__file__).parent / "results" / "t2i_feasibility.json"


def train_for(model, step_loss, steps: int, lr: float, warmup: int = 50) -> dict:
    """AdamW with warmup and a cosine decay over `steps`; returns the time it took and the last loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    start, losses = time.perf_counter(), []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"steps": steps, "train_seconds": round(time.perf_counter() - start, 1),
            "final_loss": sum(losses[-50:]) / len(losses[-50:])}


@torch.no_grad()
def zero_shot(model, tok, data) -> dict:
    prompts, combos = single_object_prompts()
    txt = model.embed_texts(*tokenize_captions(tok, prompts, model.text_tower.context_len))
    one = (data.attrs[:, 4] < 0).nonzero().flatten()
    img = torch.cat([model.embed_images(data.x[one[i:i + 500]]) for i in range(0, len(one), 500)])
    pred = combos[nearest(img, txt)]  # (n, 4)
    right = pred == data.attrs[one, :4]
    out = {f"acc_{a}": right[:, k].float().mean().item() for k, a in enumerate(ATTRIBUTES)}
    out["acc_attributes_mean"] = right.float().mean().item()
    out["acc_all_four"] = right.all(dim=1).float().mean().item()
    out["n_images"] = len(one)
    shape_confusion = torch.zeros(len(SHAPES), len(SHAPES), dtype=torch.long)  # rows: true shape
    shape_confusion.index_put_((data.attrs[one, 0], pred[:, 0]), torch.ones(len(one), dtype=torch.long),
                               accumulate=True)
    out["shape_confusion"] = shape_confusion.tolist()
    return out


@torch.no_grad()
def retrieval(model, tok, data) -> dict:
    """Recall@1 over the pairs of distinct captions (the first image of each caption): with repeated
    captions the partner would not be defined."""
    first = {c[0]: i for i, c in reversed(list(enumerate(data.captions)))}
    idx = torch.tensor(sorted(first.values()))
    txt = model.embed_texts(*tokenize_captions(tok, [data.captions[i][0] for i in idx.tolist()],
                                               model.text_tower.context_len))
    img = model.embed_images(data.x[idx])
    i2t, t2i = recall_at_1(img, txt)
    return {"recall@1_image_to_text": i2t, "recall@1_text_to_image": t2i, "n_pairs": len(idx)}


def contrastive(args) -> dict:
    train = make_shapes(args.n_train, "train", seed=0, size=args.size)
    texts = [c for caps in train.captions for c in caps]
    tok = make_tokenizer(args.tokenizer, [t.encode() for t in texts], 256)
    context = 8 * -(-max(len(tok.encode(t)) for t in texts) // 8)  # the longest caption, rounded up
    g = torch.Generator().manual_seed(0)
    image = ImageTower(3, args.embed, width=args.width, levels=3, plane_stem=args.plane_stem)
    text = TextTower(tok.size, context, args.embed, dim=args.text_dim, depth=2, heads=4)
    model = ContrastiveEncoder(image, text, CLIP_INIT if args.loss == "clip" else SIGLIP_INIT)

    def step_loss(step):
        idx = torch.randint(len(train), (args.batch,), generator=g)
        ids, mask = tokenize_captions(tok, train.pick(idx, g), context)
        longest = int(mask.sum(1).max())  # trailing padding changes nothing: skip it
        ids, mask = ids[:, :longest], mask[:, :longest]
        img, txt = model.embed_images(train.x[idx]), model.embed_texts(ids, mask)
        if args.loss == "clip":
            return clip_loss(img, txt, model.logit_scale)
        return siglip_loss(img, txt, model.logit_scale, model.logit_bias)

    log = train_for(model, step_loss, args.steps, args.lr)
    model.eval()
    held = make_shapes(args.n_eval, "heldout", seed=1, size=args.size)
    seen = make_shapes(args.n_eval, "test", seed=1, size=args.size)
    return {**log, "zero_shot_heldout": zero_shot(model, tok, held),
            "zero_shot_seen": zero_shot(model, tok, seen),
            "retrieval_heldout": retrieval(model, tok, held), "retrieval_seen": retrieval(model, tok, seen),
            "vocab": tok.size, "context": context, "params": sum(p.numel() for p in model.parameters()),
            "logit_scale": model.logit_scale.exp().item()}


def autoencoder(args) -> dict:
    train = make_shapes(args.n_train, "train", seed=0, size=args.size)
    g = torch.Generator().manual_seed(0)
    ae = KLAutoencoder(3, latent_channels=4, widths=tuple(args.ae_widths))

    def step_loss(step):
        x = train.x[torch.randint(len(train), (args.batch,), generator=g)]
        return autoencoder_loss(ae, x, args.kl_weight, g).mean()

    log = train_for(ae, step_loss, args.steps, args.lr)
    ae.eval()
    out = {**log, "params": sum(p.numel() for p in ae.parameters()), "kl_weight": args.kl_weight,
           "latent_shape": list(ae.encode(train.x[:1])[0].shape[1:])}
    with torch.no_grad():
        for split in ("heldout", "test"):
            x = make_shapes(args.n_eval, split, seed=1, size=args.size).x
            mean, _ = ae.encode(x)
            out[f"psnr_{split}_db"] = psnr(x, ae.decode(mean)).mean().item()
        out["latent_scale"] = latent_scale(ae, train.x[:2000])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["contrastive", "autoencoder"])
    p.add_argument("--loss", choices=["clip", "siglip"], default="clip")
    p.add_argument("--tokenizer", choices=["byte", "char", "bpe"], default="char")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=20_000)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--plane-stem", type=int, default=16)
    p.add_argument("--text-dim", type=int, default=64)
    p.add_argument("--ae-widths", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--kl-weight", type=float, default=KL_WEIGHT)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    result = contrastive(args) if args.what == "contrastive" else autoencoder(args)
    record = {"what": args.what, "args": vars(args), "machine": platform.machine(),
              "load_average_after": os.getloadavg(), "torch": torch.__version__, **result}
    print(json.dumps(record, indent=1))
    RESULTS.parent.mkdir(exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps(old + [record], indent=1))


if __name__ == "__main__":
    main()
