"""Exclusive locks on files beside a shared folder, so that pods sharing one volume take turns.

``fcntl.flock`` locks an open file, not a path: the lock file is never deleted, so every process
locks the same inode. On NFS (a ReadWriteMany volume) Linux emulates ``flock`` with byte-range
locks that the server arbitrates between clients.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


def lock_path(folder: Path) -> Path:
    """The lock file for ``folder``: in its parent, so it survives ``folder`` being replaced."""
    return folder.parent / f".{folder.name}-lock"


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock on ``folder`` for the block; waits (and says so) while another
    process holds it. Locks on different folders are independent; one process must not nest two
    ``exclusive`` blocks on the same folder (the inner one would wait forever)."""
    path = lock_path(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES):
            raise
        # A read-only store (KServe mounts its volume so): no process can write it, so nothing races.
        logger.info("%s is read-only (%s): reading it without a lock", folder, e.strerror)
        handle = None
    if handle is None:
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("%s is being written by another process: waiting for %s", folder, path)
            start = time.monotonic()
            fcntl.flock(handle, fcntl.LOCK_EX)
            logger.info("got %s after %.0f s", path, time.monotonic() - start)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
