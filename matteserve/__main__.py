"""``matteserve`` and ``python -m matteserve``: the command line, or what to install to get it.

The base install is the client library alone; the command's module needs an extra, so it is
imported here, where its absence becomes a message instead of a traceback.
"""

from __future__ import annotations

import sys

from matteserve.extras import missing_extra


def main() -> None:
    try:
        from matteserve.cli import main as run
    except ModuleNotFoundError as e:
        if (missing := missing_extra(e)) is None:
            raise
        sys.exit(f"error: {missing}")
    run()


if __name__ == "__main__":
    main()
