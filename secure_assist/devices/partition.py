"""How a training set is split over N devices, seed-fixed, as in the federated literature.

- `iid`: a random equal split.
- `dirichlet:ALPHA`: label skew with devices of random sizes (Yurochkin et al. 2019, Flower Datasets'
  `DirichletPartitioner`): for each class, the shares of its samples over the devices are drawn from
  Dir(ALPHA); small ALPHA (0.5 is the usual "non-IID") gives devices dominated by one class. Draws
  that leave a device with fewer than `MIN_DIRICHLET_SAMPLES` are redrawn, as common implementations
  do (a device needs a validation split of its own); with many devices and few samples no draw
  passes (N = 100 over 2,000 SST-2 samples at 0.5), and the split is refused.
- `dirichlet_equal:ALPHA`: label skew at equal device sizes (Hsu et al. 2019): every device holds an
  equal share of the samples, and its class shares are drawn from Dir(ALPHA·C·p), p the training set's
  class shares over C classes (Dir(ALPHA) per class when the classes are balanced; scaled by p so
  that the devices ask for each class about as many samples as there are). Devices are filled one
  after another in a seed-fixed order, each class's count drawn from its shares; a class that has
  run out gives way to the classes still left (so even at a large ALPHA the last devices filled may
  hold one class: 1 of 100 at ALPHA = 100 over 2,000 SST-2 samples, seed 0).
- `shards:K`: the samples sorted by label are cut into N·K equal shards and each device gets K of
  them (McMahan et al. 2017): with K = 2 most devices see one or two classes.

Every device of a run derives its share from the same (labels, N, scheme, seed), so device i's
run knows its own samples without any other device's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol.errors import UserInputError

SCHEMES = ("iid", "dirichlet", "dirichlet_equal", "shards")
MIN_DIRICHLET_SAMPLES = 5
DIRICHLET_TRIES = 1000


@dataclass(frozen=True)
class Partition:
    """A parsed `--partition` value."""

    scheme: str
    alpha: float | None = None  # dirichlet, dirichlet_equal
    shards: int | None = None  # shards per device

    @classmethod
    def parse(cls, text: str) -> Partition:
        """'iid', 'dirichlet:ALPHA' or 'dirichlet_equal:ALPHA' (ALPHA > 0) or 'shards:K' (K >= 1); anything else
        is a user error."""
        name, _, value = text.partition(":")
        usage = (f"--partition {text!r}: use iid, dirichlet:ALPHA or dirichlet_equal:ALPHA (ALPHA > 0, e.g. 0.5) "
                 "or shards:K (K >= 1)")
        try:
            if name == "iid" and not value:
                return cls("iid")
            if name in ("dirichlet", "dirichlet_equal") and float(value) > 0:
                return cls(name, alpha=float(value))
            if name == "shards" and int(value) >= 1:
                return cls("shards", shards=int(value))
        except ValueError:
            pass
        raise UserInputError(usage)

    def __str__(self) -> str:
        if self.alpha is not None:
            return f"{self.scheme}:{self.alpha:g}"
        return {"iid": "iid", "shards": f"shards:{self.shards}"}[self.scheme]

    @property
    def needs_labels(self) -> bool:
        """Whether the split depends on the labels (label skew): not possible for free-text answers."""
        return self.scheme != "iid"

    def indices(self, n_samples: int, devices: int, seed: int, labels: np.ndarray | None = None) -> list[np.ndarray]:
        """Each device's sample indices (sorted), disjoint, covering every sample."""
        if devices < 1 or devices > n_samples:
            raise UserInputError(f"{devices} devices cannot share {n_samples} training samples "
                                 f"(each device needs at least one)")
        if self.needs_labels and labels is None:
            raise UserInputError(f"--partition {self} splits by label: it needs a classification task")
        rng = np.random.default_rng(seed)
        if self.scheme == "iid":
            parts = np.array_split(rng.permutation(n_samples), devices)
        elif self.scheme == "dirichlet":
            parts = _dirichlet(np.asarray(labels), devices, self.alpha, rng)
        elif self.scheme == "dirichlet_equal":
            parts = _dirichlet_equal(np.asarray(labels), devices, self.alpha, rng)
        else:
            parts = _shards(np.asarray(labels), devices, self.shards, rng)
        return [np.sort(np.asarray(p, dtype=int)) for p in parts]


def _dirichlet(labels: np.ndarray, devices: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    least = min(MIN_DIRICHLET_SAMPLES, len(labels) // devices)
    for _ in range(DIRICHLET_TRIES):
        parts: list[list[int]] = [[] for _ in range(devices)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(devices, alpha))) * len(members)).astype(int)[:-1]
            for device, chunk in enumerate(np.split(members, cuts)):
                parts[device].extend(chunk.tolist())
        if min(len(p) for p in parts) >= least:
            return [np.array(p) for p in parts]
    raise UserInputError(f"dirichlet:{alpha:g} left some of {devices} devices with fewer than {least} samples in "
                         f"{DIRICHLET_TRIES} draws: use fewer devices, more samples or a larger alpha")


def _dirichlet_equal(labels: np.ndarray, devices: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    classes, counts = np.unique(labels, return_counts=True)
    concentration = alpha * len(classes) * counts / len(labels)
    left = {label: list(rng.permutation(np.flatnonzero(labels == label))) for label in classes}
    sizes = [len(part) for part in np.array_split(np.arange(len(labels)), devices)]
    parts: list[list[int]] = [[] for _ in range(devices)]
    for device in rng.permutation(devices):  # seed-fixed order: no device index is always the last filled
        wanted = rng.multinomial(sizes[device], rng.dirichlet(concentration))
        for label, count in zip(classes, wanted):
            take = min(int(count), len(left[label]))
            parts[device] += [left[label].pop() for _ in range(take)]
        # What an exhausted class could not give comes from the classes left, the fullest first.
        while len(parts[device]) < sizes[device]:
            parts[device].append(left[max(classes, key=lambda label: len(left[label]))].pop())
    return [np.array(part) for part in parts]


def _shards(labels: np.ndarray, devices: int, per_device: int, rng: np.random.Generator) -> list[np.ndarray]:
    if devices * per_device > len(labels):
        raise UserInputError(f"shards:{per_device} over {devices} devices needs at least {devices * per_device} "
                             f"samples, not {len(labels)}")
    by_label = np.argsort(labels, kind="stable")
    shards = np.array_split(by_label, devices * per_device)
    order = rng.permutation(len(shards))
    return [np.concatenate([shards[i] for i in order[d * per_device:(d + 1) * per_device]]) for d in range(devices)]


def label_shares(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """The share of each class among `labels` (a device's label distribution)."""
    return np.bincount(np.asarray(labels, dtype=int), minlength=n_classes) / max(1, len(labels))


def own_distribution_weights(device_labels: np.ndarray, eval_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Weights (summing to 1) over the common evaluation samples that make them a sample of the
    device's own label distribution: a device's "held-out split from its own distribution" is the
    evaluation split re-weighted by class (each class's weight: its share on the device over its
    share in the evaluation split), so it needs no extra forward pass and no extra data."""
    own = label_shares(device_labels, n_classes)
    common = label_shares(eval_labels, n_classes)
    per_class = np.divide(own, common, out=np.zeros_like(own), where=common > 0)
    weights = per_class[np.asarray(eval_labels, dtype=int)]
    return weights / weights.sum()
