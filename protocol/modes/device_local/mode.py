"""`device_local`: the same side network, trained on the device from its own forward
outputs. Nothing is uploaded and nothing leaks: the reference every server-assisted
variant must beat ("what does the server buy?"). The side-network server code runs
inside the device process, so accuracy equals `side_network` with the same seed, and
its compute is counted as device time."""

from __future__ import annotations

from protocol.modes.side_network.mode import SideNetworkMode


class DeviceLocalMode(SideNetworkMode):
    """Side-network training on the device; no server, no traffic, no server view."""

    name = "device_local"
    description = "the side network trained on the device itself: nothing leaves the device"
    view_fields = frozenset()
    uploads = False
