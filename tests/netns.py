"""Hosts for team-mode tests: network + UTS namespaces on a private bridge, each with its own hostname.

`Hosts(n)` creates a bridge with a /24 of 10.231.0.0/16 no interface uses, and n namespaces `<tag>-h<k>`,
each joined to it by a veth pair, address .<10+k>. Commands run there through `ip netns exec` and
`unshare --uts` (a hostname of its own). `close()` kills every process in the namespaces and deletes
everything it made; it runs even when creation failed halfway. Needs root and iproute2.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import uuid


def namespaces_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.name != "posix" or os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2, util-linux)"
    probe = f"regprobe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", "netns", "exec", namespace, "ip", *args] if namespace else ["ip", *args]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=30)


def used_subnets() -> set[str]:
    """The 10.231.x prefixes some interface of this machine already has."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    return {word.rsplit(".", 1)[0] for word in out.split() if word.startswith("10.231.")}


class Hosts:
    """n namespaces on one bridge; `gateway` is the bridge's address, where the shared servers listen."""

    def __init__(self, n: int):
        self.tag = uuid.uuid4().hex[:5]
        self.bridge = f"regbr{self.tag}"
        self.names = [f"reg{self.tag}-h{k}" for k in range(1, n + 1)]
        self.made: list[tuple[str, str]] = []  # ("netns" | "link", name), in order of creation
        prefix = random.choice(sorted({f"10.231.{x}" for x in range(1, 255)} - used_subnets()))
        self.gateway = f"{prefix}.1"
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            self.made.append(("link", self.bridge))
            ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for k, name in enumerate(self.names, start=1):
                subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
                self.made.append(("netns", name))
                outside, inside = f"regv{self.tag}{k}", f"regp{self.tag}{k}"
                ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                self.made.append(("link", outside))  # deleting one end deletes the pair
                ip("link", "set", outside, "master", self.bridge, "up")
                ip("link", "set", inside, "netns", name)
                ip("addr", "add", f"{prefix}.{10 + k}/24", "dev", inside, namespace=name)
                ip("link", "set", inside, "up", namespace=name)
                ip("link", "set", "lo", "up", namespace=name)
        except BaseException:
            self.close()
            raise

    def hostname(self, host: int) -> str:
        """The hostname of host `host` (1-based): what its runs record."""
        return self.names[host - 1]

    def popen(self, host: int, command: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
        """Start `command` on host `host` with its own hostname."""
        wrapped = ["ip", "netns", "exec", self.names[host - 1], "unshare", "--uts", "sh", "-c",
                   'hostname "$0" && exec "$@"', self.names[host - 1], *command]
        return subprocess.Popen(wrapped, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)

    def pids(self, host: int) -> list[int]:
        """Every process in host `host`'s network namespace."""
        out = subprocess.run(["ip", "netns", "pids", self.names[host - 1]], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill_all(self, host: int) -> list[int]:
        """kill -9 every process in host `host`'s namespace (as if the machine lost power); returns their pids."""
        pids = self.pids(host)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def close(self) -> None:
        """Kill what runs in the namespaces, then delete the namespaces and links this object made."""
        for kind, name in reversed(self.made):
            if kind == "netns":
                self.kill_all(self.names.index(name) + 1)
                subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
            else:
                subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)
        self.made.clear()
