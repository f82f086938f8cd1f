"""The simulated cluster network: one bridge in the host namespace, one namespace per node.

Layout for subnet 10.213.0.0/24::

    host namespace                       node namespaces
    cairnbr<id>  10.213.0.1/24  <--+-- cv<id>000 == eth0  10.213.0.10/24  (cairn-...-node0)
    (the "gateway": the apiserver  +-- cv<id>001 == eth0  10.213.0.11/24  (cairn-...-node1)
     listens here)

Only loopback and addresses inside this subnet are ever used. The namespaces get a default route
via the gateway (node agents expect one), but that route leads nowhere else: setup refuses to install
it while the host forwards IPv4, so no packet from a node can leave the machine.

Shaping uses `tbf` on both ends of each veth: egress of the namespace's eth0 shapes node->cluster,
egress of the host-side veth shapes cluster->node. Delay needs `netem`, which is probed first
because not every kernel has it (the 6.18 test VM has tbf/htb but no netem).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tests.testbed.leaks import run_tag

DEFAULT_SUBNET = "10.213.0.0/24"
FIRST_NODE_HOST = 10  # node i gets <subnet>.(10 + i); .1 is the gateway, .2-.9 stay free for the bed
IFNAMSIZ = 15
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


class NetworkError(RuntimeError):
    pass


class ShapingUnsupported(NetworkError):
    """The kernel lacks the qdisc a requested shaping needs."""


def _ip(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# Messages iproute2 prints when the object is already gone; teardown treats those as success.
_GONE = ("cannot find device", "does not exist", "no such file", "no such device", "not found")


def _ip_gone_ok(args: list[str]) -> str | None:
    """Run a deletion; return an error message unless it worked or the object was already gone."""
    proc = _ip(args, check=False)
    if proc.returncode == 0 or any(g in proc.stderr.lower() for g in _GONE):
        return None
    return f"{' '.join(args)}: {proc.stderr.strip()}"


def host_links() -> set[str]:
    out = _ip(["ip", "-j", "link", "show"]).stdout
    return {link["ifname"] for link in json.loads(out or "[]")}


def netns_names() -> set[str]:
    out = _ip(["ip", "netns", "list"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def host_ipv4_networks() -> list[ipaddress.IPv4Interface]:
    out = _ip(["ip", "-j", "-4", "addr", "show"]).stdout
    found: list[ipaddress.IPv4Interface] = []
    for link in json.loads(out or "[]"):
        for info in link.get("addr_info", []):
            found.append(ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}"))
    return found


def free_subnet(pool: str = "10.213.0.0/16", prefixlen: int = 24) -> str:
    """First /24 (by default) of `pool` that no host address overlaps, so a test can run next to a
    bed that already uses the default subnet. Another process may still race for it; setup re-checks."""
    used = [iface.network for iface in host_ipv4_networks()]
    for candidate in ipaddress.IPv4Network(pool).subnets(new_prefix=prefixlen):
        if not any(candidate.overlaps(u) for u in used):
            return str(candidate)
    raise NetworkError(f"no free /{prefixlen} left in {pool}")


def host_forwards_ipv4() -> bool:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "0"


@functools.cache
def qdisc_available(kind: str) -> bool:
    """Probe whether the kernel knows a qdisc kind, on a throwaway veth pair.

    The probe link lives in the host namespace for a few milliseconds and is always deleted; qdisc
    support is kernel-wide so the answer holds for every namespace. The pid in its name keeps
    concurrent test processes from colliding.
    """
    probe = f"cq{os.getpid()}{kind[:4]}"[: IFNAMSIZ - 1]  # peer appends "p"
    _ip(["ip", "link", "add", probe, "type", "veth", "peer", "name", f"{probe}p"])
    try:
        args = {"netem": ["delay", "1ms"], "tbf": ["rate", "1mbit", "burst", "32k", "latency", "10ms"]}
        proc = _ip(["tc", "qdisc", "add", "dev", probe, "root", kind, *args.get(kind, [])], check=False)
        return proc.returncode == 0
    finally:
        _ip_gone_ok(["ip", "link", "del", probe])


def netem_available() -> bool:
    return qdisc_available("netem")


_RATE_UNITS = {  # tc(8) units: "bit" suffixes are bits/s, "bps" suffixes are BYTES/s
    "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
    "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9, "tbps": 8 * 10**12,
}  # fmt: skip


def rate_bits_per_second(rate: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", rate.lower())
    if not m or m.group(2) not in {*_RATE_UNITS, ""}:
        raise ValueError(f"unsupported rate {rate!r}; use tc units such as 20mbit or 1gbit")
    return int(float(m.group(1)) * _RATE_UNITS.get(m.group(2), 1))


@dataclass(frozen=True)
class Shaping:
    """Per-node link shaping, applied to both directions of the node's veth.

    `delay` is added on each direction of this node's link, so node A -> node B one-way latency is
    delay(A) + delay(B), and host <-> node is delay(node) each way.
    """

    rate: str | None = None  # tc rate, e.g. "1gbit"
    burst: str | None = None  # tc size; default: 10 ms worth of rate, at least 32 KiB
    latency: str = "50ms"  # tbf queue bound; too small makes TCP lose many packets at low rates
    delay: str | None = None  # netem delay, e.g. "5ms"

    def __post_init__(self) -> None:
        if self.rate is not None:
            rate_bits_per_second(self.rate)  # reject a typo before any link is touched

    def tbf_args(self) -> list[str]:
        assert self.rate is not None
        burst = self.burst or str(max(32 * 1024, rate_bits_per_second(self.rate) // 8 // 100))
        return ["tbf", "rate", self.rate, "burst", burst, "latency", self.latency]


def apply_shaping(dev: str, shaping: Shaping | None, netns: str | None = None) -> None:
    """Replace the root qdisc of `dev` (in `netns`, or the host) with `shaping`; None clears it.

    With a delay the arrangement is netem at the root with tbf as its only child (netem's own child
    slot replaces its internal tfifo), so packets are first delayed and then rate limited.
    """
    if shaping is not None and shaping.delay is not None and not netem_available():
        raise ShapingUnsupported("delay needs the netem qdisc, which this kernel does not provide")
    tc = ["tc", *(["-n", netns] if netns else [])]
    # Deleting the root qdisc restores the default; "no such" errors mean there was nothing to clear.
    _ip_gone_ok([*tc, "qdisc", "del", "dev", dev, "root"])
    if shaping is None or (shaping.rate is None and shaping.delay is None):
        return
    if shaping.delay is not None:
        _ip([*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "delay", shaping.delay])
        if shaping.rate is not None:
            _ip([*tc, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *shaping.tbf_args()])
    else:
        _ip([*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", *shaping.tbf_args()])


@dataclass
class NodeLink:
    name: str
    index: int
    namespace: str
    ip: str
    host_veth: str
    node_veth: str = "eth0"
    shaping: Shaping | None = None


@dataclass
class ClusterNetwork:
    """Bridge plus per-node namespaces for one run. `teardown()` is safe to call at any point."""

    run_id: str
    subnet: str = DEFAULT_SUBNET
    # Tells apart two networks of one run (the kubelet bed beside the main one); one letter.
    instance: str = ""
    nodes: dict[str, NodeLink] = field(default_factory=dict)
    _next_index: int = 0
    _bridge_created: bool = False

    def __post_init__(self) -> None:
        self.network = ipaddress.IPv4Network(self.subnet)
        # Interface names are capped at 15 bytes, so derive a short tag from the run id.
        self.tag = run_tag(self.run_id)
        if len(self.instance) > 1:
            raise ValueError(f"network instance {self.instance!r} must be one letter (names are 15 bytes)")
        self.bridge = f"cairnb{self.instance or 'r'}{self.tag}"
        self.veth_prefix = f"c{self.instance or 'v'}{self.tag}"

    @property
    def gateway(self) -> str:
        return str(self.network[1])

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def namespace_for(self, node: str) -> str:
        # "." keeps the main network's prefix ("<run>-") from matching another instance's ("<run>.k-").
        return f"{self.run_id}.{self.instance}-{node}" if self.instance else f"{self.run_id}-{node}"

    def setup(self) -> None:
        if self._bridge_created:
            return
        # A second run on the same subnet would make routing ambiguous; fail loudly instead.
        for iface in host_ipv4_networks():
            if iface.network.overlaps(self.network):
                raise NetworkError(f"subnet {self.network} overlaps host address {iface}; pick another")
        self._bridge_created = True  # set first: a half-created bridge must still be torn down
        # forward_delay 0: ports forward as soon as they are up, no STP listening phase.
        _ip(["ip", "link", "add", "name", self.bridge, "type", "bridge", "forward_delay", "0"])
        _ip(["ip", "addr", "add", f"{self.gateway}/{self.prefixlen}", "dev", self.bridge])
        _ip(["ip", "link", "set", self.bridge, "up"])

    def add_node(self, name: str, shaping: Shaping | None = None) -> NodeLink:
        if not _NAME_RE.match(name):
            raise ValueError(f"node name {name!r} must be lower-case alphanumerics and dashes")
        if name in self.nodes:
            raise NetworkError(f"node {name} already exists")
        self.setup()
        index = self._next_index
        host_no = FIRST_NODE_HOST + index
        if host_no >= self.network.num_addresses - 1:
            raise NetworkError(f"subnet {self.network} has no room for node #{index}")
        self._next_index += 1
        link = NodeLink(
            name=name,
            index=index,
            namespace=self.namespace_for(name),
            ip=str(self.network[host_no]),
            host_veth=f"{self.veth_prefix}{index:03d}",
        )
        self.nodes[name] = link  # record before creating anything so teardown finds partial work
        ns = link.namespace
        _ip(["ip", "netns", "add", ns])
        # Creating the peer directly inside the namespace avoids a clash with the host's own eth0.
        _ip(["ip", "link", "add", link.host_veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        _ip(["ip", "link", "set", link.host_veth, "master", self.bridge])
        _ip(["ip", "link", "set", link.host_veth, "up"])
        _ip(["ip", "-n", ns, "link", "set", "lo", "up"])
        _ip(["ip", "-n", ns, "addr", "add", f"{link.ip}/{self.prefixlen}", "dev", "eth0"])
        _ip(["ip", "-n", ns, "link", "set", "eth0", "up"])
        if host_forwards_ipv4():
            # With forwarding on, a default route would let node traffic leave the machine.
            warnings.warn("host forwards IPv4; nodes get no default route, only the subnet", stacklevel=2)
        else:
            _ip(["ip", "-n", ns, "route", "add", "default", "via", self.gateway])
        if shaping is not None:
            self.shape(name, shaping)
        return link

    def shape(self, name: str, shaping: Shaping | None) -> None:
        link = self.nodes[name]
        if shaping is not None and shaping.delay is not None and not netem_available():
            raise ShapingUnsupported("delay needs the netem qdisc, which this kernel does not provide")
        apply_shaping(link.node_veth, shaping, netns=link.namespace)
        apply_shaping(link.host_veth, shaping)
        link.shaping = shaping

    def remove_node(self, name: str) -> None:
        link = self.nodes.get(name)
        if link is None:
            return
        errors = self._remove(link.host_veth, link.namespace)
        del self.nodes[name]
        if errors:
            raise NetworkError("; ".join(errors))

    def _remove(self, host_veth: str, namespace: str) -> list[str]:
        # Deleting one veth end deletes its peer at once; deleting only the namespace would leave the
        # host end to vanish asynchronously, which races the leak check.
        errors = [e for e in (_ip_gone_ok(["ip", "link", "del", host_veth]),) if e]
        if namespace in netns_names():
            errors += [e for e in (_ip_gone_ok(["ip", "netns", "del", namespace]),) if e]
        return errors

    def teardown(self) -> None:
        """Delete every veth, namespace and the bridge of this run, including ones a failed setup
        left unrecorded (found by their run-specific names). Raises only after trying everything."""
        errors: list[str] = []
        for link in list(self.nodes.values()):
            errors += self._remove(link.host_veth, link.namespace)
        self.nodes.clear()
        for ifname in sorted(host_links()):
            if ifname.startswith(self.veth_prefix):
                errors += [e for e in (_ip_gone_ok(["ip", "link", "del", ifname]),) if e]
        for ns in sorted(netns_names()):
            if ns.startswith(self.namespace_for("")):
                errors += [e for e in (_ip_gone_ok(["ip", "netns", "del", ns]),) if e]
        if self._bridge_created or self.bridge in host_links():
            errors += [e for e in (_ip_gone_ok(["ip", "link", "del", self.bridge]),) if e]
        self._bridge_created = False
        self._wait_links_gone()
        if errors:
            raise NetworkError("teardown incomplete: " + "; ".join(errors))

    def _wait_links_gone(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mine = {n for n in host_links() if n == self.bridge or n.startswith(self.veth_prefix)}
            if not mine:
                return
            time.sleep(0.05)

    def __enter__(self) -> ClusterNetwork:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()
