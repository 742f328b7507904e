"""A thread's alternate signal stack that is never freed: the workaround for OpenVINO's CPU plugin.

Measured here (OpenVINO 2026.4.1; ``benchmarks/altstack_repro.py``): ``compile_model`` on the CPU plugin
replaces the calling thread's alternate signal stack (``sigaltstack``) with an 11,568-byte one it maps,
and puts back the one it found when the Core is destroyed. Two Cores destroyed in the order they were
made, or a Core destroyed on another thread, leave the thread's alternate stack pointing at memory the
plugin has unmapped. The next signal delivered to that thread with a handler installed ``SA_ONSTACK``
(every Python-level handler: CPython installs them so; torch's DataLoader installs one for SIGCHLD, and
every stopped or exiting child sends one) cannot get its frame written, and the kernel kills the process
with SIGSEGV (``si_code`` SI_KERNEL), resetting the handler first, so faulthandler prints nothing. That
was the test suite's silent SIGSEGV in one process.

:func:`restore_altstack` makes the calling thread's alternate stack one of ours (256 KB, allocated once per
thread and kept for the life of the process); it is called after every OpenVINO compile the factory makes,
so whatever the plugin later puts back is ours, never a freed one.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading

__all__ = ["restore_altstack", "keep_altstack", "current_altstack"]

SIZE = 256 * 1024  # room for any signal frame, AMX tile state included (about 11 KB of it)
_STACKS: dict[int, ctypes.Array] = {}  # thread id -> its stack memory, never freed
_LOCK = threading.Lock()


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc():
    return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def current_altstack() -> tuple[int, int, int] | None:
    """This thread's (address, flags, size) of its alternate signal stack, or None off Linux."""
    libc = _libc()
    if libc is None:
        return None
    st = _StackT()
    if libc.sigaltstack(None, ctypes.byref(st)) != 0:
        return None
    return int(st.ss_sp or 0), int(st.ss_flags), int(st.ss_size)


def restore_altstack() -> None:
    """Make this thread's alternate signal stack ours (see the module docstring); a no-op off Linux."""
    libc = _libc()
    if libc is None:
        return
    with _LOCK:
        buf = _STACKS.get(threading.get_ident())
        if buf is None:
            buf = _STACKS[threading.get_ident()] = ctypes.create_string_buffer(SIZE)
    st = _StackT(ctypes.addressof(buf), 0, SIZE)
    libc.sigaltstack(ctypes.byref(st), None)  # EPERM while on the alternate stack: then nothing changes


@contextlib.contextmanager
def keep_altstack():
    """Run a block that may compile OpenVINO models, then put our alternate stack back."""
    try:
        yield
    finally:
        restore_altstack()
