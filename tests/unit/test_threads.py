"""The executor's OS-level thread name (what top -H and the benchmark's CPU split read)."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lstm_serve.threads import EXECUTOR_THREAD_NAME, MAX_NAME_BYTES, name_this_thread


def _os_name() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names are read from /proc")
def test_pool_threads_carry_the_executor_name_for_the_os() -> None:
    with ThreadPoolExecutor(1, initializer=name_this_thread, initargs=(EXECUTOR_THREAD_NAME,)) as pool:
        assert pool.submit(_os_name).result() == EXECUTOR_THREAD_NAME
    assert _os_name() != EXECUTOR_THREAD_NAME


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names are read from /proc")
def test_a_long_name_is_cut_to_what_linux_keeps() -> None:
    def named() -> str:
        name_this_thread("x" * 40)
        return _os_name()

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(named).result() == "x" * MAX_NAME_BYTES
