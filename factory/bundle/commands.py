"""``factory keys ...`` and ``factory bundle ...``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

__all__ = ["keys", "bundle"]


@click.group()
def keys() -> None:
    """Manage Ed25519 signing keys."""


@keys.command("generate")
@click.option(
    "--out",
    "prefix",
    default="keys/signing",
    show_default=True,
    help="Writes PREFIX.key (private, 0600) and PREFIX.pub.",
)
@click.option("--force", is_flag=True, help="Replace an existing key.")
@click.option("--if-missing", is_flag=True, help="Do nothing (exit 0) when the key already exists.")
def generate_cmd(prefix: str, force: bool, if_missing: bool) -> None:
    """Generate a signing key pair. Keep the .key secret; give the .pub to devices and registries."""
    from .signing import generate_keys, key_id, load_public_key

    if if_missing and Path(prefix + ".key").is_file():
        click.echo(f"{prefix}.key exists; kept it")
        return
    priv, pub = generate_keys(prefix, overwrite=force)
    click.echo(f"wrote {priv} and {pub} (key id {key_id(load_public_key(pub))})")


@click.group()
def bundle() -> None:
    """Verify, inspect and unpack bundles (folders or .tar.gz archives)."""


def _accuracy_line(p: dict) -> str:
    """The parity report's accuracy in words, by the bundle's task."""
    from ..tasks import quality_of

    q = quality_of(p)
    if q.interval is None:  # classification: top-1 against the canonical model, and agreement
        return (
            f"  accuracy    top-1 {p['top1']:.4f} (canonical {p['canonical_top1']:.4f}, drop "
            f"{p['accuracy_drop_pt']:+.2f} pt, agreement {p['top1_agreement']:.4f}) on {p['n']} test images"
        )
    lo, hi = p[q.interval]
    return (
        f"  accuracy    {q.name} {p[q.value]:.4f} ({q.words} {p[q.loss]:+.2f} [{lo:+.2f}, {hi:+.2f}]{q.unit}) "
        f"on {p['n']} test images"
    )


def _folder(path: str, stack) -> Path:
    """A bundle folder; an archive is unpacked safely into a temp folder first."""
    from .archive import unpack

    p = Path(path)
    if p.is_dir():
        return p
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="factory-bundle-")))
    return unpack(p, tmp / "bundle")


@bundle.command("verify")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(exists=True))
@click.option(
    "--pubkey",
    required=True,
    type=click.Path(dir_okay=False),
    help="The trusted public key (never one from the bundle).",
)
def verify_cmd(bundle_path: str, pubkey: str) -> None:
    """Verify BUNDLE's signature with --pubkey, then every file's sha256 and size.

    Exit 0 when valid; exit 2 with the reason when not (tampered, unsigned, wrong key, unsafe archive).
    """
    import contextlib

    from .archive import verify_bundle
    from .signing import load_public_key

    key = load_public_key(pubkey)
    with contextlib.ExitStack() as stack:
        result = verify_bundle(_folder(bundle_path, stack), key)
    m = result["manifest"]
    click.echo(
        f"OK {m.name} {m.version} {m.target}: signature by key {result['key_id']}, {result['files']} file(s) match"
    )


@bundle.command("inspect")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
def inspect_cmd(bundle_path: str, as_json: bool) -> None:
    """Show what a bundle holds and what was measured (does not verify; see `bundle verify`)."""
    import contextlib

    from .manifest import Manifest

    with contextlib.ExitStack() as stack:
        m = Manifest.read(_folder(bundle_path, stack))
    if as_json:
        click.echo(json.dumps(m.to_dict(), indent=2))
        return
    p, lat, rt = m.validation["parity"], m.latency, m.runtime
    lines = [
        f"{m.name} {m.version}  target {m.target}  ({rt['backend']} {rt.get('built_with')}, needs >= "
        f"{rt['min_version']})",
        f"  precision   {m.recipe['precision']}   pruning {m.recipe['pruning'].get('method')} "
        f"{m.recipe['pruning'].get('ratio')}",
        _accuracy_line(p),
        f"  parity      max abs diff {p['max_abs_diff']:.3g}, cosine min {p.get('cosine_min', '-')}, SNR "
        f"{p.get('snr_db', '-')} dB",
        f"  latency     p50 {lat['p50_ms']:.3f} ms, p95 {lat['p95_ms']:.3f} ms (batch 1, {lat.get('threads')} threads, "
        f"{(lat.get('host') or {}).get('cpu')}; {lat.get('source', 'quick probe at build time')})",
        f"  size        {m.artifact['size_bytes'] / 1e6:.2f} MB ({m.artifact.get('size_gzip_bytes', 0) / 1e6:.2f} MB "
        "gzip), "
        f"{(m.artifact.get('macs') or 0) / 1e6:.1f} M MACs",
        f"  verdict     {'pass' if m.passed else 'FAIL'}: "
        + "; ".join(f"{c['check']} {c['why']}" for c in m.validation["checks"]),
        "  files       " + ", ".join(f"{n} ({e['size']} B)" for n, e in m.files.items()),
    ]
    click.echo("\n".join(lines))


@bundle.command("unpack")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="A new (or empty) folder for the bundle.")
@click.option(
    "--pubkey",
    default=None,
    type=click.Path(dir_okay=False),
    help="Check the signature with this trusted key before writing anything, then every file.",
)
@click.option("--force", is_flag=True, help="Replace a folder that already holds files.")
def unpack_cmd(archive: str, out: str, pubkey: str | None, force: bool) -> None:
    """Safely unpack a bundle archive (no absolute paths, '..', links, duplicates or oversized members).

    OUT must not exist or be empty (a non-empty folder only with --force, never the current folder
    or one of its parents); the bundle appears there whole or not at all.
    """
    import os

    from .._io import atomic_dir
    from ..errors import InputError
    from .archive import unpack, verify_bundle
    from .signing import load_public_key

    dest = Path(out).resolve()
    here = Path.cwd().resolve()
    if dest == here or dest in here.parents:
        raise InputError(
            f"refusing to unpack into {out}: it is the current folder or one of its parents",
            hint="name a new folder, e.g. --out ./my-bundle",
        )
    if dest.exists() and any(dest.iterdir()) and not force:
        raise InputError(
            f"{out} is not empty; refusing to replace what is in it", hint="pass --force, or choose a new folder"
        )
    keys = [load_public_key(pubkey)] if pubkey else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        staged = unpack(archive, Path(tmp) / "bundle", trusted_keys=keys)
        if keys:
            verify_bundle(staged, keys[0])  # every file's sha256, before the folder appears
        with atomic_dir(dest) as final:
            for f in staged.iterdir():
                os.replace(f, final / f.name)
    click.echo(
        f"unpacked to {dest}" + (" (signature and every file verified)" if keys else " (not verified: pass --pubkey)")
    )
