"""The one-process suite's SIGSEGV, found (docs: "Status and known limits"): OpenVINO's CPU plugin leaves the thread's
alternate signal stack pointing at memory it unmapped; the next SIGCHLD to a Python handler kills the process.
Every compile the factory makes puts a stack of its own back (factory._altstack)."""

from __future__ import annotations

import gc
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack is Linux's here")


def _mapped(addr: int) -> bool:
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return True
    return False


def test_openvino_runners_made_and_dropped_in_any_order_leave_a_mapped_signal_stack(tmp_path, trained):
    import openvino as ov

    from factory._altstack import current_altstack
    from factory.device.runtimes import get_runtime

    xml = tmp_path / "m.xml"
    ov.save_model(ov.convert_model(str(trained.onnx)), str(xml), compress_to_fp16=False)
    runtime = get_runtime("openvino")
    a = runtime.load_file(xml, {"threads": 1})
    b = runtime.load_file(xml, {"threads": 1})
    del a  # in the order they were made: what left the raw plugin's stack dangling
    gc.collect()
    del b
    gc.collect()
    sp, _, size = current_altstack()
    assert sp and _mapped(sp) and size >= 64 * 1024


def test_the_reproducer_survives_the_signal_once_guarded(monkeypatch):
    from tests.conftest import ROOT

    # for this test only: a folder of scripts left on sys.path is inherited by every process spawned later
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from altstack_repro import run

    code, out = run(guarded=True)
    assert code == 0 and "survived the SIGCHLD" in out, out
    assert "UNMAPPED" not in out
