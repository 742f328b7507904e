"""The one-process suite's silent SIGSEGV, reduced to OpenVINO and one signal (upstream-ready evidence).

    python benchmarks/altstack_repro.py            # raw OpenVINO: dies of SIGSEGV, faulthandler silent
    python benchmarks/altstack_repro.py --guarded  # the same after factory._altstack.restore_altstack()

Steps: a Python-level SIGCHLD handler (torch's DataLoader installs one; CPython installs every Python
handler with SA_ONSTACK); two OpenVINO Cores compile a model on the main thread and are destroyed in the
order they were made (the CPU plugin leaves the main thread's sigaltstack pointing at a stack it has
unmapped: printed below); a child process is stopped, so the kernel sends SIGCHLD to this process,
cannot write the signal frame, and kills it with SIGSEGV (si_code SI_KERNEL) with the handler reset.
Writes nothing; prints the alternate stack after each step and how the child run ended.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import faulthandler, gc, os, signal, subprocess, sys, time
import numpy as np
sys.path.insert(0, sys.argv[3])
from factory._altstack import current_altstack, restore_altstack
guarded = sys.argv[2] == "guarded"
faulthandler.enable()
signal.signal(signal.SIGCHLD, lambda signum, frame: None)
import openvino as ov

def mapped(addr):
    for line in open("/proc/self/maps"):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= addr < hi:
            return True
    return False

def show(label):
    sp, _, size = current_altstack()
    print(f"{label:34s} sigaltstack {hex(sp)} size {size} {'mapped' if mapped(sp) else 'UNMAPPED'}", flush=True)

def compile_one():
    core = ov.Core()
    compiled = core.compile_model(core.read_model(sys.argv[1]), "CPU")
    compiled.create_infer_request().infer({0: np.zeros((1, 3, 16, 16), np.float32)})
    if guarded:
        restore_altstack()
    return core, compiled

show("faulthandler enabled")
a = compile_one(); show("core A compiled")
b = compile_one(); show("core B compiled")
del a; gc.collect(); show("core A destroyed")
del b; gc.collect(); show("core B destroyed")
child = subprocess.Popen(["sleep", "3"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
time.sleep(0.5)
os.kill(child.pid, signal.SIGSTOP)  # the kernel sends this process SIGCHLD (CLD_STOPPED)
time.sleep(0.5)
os.kill(child.pid, signal.SIGCONT)
child.wait()
print("survived the SIGCHLD", flush=True)
"""


def _model(folder: Path) -> Path:
    import openvino as ov
    import torch

    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    onnx_path = folder / "m.onnx"
    torch.onnx.export(m.eval(), (torch.zeros(1, 3, 16, 16),), str(onnx_path), dynamo=False)
    xml = folder / "m.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


def run(guarded: bool) -> tuple[int, str]:
    """(exit code, output) of the child run: -11 is SIGSEGV."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = _model(Path(tmp))
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(xml), "guarded" if guarded else "raw", str(ROOT)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        return done.returncode, done.stdout + done.stderr[-2000:]


if __name__ == "__main__":
    code, out = run("--guarded" in sys.argv)
    print(out)
    print(f"exit code {code}" + (" (SIGSEGV)" if code == -11 else ""))
