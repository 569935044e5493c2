"""Server training speed of the side network against its chain length, beside the per-layer-indexing form it had
until commit 987d90b.

The side network reads one (d,) state per entry of its chain (30 for SmolLM2's layers; 30·k when the last k prompt
positions are uploaded, `cost_matched.py`). Until commit 987d90b its forward indexed the stacked parameters per entry
(`self.down[i]`); autograd then fills a zero gradient of the whole (entries, d, r) parameter for every entry, so a
training step cost grew with the square of the chain length. It now splits them once (`unbind`). Both forms run here
side by side in one process on the same inputs and seeds, and must end with bitwise-equal parameters.

    OMP_NUM_THREADS=1 python benchmarks/side_network_speed.py --entries 30,60,120,240

Prints one JSON object: per chain length, seconds per training step (batch 32) of each form and their ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from protocol.model.side_network import AdditiveSideNetwork, SideNetworkShape


class IndexedSideNetwork(AdditiveSideNetwork):
    """The forward before commit 987d90b: parameters indexed per entry (the reference being measured against)."""

    def side_states(self, activations: torch.Tensor) -> torch.Tensor:
        inputs = (activations.float() - self.input_mean) / self.input_scale
        gates = torch.sigmoid(self.gate_logits)
        state = inputs[:, 0] + torch.nn.functional.gelu(inputs[:, 0] @ self.down[0]) @ self.up[0]
        for i in range(1, self.shape.n_layers):
            entry = (1 - gates[i]) * inputs[:, i] + gates[i] * state
            state = entry + torch.nn.functional.gelu(entry @ self.down[i]) @ self.up[i]
        return state


def seconds_per_step(network_class: type[AdditiveSideNetwork], entries: int, steps: int) -> tuple[float, torch.Tensor]:
    """Mean seconds of one AdamW step on a batch of 32, and the parameters after `steps` steps."""
    network = network_class(SideNetworkShape(entries, 576, 64, 2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # non-zero up-projections and head, as after the first steps of real training
        network.up.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(1))
        network.head.weight.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    inputs = torch.randn(32 * steps, entries, 576, generator=torch.Generator().manual_seed(3)).half()
    targets = torch.randn(32 * steps, 2, generator=torch.Generator().manual_seed(4))
    start = time.perf_counter()
    for batch in range(steps):
        rows = slice(32 * batch, 32 * batch + 32)
        loss = torch.nn.functional.mse_loss(network(inputs[rows]), targets[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps, torch.cat([p.detach().flatten() for p in network.parameters()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", default="30,60,120,240", help="comma-separated chain lengths")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    rows = []
    for entries in (int(v) for v in args.entries.split(",")):
        indexed, before = seconds_per_step(IndexedSideNetwork, entries, args.steps)
        split, after = seconds_per_step(AdditiveSideNetwork, entries, args.steps)
        rows.append({"entries": entries, "indexed_s_per_step": indexed, "split_s_per_step": split,
                     "speedup": indexed / split, "bitwise_equal": bool(torch.equal(before, after))})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
