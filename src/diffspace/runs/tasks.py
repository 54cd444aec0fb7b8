"""The task table: the top-level config key `task` (default "continuous") selects one; this is the only
place a task name becomes code."""

from diffspace.runs.autoencoder import AUTOENCODER
from diffspace.runs.autoregressive import AUTOREGRESSIVE
from diffspace.runs.continuous_task import CONTINUOUS
from diffspace.runs.contrastive import CONTRASTIVE
from diffspace.runs.diffusers_io import DIFFUSERS
from diffspace.runs.flow import FLOW
from diffspace.runs.gan import GAN
from diffspace.runs.options import Task
from diffspace.runs.text import TEXT
from diffspace.runs.text_to_image_eval import TEXT_TO_IMAGE
from diffspace.runs.vae import VAE
from diffspace.types import UserError

TASKS: dict[str, Task] = {t.name: t for t in (CONTINUOUS, TEXT, DIFFUSERS, CONTRASTIVE, AUTOENCODER,
                                                     TEXT_TO_IMAGE, FLOW, VAE, GAN, AUTOREGRESSIVE)}


def task_of(data: dict, src: str = "<config>") -> Task:
    """The task a config dict names (key `task`, default "continuous")."""
    name = data.get("task", "continuous")
    if name not in TASKS:
        raise UserError(f"{src}: task = {name!r} is not one of {', '.join(TASKS)}")
    return TASKS[name]
