"""How many cores the draft takes: all of them, or the ones a daemon on this machine leaves.

A daemon is on this machine when the endpoint is loopback (or ipc/inproc), or when its
WELCOME carries our own host id (a LAN name or address that happens to point back here).
Then draft and target share the cores, and both sides taking all of them makes their
spinning OpenMP and torch threads fight (0.38x the target alone, measured). The daemon picks
its own share when bound to loopback and reports it in WELCOME; we take the rest. A daemon
verifying on a GPU barely uses its CPU threads, and a remote one none of ours, so then the
draft takes every core. ``--threads`` always wins.

The split holds only while the daemon may be verifying for us. Between our rounds (a fresh
draft after a rejection, the rest of a draft the look-ahead did not reach, a token tree) a
CPU daemon on this machine has nothing of ours to do, so the draft takes its cores too
(``idle``): 21 ms a token on one core, 11.5 on two, measured on the 2-core Xeon.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from edgespec.models.cpu import client_threads, host_id, usable_cores
from edgespec.wire.codec import Welcome

__all__ = ["ThreadSplit", "client_threads", "is_local_endpoint"]


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// to a loopback address or ``localhost``."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = urlsplit(f"//{rest}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class ThreadSplit:
    """The draft's threads, the daemon's (as it said) and why; shown in stats and chat."""

    draft: int
    daemon: int
    reason: str  # "explicit", "same machine", "same machine, GPU", "remote"
    idle: int = 0  # the draft's threads while no verify of ours is in flight (0: ``draft``)

    @property
    def idle_draft(self) -> int:
        return self.idle or self.draft

    @classmethod
    def choose(cls, explicit: int, local_endpoint: bool, welcome: Welcome,
               cores: int | None = None, here: bytes | None = None) -> ThreadSplit:
        same_host = local_endpoint or welcome.host_id == (here or host_id())
        if explicit:
            reason = "explicit"
        elif same_host and not welcome.on_gpu:
            reason = "same machine"
        elif same_host:
            reason = "same machine, GPU"
        else:
            reason = "remote"
        shares_cpu = same_host and not welcome.on_gpu
        cores = cores or usable_cores()
        draft = client_threads(explicit, shares_cpu, welcome.threads, cores)
        idle = min(cores, draft + welcome.threads) if reason == "same machine" else draft
        return cls(draft, welcome.threads, reason, idle)

    @property
    def label(self) -> str:
        """For status lines: ``1+1 (same machine; draft 2 between rounds)``."""
        extra = f"; draft {self.idle} between rounds" if self.idle_draft != self.draft else ""
        return f"{self.draft}+{self.daemon} ({self.reason}{extra})"
