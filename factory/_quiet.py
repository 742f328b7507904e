"""Silence chatty native libraries (absl/TFLite/OpenVINO logs on file descriptors 1 and 2).

Python-level redirection does not catch C++ logging, so this swaps the process's stdout/stderr
file descriptors for a temp file while a noisy call runs; the text is kept for error messages.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from typing import Iterator

__all__ = ["native_quiet"]


class _Captured:
    text = ""


@contextlib.contextmanager
def native_quiet() -> Iterator[_Captured]:
    captured = _Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        fds = (sys.__stdout__.fileno(), sys.__stderr__.fileno())
    except (AttributeError, ValueError, io.UnsupportedOperation):  # no real fds (e.g. embedded): Python-level only
        fds = ()
    saved = [os.dup(fd) for fd in fds]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        for fd in fds:
            os.dup2(sink.fileno(), fd)
        py_out = io.StringIO()
        try:
            with contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_out), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield captured
        finally:
            for fd, old in zip(fds, saved, strict=True):
                os.dup2(old, fd)
                os.close(old)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace") + py_out.getvalue()
