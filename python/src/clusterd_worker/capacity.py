"""How close this process is to its fd limit, so that clusterd stops handing it connections before
the kernel starts dropping them (PROTOCOL.md, ``FromWorker::Capacity``).

Every handed-off connection is a new fd. At ``RLIMIT_NOFILE`` the kernel cannot install the next
one: the connection is lost (the frame arrives with ``MSG_CTRUNC`` and no fd), and nothing else the
worker needs an fd for works either. So the worker reports itself full a little before that, and
has room again once enough fds were closed, one reserve below the threshold so that a worker at the
edge does not flap. The rule is the Rust SDK's (``worker-sdk/src/capacity.rs``), numbers included.

Counting open fds reads ``/proc/self/fd``, which costs in proportion to their number, so it is done
only when a received fd's number says the table may be nearly full (fds are allocated lowest
first: fd ``n`` means ``0..n`` were all open), after a lost fd, and, while full, when connections
close and once a second (:data:`RECHECK_EVERY`).
"""

from __future__ import annotations

import os
import resource
from typing import Optional

__all__ = ["Capacity", "reserve", "is_full", "MIN_RESERVE", "MAX_RESERVE", "RECHECK_EVERY"]

#: The smallest reserve of fds kept for everything but client connections (a limit of 256 keeps 32).
MIN_RESERVE = 16
#: The largest reserve.
MAX_RESERVE = 1024
#: While full, how often the open fds are counted again, in seconds.
RECHECK_EVERY = 1.0
#: A limit too large to matter (``RLIM_INFINITY``, or unknown).
_UNLIMITED = 1 << 62


def reserve(limit: int) -> int:
    """The fds kept free for everything but client connections: an eighth of ``limit``, bounded."""
    return min(max(limit // 8, MIN_RESERVE), MAX_RESERVE)


def is_full(open_fds: int, limit: int, was_full: bool) -> bool:
    """Whether ``open_fds`` of ``limit`` make the process full, given whether it was full already:
    full from one reserve below the limit, room again from two reserves below."""
    r = reserve(limit)
    if was_full:
        return open_fds > max(limit - 2 * r, 0)
    return open_fds >= max(limit - r, 0)


def _open_fds() -> Optional[int]:
    """The process's open fds, not counting the one used to count them; None without a spare fd."""
    try:
        return max(len(os.listdir("/proc/self/fd")) - 1, 0)
    except OSError:
        return None


class Capacity:
    """The capacity state of this process (one per :class:`~clusterd_worker.Worker`)."""

    def __init__(self, limit: Optional[int] = None) -> None:
        if limit is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            limit = _UNLIMITED if soft == resource.RLIM_INFINITY or soft <= 0 else soft
        #: The soft ``RLIMIT_NOFILE`` read at start.
        self.limit = limit
        #: Whether clusterd was told this process is full.
        self.full = False

    def on_fd(self, fd: int) -> bool:
        """A connection arrived as fd ``fd``. Returns True when this made the process full."""
        lowest = fd + 1
        # Below half the threshold by the cheap estimate, a count is not worth its cost.
        if self.full or (lowest + reserve(self.limit)) * 2 < self.limit:
            return False
        counted = _open_fds()
        return self._set(is_full(lowest if counted is None else counted, self.limit, False))

    def on_lost(self) -> bool:
        """The kernel could not install a received fd: the process is at its limit. Returns True
        when that is a change."""
        return self._set(True)

    def recheck(self) -> bool:
        """Counts again while full. Returns True when the process has room again."""
        if not self.full:
            return False
        counted = _open_fds()
        if counted is None or is_full(counted, self.limit, True):
            return False  # counting needs an fd itself: no fd, no room
        self.full = False
        return True

    def _set(self, now_full: bool) -> bool:
        if now_full and not self.full:
            self.full = True
            return True
        return False
