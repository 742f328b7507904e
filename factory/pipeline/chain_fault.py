"""A pipeline release with a bad classifier, made on purpose: what the fleet's telemetry must catch.

The fault is the one a conversion gone wrong gives: the classifier member's logits pushed toward one
class (an ``Add`` on its ONNX graph's output), so it says that class for nearly every crop. The member
is re-signed under a ``-fault`` pre-release version, the chain validated end to end against the
canonical pair like any release (it fails), and the pipeline assembled under a new version: the demo
publishes it anyway (``allow_failed``) to show that a staged rollout stops it by itself.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from .._io import atomic_dir
from ..bundle.manifest import Manifest, file_entries, parse_version
from ..errors import ConfigError

__all__ = ["biased_classifier", "faulty_release"]


def biased_classifier(src: Path, dest: Path, key, *, label: int = 0, bias: float = 20.0) -> Manifest:
    """A copy of an ONNX Runtime classifier bundle whose logit of class ``label`` gets ``bias`` added."""
    import onnx
    from onnx import helper, numpy_helper

    m = Manifest.read(src)
    if m.runtime["backend"] != "onnxruntime":
        raise ConfigError(f"the injected fault edits an ONNX graph; {src} is a {m.runtime['backend']} bundle")
    with atomic_dir(dest) as tmp:
        for f in Path(src).iterdir():
            shutil.copy2(f, tmp / f.name)
        model = onnx.load(str(tmp / m.main_file))
        out = model.graph.output[0].name
        for node in model.graph.node:
            node.output[:] = [f"{out}_before_fault" if o == out else o for o in node.output]
        vec = np.zeros((1, len(m.labels)), np.float32)
        vec[0, label] = bias
        model.graph.initializer.append(numpy_helper.from_array(vec, "injected_fault_bias"))
        model.graph.node.append(
            helper.make_node("Add", [f"{out}_before_fault", "injected_fault_bias"], [out], name="injected_fault")
        )
        onnx.save(model, str(tmp / m.main_file))
        major, minor, patch, _ = parse_version(m.version)
        m.version = f"{major}.{minor}.{patch}-fault"
        m.lineage["injected_fault"] = {"what": f"logit of {m.labels[label]!r} + {bias:g}", "from": m.key}
        m.files = file_entries(tmp, list(m.files))
        m.write_signed(tmp, key)
    return m


def faulty_release(release: Path, out_root: Path, version: str, key, data, accuracy: dict) -> Path:
    """The pipeline ``release`` with its classifier biased, validated honestly, assembled as ``version``."""
    from ..bundle.archive import unpack
    from ..bundle.pipeline import STAGES, member_archive
    from ..device.chain import bundle_stage
    from .chain import canonical_stage
    from .chain_release import assemble_release, validate_chain

    good = Manifest.read(release)
    with tempfile.TemporaryDirectory(prefix="factory-fault-") as tmp:
        members = {s: unpack(release / member_archive(s), Path(tmp) / s) for s in STAGES}
        biased_classifier(members["classify"], Path(tmp) / "classify-fault", key)
        members["classify"] = Path(tmp) / "classify-fault"
        reference = tuple(canonical_stage(Manifest.read(members[s]).lineage["canonical"]["path"]) for s in STAGES)
        candidate = tuple(bundle_stage(members[s], key.public_key()) for s in STAGES)
        validation = validate_chain(data, reference, candidate, accuracy)
        config = {"name": good.name, "version": version, "accuracy": accuracy}
        return assemble_release(
            config, good.target, members, validation, key, out_root,
            profile=good.reference_profile, latency=good.latency,
        )  # fmt: skip
