"""What a task kind is: how a run's data, device, safeguard and evaluation look.

The run path (`secure_assist.training.run`) is the same for every task: hold-out split, forward
passes, mechanisms, resumable upload, the mode's training, restore, safeguard,
evaluation, model file and summary. A task kind supplies the parts that depend on what
is predicted: a class per text (`classification`: accuracy, the Brier-tested shrink)
or a free-text answer (`generation`: answer NLL, token accuracy, ROUGE-L, a
sign-tested scale of the correction).
"""

from __future__ import annotations

from typing import Any, ClassVar

from protocol.device.forward_device import ForwardDevice
from protocol.model.side_output import SideOutput
from secure_assist.config import FinetuneConfig
from secure_assist.mechanisms import MechanismChain
from secure_assist.training.safeguard import VALIDATION_SHARE


class TaskKind:
    """Base class: subclasses set `name` and implement every method."""

    name: ClassVar[str] = ""

    def data(self, config: FinetuneConfig) -> tuple[Any, list[Any], list[Any]]:
        """(task, training examples, evaluation examples), seed-fixed subsets as configured."""
        raise NotImplementedError

    def make_device(self, config: FinetuneConfig, task: Any, mechanisms: MechanismChain | None, progress: bool,
                    datasets: tuple[list[Any], ...] = ()) -> ForwardDevice:
        """The device role of a run (uploads go through `mechanisms`; None: nothing leaves the
        device, nothing to protect). `datasets` (training set, evaluation set) key the device's
        forward cache when `reuse_forwards` is set: subsets of them share their dataset's entry."""
        raise NotImplementedError

    def validation_fraction(self, config: FinetuneConfig) -> float:
        """The device's validation share when `safeguard_fraction` is not set: `VALIDATION_SHARE` for
        every run, unprotected ('none') included (a device never deploys a side output it has not
        checked against its backbone)."""
        return VALIDATION_SHARE

    def check(self, device: ForwardDevice, examples: list[Any]) -> None:
        """Every example's problems, raised before any forward pass (nothing by default)."""

    def safeguard(self, device: ForwardDevice, side: SideOutput, validation: list[Any] | None,
                  seed: int = 0, deployed: SideOutput | None = None) -> dict[str, Any] | None:
        """Adjust the side output on the device's validation split and return the decision (None:
        the safeguard is off, `safeguard_fraction` 0; an empty split deploys the backbone); `seed`
        fixes any random split the decision makes; `deployed` (a boosting round's sum so far) is what
        the side output is added to and judged against, instead of the backbone alone."""
        raise NotImplementedError

    def evaluate(self, device: ForwardDevice, config: FinetuneConfig, side: SideOutput,
                 evaluate: list[Any]) -> dict[str, Any]:
        """The summary's utility numbers on the evaluation split, zero-shot and fine-tuned."""
        raise NotImplementedError
