"""Open a bundle folder for inference: verify it (when given a trusted key), then load its runtime."""

from __future__ import annotations

from pathlib import Path

from .._io import sha256_file
from ..bundle.archive import verify_bundle
from ..bundle.manifest import Manifest
from ..errors import BundleError
from .runtimes import Runner, get_runtime

__all__ = ["open_bundle"]


def open_bundle(folder: str | Path, public_key=None) -> tuple[Manifest, Runner]:
    """(manifest, runner) for a bundle folder; for a pipeline release the runner is a
    :class:`factory.device.chain.Chain` (frames in, both stages run).

    With a trusted ``public_key``: the signature and every file's hash and size are checked first.
    Without one (the factory's own folders): every listed file must still match its sha256.
    """
    folder = Path(folder)
    if public_key is not None:
        manifest = verify_bundle(folder, public_key)["manifest"]
    else:
        manifest = Manifest.read(folder)
        for name, entry in manifest.files.items():
            if not (folder / name).is_file() or sha256_file(folder / name) != entry["sha256"]:
                raise BundleError(f"{folder / name}: missing or does not match the manifest's sha256")
    from ..bundle.pipeline import is_pipeline

    if is_pipeline(manifest):  # its members' archives, each verified and matched (factory.bundle.pipeline)
        from .chain import open_chain

        return manifest, open_chain(folder, manifest, public_key)
    return manifest, get_runtime(manifest.runtime["backend"]).load(folder, manifest.runtime["options"])
