"""Ed25519 keys and detached signatures over bundle manifests.

Keys are PEM files: ``NAME.key`` (PKCS#8 private key, mode 0600) and ``NAME.pub`` (SubjectPublicKeyInfo).
A signature file is JSON: algorithm, key id (sha256 of the raw public key, 16 hex) and the base64
signature over the exact bytes of ``manifest.json``. Verification trusts only the public key it is
handed, never anything found inside the bundle.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from .._io import atomic_write
from ..errors import BundleError, InputError, SignatureError

__all__ = ["generate_keys", "load_private_key", "load_public_key", "key_id", "sign", "verify_signature"]


def _crypto():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def key_id(public_key) -> str:
    """16 hex digits of the sha256 of the raw public key."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keys(prefix: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` and ``PREFIX.pub``; refuses to replace an existing key unless asked."""
    serialization, ed25519 = _crypto()
    prefix = Path(prefix)
    priv_path, pub_path = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    if priv_path.exists() and not overwrite:
        raise InputError(
            f"{priv_path} already exists",
            hint="pass --force to replace it (bundles signed with it will no longer verify)",
        )
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    atomic_write(priv_path, pem)
    os.chmod(priv_path, 0o600)
    atomic_write(
        pub_path,
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    return priv_path, pub_path


def load_private_key(path: str | Path):
    """An unencrypted Ed25519 PEM private key; InputError saying what is wrong otherwise."""
    serialization, ed25519 = _crypto()
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"signing key {path} does not exist", hint="create one with `factory keys generate --out keys/signing`"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise InputError(f"{path} is not an Ed25519 key")
    return key


def load_public_key(path: str | Path):
    """An Ed25519 PEM public key; InputError saying what is wrong otherwise."""
    serialization, ed25519 = _crypto()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"public key {path} does not exist")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise InputError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise InputError(f"{path} is not an Ed25519 public key")
    return key


def sign(data: bytes, private_key) -> bytes:
    """The signature file's bytes for ``data``."""
    doc = {
        "algorithm": "ed25519",
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(data)).decode(),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def verify_signature(data: bytes, signature_file: bytes, public_key) -> str:
    """Raise SignatureError unless ``signature_file`` is a valid signature of ``data`` by ``public_key``."""
    from cryptography.exceptions import InvalidSignature

    try:
        doc = json.loads(signature_file)
        sig = base64.b64decode(doc["signature"], validate=True)
        algorithm = doc["algorithm"]
    except (ValueError, KeyError, TypeError):
        raise BundleError("the signature file is malformed") from None
    if algorithm != "ed25519":
        raise SignatureError(f"signature algorithm {algorithm!r} is not ed25519")
    expected = key_id(public_key)
    if doc.get("key_id") != expected:
        raise SignatureError(
            f"signed by key {doc.get('key_id')!r}, not by the trusted key {expected}",
            hint="verify with the public key of whoever built the bundle",
        )
    try:
        public_key.verify(sig, data)
    except InvalidSignature:
        raise SignatureError("the manifest signature does not verify: the manifest or signature was modified") from None
    return expected
