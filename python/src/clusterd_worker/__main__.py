"""``python -m clusterd_worker``: the package's version, and how a worker is run."""

import sys

from . import __version__
from .errors import RUN_HINT


def main() -> None:
    """Prints the version (``--version``) or a short usage."""
    if "--version" in sys.argv[1:]:
        print(f"clusterd-worker {__version__}")
        return
    print(f"clusterd-worker {__version__}: the Python side of clusterd's native protocol.\n"
          f"A worker program calls `await clusterd_worker.Worker.start()`; {RUN_HINT}")


if __name__ == "__main__":
    main()
