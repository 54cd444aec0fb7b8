"""The Python API for everything the `diffspace` command does (see runs/api.py):

    from diffspace import runs
    run = runs.train(runs.load_config("configs/demo.toml", ["train.steps=500", "run.dir=runs/mine"]))
    x = runs.sample(runs.load_run("runs/mine"), runs.SampleOptions(n=1000))
"""

from diffspace.runs.api import evaluate, load_config, load_run, log_likelihood, optimize_grid, sample, train
from diffspace.runs.diffusers_io import export_diffusers
from diffspace.runs.info import network_info
from diffspace.runs.loading import export_weights
from diffspace.runs.options import EvalOptions, Run, SampleOptions

__all__ = ["load_config", "train", "load_run", "sample", "evaluate", "log_likelihood", "optimize_grid",
           "export_weights", "export_diffusers", "network_info", "Run", "SampleOptions", "EvalOptions"]
