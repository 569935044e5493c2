"""Where the runs of a sweep or an audit execute: one interface (`base.Executor`), one
registry (`EXECUTORS`), chosen with `--executor`. `local` (the default) runs them in this
process without importing Ray; `ray` runs them as Ray tasks (`pip install -e ".[ray]"`)."""

from __future__ import annotations

import argparse
import importlib

from protocol.errors import UserInputError
from secure_assist.executors.base import Executor, Outcome, Progress

# name -> "module:class"; a module is imported only when its executor is chosen (Ray is optional).
EXECUTORS = {
    "local": "secure_assist.executors.local:LocalExecutor",
    "ray": "secure_assist.executors.ray_cluster:RayExecutor",
}


def make_executor(name: str = "local", ray_address: str | None = None, ray_cpus: int | None = None) -> Executor:
    """The executor called `name`, built from the Ray options (which the local one refuses)."""
    if name not in EXECUTORS:
        raise UserInputError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
    module, cls = EXECUTORS[name].split(":")
    return getattr(importlib.import_module(module), cls).from_options(ray_address, ray_cpus)


def add_executor_flags(parser: argparse.ArgumentParser) -> None:
    """--executor, --ray-address and --ray-cpus."""
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="where the runs execute: in this process (local, default) or as Ray tasks (ray; "
                             'needs pip install -e ".[ray]")')
    parser.add_argument("--ray-address", default=None,
                        help="join this existing Ray cluster (host:port of its head) instead of starting a local "
                             "Ray instance")
    parser.add_argument("--ray-cpus", type=int, default=None,
                        help="CPUs of the local Ray instance (default: the available cores)")


def executor_from_args(args: argparse.Namespace) -> Executor:
    """The executor the flags ask for (errors before any run starts)."""
    return make_executor(args.executor, args.ray_address, args.ray_cpus)


__all__ = ["EXECUTORS", "Executor", "Outcome", "Progress", "add_executor_flags", "executor_from_args",
           "make_executor"]
