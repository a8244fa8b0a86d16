"""How tritonserver is started: it must die with the process that started it."""

from __future__ import annotations

import signal
import subprocess
import sys

from matteserve.tritonserver import die_with_parent

# Prints the parent-death signal the process runs with (prctl PR_GET_PDEATHSIG = 2).
READ_PDEATHSIG = (
    "import ctypes; v = ctypes.c_int(); ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(v)); print(v.value)"
)


def test_the_started_program_carries_a_parent_death_signal_set_without_python_in_the_child() -> None:
    argv = die_with_parent([sys.executable, "-c", READ_PDEATHSIG])
    assert argv[-3:] == [sys.executable, "-c", READ_PDEATHSIG]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, start_new_session=True).stdout
    assert int(out) == signal.SIGTERM
