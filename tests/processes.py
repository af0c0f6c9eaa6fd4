"""Every process the suite starts ends with the suite, whatever happened to it.

Each process a test starts inherits a mark in its environment (one value per
run), and so do the processes those start, even ones that left their parent's
session or process group, or outlived it. When the session ends, every process
still carrying the mark is killed with its process group. This holds when a
test fails or times out, and when a signal the tests rely on is ignored
(under `nohup`, SIGHUP is).
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from pathlib import Path

MARK = "ASSISTANT_INGEST_TEST_RUN"


def mark_this_run() -> None:
    os.environ[MARK] = uuid.uuid4().hex


def _marked(mark: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if mark in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def end_the_rest() -> list[int]:
    """Kill every process of this run still alive, with its group; returns their ids."""
    value = os.environ.get(MARK)
    if not value:
        return []
    left = _marked(f"{MARK}={value}".encode())
    own_group = os.getpgrp()
    for pid in left:
        with contextlib.suppress(OSError):
            group = os.getpgid(pid)
            if group != own_group:
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left
