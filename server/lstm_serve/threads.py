"""OS-level thread names, so that ``top -H``, ``/proc/PID/task/*/comm``, py-spy and the
benchmark's per-thread CPU split can tell the executor (onnxruntime) from the event
loop. Python 3.11 names its threads only inside Python."""

from __future__ import annotations

import contextlib
import ctypes
import sys

PR_SET_NAME = 15
MAX_NAME_BYTES = 15
"""Linux keeps 16 bytes of a thread's name, the terminating NUL included."""

EXECUTOR_THREAD_NAME = "onnxruntime"


def name_this_thread(name: str) -> None:
    """Name the calling thread for the OS (Linux; elsewhere nothing happens)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:MAX_NAME_BYTES], 0, 0, 0)
