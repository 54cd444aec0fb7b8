"""Configs of tiny text-image runs (16x16 shapes, a few steps) for the tests of tests/t2i."""

DATA = {"name": "shapes", "n_train": 256, "size": 16}


def encoder_config(run_dir, **model) -> dict:
    return {"task": "contrastive", "run": {"dir": str(run_dir)}, "data": DATA,
            "model": {"embed_dim": 16, "width": 4, "levels": 2, "grid": 2, "plane_stem": 2, "text_dim": 16,
                      "text_depth": 1, "text_heads": 2, **model},
            "train": {"steps": 3, "batch_size": 16, "warmup_steps": 1}, "eval": {"n": 40}}


def autoencoder_config(run_dir) -> dict:
    return {"task": "autoencoder", "run": {"dir": str(run_dir)}, "data": DATA,
            "model": {"widths": [4, 4, 4]}, "train": {"steps": 3, "batch_size": 16, "warmup_steps": 1},
            "eval": {"n": 40}}


def t2i_config(run_dir, encoder, autoencoder="", **sections) -> dict:
    cfg = {"task": "text_to_image", "run": {"dir": str(run_dir)}, "data": DATA,
           "sources": {"encoder": str(encoder), "autoencoder": str(autoencoder)},
           "model": {"net": "unet", "sigma_data": 1.0 if autoencoder else 0.5, "p_uncond": 0.2,
                     "unet": {"channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "heads": 2,
                              "attn_resolutions": [4, 2] if autoencoder else [8], "dropout": 0.0}},
           "train": {"steps": 2, "batch_size": 8, "warmup_steps": 1},
           "sample": {"sampler": "euler", "steps": 3, "n": 2},
           "eval": {"n": 24, "n_reference": 60, "reader_steps": 5, "guidance": [1.0, 3.0]}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg
