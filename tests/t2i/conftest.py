"""Tiny text-image runs through the runs layer, trained once per test session (16x16 shapes, a few steps):
a contrastive encoder, an autoencoder, and text_to_image runs in latent and pixel space."""

import pytest
import torch
from t2i_configs import autoencoder_config, encoder_config, t2i_config

from diffspace import runs


@pytest.fixture(scope="session")
def t2i_runs(tmp_path_factory):
    """{"encoder", "autoencoder", "latent", "pixel"}: trained run directories."""
    root = tmp_path_factory.mktemp("t2i")
    torch.manual_seed(0)
    dirs = {name: root / name for name in ("encoder", "autoencoder", "latent", "pixel")}
    runs.train(encoder_config(dirs["encoder"]))
    runs.train(autoencoder_config(dirs["autoencoder"]))
    runs.train(t2i_config(dirs["latent"], dirs["encoder"], dirs["autoencoder"]))
    runs.train(t2i_config(dirs["pixel"], dirs["encoder"]))
    return dirs
