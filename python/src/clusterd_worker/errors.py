"""The exceptions of the package; every one derives from :class:`ClusterdError`.

Frames or bus messages over the protocol's limits raise :class:`~clusterd_worker.codec.Oversized`
(a :class:`ValueError`) before anything is sent.
"""

from __future__ import annotations

__all__ = [
    "ClusterdError", "NotUnderClusterd", "BadEnvironment", "ProtocolError", "Disconnected",
    "BadSessionId", "SessionTimeout", "ListenFailed", "AlreadyTaken",
]

#: How the error for a program started without clusterd tells to run it.
RUN_HINT = (
    "run it under clusterd, for example: "
    "clusterd --workers 4 --listen 127.0.0.1:3000 -- python3 app.py"
)


class ClusterdError(Exception):
    """Base class of this package's errors."""


class NotUnderClusterd(ClusterdError):
    """The program was not started by clusterd (``CLUSTERD_IPC_FD`` is not set)."""

    def __init__(self, var: str) -> None:
        super().__init__(f"{var} is not set: this program is a clusterd worker; {RUN_HINT}")
        #: The environment variable that is missing.
        self.var = var


class BadEnvironment(ClusterdError):
    """A ``CLUSTERD_*`` variable or the fd it names is not what clusterd passes."""


class ProtocolError(ClusterdError):
    """clusterd sent something that is not a frame of the protocol (the worker drains)."""


class Disconnected(ClusterdError):
    """clusterd's end of the channel or the bus is gone: nobody will answer."""


class BadSessionId(ClusterdError, ValueError):
    """A session id that is not 1 to 64 characters of ``[A-Za-z0-9_-]``."""


class SessionTimeout(ClusterdError):
    """clusterd did not acknowledge a session in time."""


class ListenFailed(ClusterdError):
    """clusterd could not listen on the address a worker asked for."""


class AlreadyTaken(ClusterdError):
    """Something that can be taken once (the request stream, a worker's fd) was taken already."""
