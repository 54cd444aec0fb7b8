"""Tasks: each names its config schema and how to build, sample and evaluate its models.
The top-level config key `task` (default "continuous") selects one."""

from collections.abc import Callable
from dataclasses import dataclass

from diffspace.types import UserError


@dataclass
class Task:
    config_cls: type
    build_setup: Callable  # (cfg, device) -> (TrainSetup, extra metadata dict)
    build_module: Callable  # (cfg, extra metadata dict | None) -> nn.Module
    sample: Callable  # (run, args) -> None: the `diffspace sample` command
    evaluate: Callable  # (run, args) -> dict: the `diffspace eval` command
    after_train: Callable | None = None  # (run_dir) -> None: pictures after training


def _continuous() -> Task:
    from diffspace.cli import continuous_run as cr

    return Task(cr.ContinuousConfig, cr.setup_for_cli, cr.module_for_cli, cr.sample_cmd, cr.eval_cmd,
                cr.after_train)


def _text() -> Task:
    from diffspace.discrete.task import text_task

    return text_task()


TASKS: dict[str, Callable[[], Task]] = {"continuous": _continuous, "text": _text}


def task_of(data: dict, src: str) -> Task:
    name = data.get("task", "continuous")
    if name not in TASKS:
        raise UserError(f"{src}: task = {name!r} is not one of {', '.join(TASKS)}")
    return TASKS[name]()
