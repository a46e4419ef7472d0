"""Session epochs: a message from a connection the client has replaced is refused.

A DEALER never reports a dead peer, and bytes already in a stalled daemon's socket buffers
are read when it wakes up. The client bumps its epoch on every reconnect and re-opens its
sessions under the new one; the daemon keeps, per session, the epoch of the OPEN that last
(re)built it and refuses anything older with ``StaleEpoch``, so a stale OPEN cannot roll a
session back and a stale DRAFT cannot advance it.
"""

from __future__ import annotations

from collections.abc import Callable

from edgespec.wire.errors import StaleEpoch
from edgespec.wire.protocol import epoch_is_older


class EpochGuard:
    """Bounded: past ``max_entries`` the epochs of sessions no longer live are dropped (what
    ``is_live`` says), so churned sessions cannot grow the table."""

    def __init__(self, max_entries: int = 4096,
                 is_live: Callable[[int], bool] = lambda sid: True) -> None:
        self.epochs: dict[int, int] = {}  # session id -> epoch of its latest successful OPEN
        self.max_entries = max_entries
        self.is_live = is_live
        self.refused = 0

    def check(self, sid: int, epoch: int) -> None:
        if sid == 0:
            return  # HELLO and PING name no session
        known = self.epochs.get(sid)
        if known is not None and epoch_is_older(epoch, known):
            self.refused += 1
            raise StaleEpoch(f"epoch {epoch} of session {sid:#x} was superseded by {known}")

    def opened(self, sid: int, epoch: int) -> None:
        """Recorded only once an OPEN succeeded, so failed opens cannot grow the table."""
        if sid == 0:
            return
        self.epochs[sid] = epoch
        if len(self.epochs) > self.max_entries:
            self.prune(self.is_live)
            while len(self.epochs) > self.max_entries:  # live ones only: keep the newest
                del self.epochs[next(iter(self.epochs))]

    def prune(self, is_live: Callable[[int], bool]) -> None:
        self.epochs = {sid: e for sid, e in self.epochs.items() if is_live(sid)}
