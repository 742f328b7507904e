"""The signed static rollout manifest, as a device checks it.

A registry signs its fleet state with the fleet key (:func:`factory.registry.state.sign_state`); a
CDN may serve the result. A device trusts only its own configured fleet key, refuses a manifest that
is unsigned, signed by another key, modified, or older (a lower ``sequence``) than one it already
accepted, then computes its own assignment with :func:`factory.device.assign.assign`.
"""

from __future__ import annotations

from .._io import canonical_json
from ..errors import SignatureError

__all__ = ["STATE_SCHEMA", "MANIFEST_SCHEMA", "verify_state"]

STATE_SCHEMA = "factory.fleet-state/1"
MANIFEST_SCHEMA = "factory.rollout-manifest/1"


def verify_state(doc: dict, public_key, *, min_sequence: int | None = None) -> dict:
    """Return the payload of a signed static manifest, or raise SignatureError saying why not."""
    import base64

    from cryptography.exceptions import InvalidSignature

    from ..bundle.signing import key_id

    if not isinstance(doc, dict) or doc.get("schema") != MANIFEST_SCHEMA or not isinstance(doc.get("payload"), dict):
        raise SignatureError("not a factory rollout manifest")
    sig = doc.get("signature")
    if not isinstance(sig, dict) or not isinstance(sig.get("signature"), str) or not sig["signature"]:
        raise SignatureError("the rollout manifest is unsigned")
    if sig.get("key_id") != key_id(public_key):
        raise SignatureError(f"the rollout manifest is signed by key {sig.get('key_id')!r}, not the trusted fleet key")
    try:
        public_key.verify(base64.b64decode(sig["signature"], validate=True), canonical_json(doc["payload"]))
    except (InvalidSignature, ValueError, TypeError):
        raise SignatureError("the rollout manifest's signature does not verify (modified after signing)") from None
    payload = doc["payload"]
    sequence = payload.get("sequence")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
        raise SignatureError(f"the rollout manifest has no valid sequence number ({sequence!r})")
    if min_sequence is not None and sequence < min_sequence:
        raise SignatureError(
            f"the rollout manifest is older (sequence {sequence}) than the one already "
            f"accepted ({min_sequence}); refusing a rollback to stale state"
        )
    return payload
