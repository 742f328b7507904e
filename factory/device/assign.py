"""Which release a device should run: one pure function shared by the service and the devices.

The registry serves assignments from a *fleet state* (stable releases per model and target, plus
rollouts with their stages and cohorts). The very same state, signed, is the static rollout
manifest a CDN can serve; a device computes its own assignment from it with :func:`assign`, so the
service and a million devices reading a static file always agree.

A device's place in a rollout is a stable hash of (rollout salt, device id) mapped to [0, 100):
a device in the 1% stage stays in at 10%, 50% and 100%; everyone outside the current percentage
(or outside the cohort) keeps the previous release.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["bucket", "in_cohort", "Assignment", "assign", "ACTIVE", "FINAL"]

ACTIVE = ("active", "paused", "halted")  # rollouts whose current stage still decides assignments
FINAL = ("completed", "rolled_back", "cancelled")


def bucket(salt: str, device_id: str) -> float:
    """A device's stable position in [0, 100) for one rollout (0.01 granularity)."""
    h = hashlib.sha256(f"{salt}\x00{device_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") % 10_000 / 100.0


def in_cohort(cohort: dict, device_id: str, target: str, tags: list[str]) -> bool:
    """Does the rollout's cohort include this device (exclusions first, then explicit ids, targets, tags)?"""
    if device_id in (cohort.get("exclude") or []):
        return False
    if device_id in (cohort.get("devices") or []):
        return True
    targets = cohort.get("targets") or []
    if targets and target not in targets:
        return False
    needed = set(cohort.get("tags") or [])
    return needed <= set(tags or [])


@dataclass(frozen=True)
class Assignment:
    release: dict | None  # {name, version, target, sha256, size, url}
    rollout: str | None
    stage: int | None
    reason: str
    capture: dict | None = None  # the rollout's field-capture policy, for devices it moved to its release

    def to_dict(self) -> dict:
        out = {"release": self.release, "rollout": self.rollout, "stage": self.stage, "reason": self.reason}
        return out | ({"capture": self.capture} if self.capture else {})


def _release(state: dict, key: str | None) -> dict | None:
    return state["releases"].get(key) if key else None


def assign(state: dict, model: str, device_id: str, target: str, tags: list[str] | None = None) -> Assignment:
    """The release ``device_id`` (a ``target`` device with ``tags``) should run for ``model`` now."""
    tags = tags or []
    stable_key = state.get("stable", {}).get(f"{model}/{target}")
    for r in state.get("rollouts", []):
        if r["model"] != model or r["status"] not in ACTIVE:
            continue
        new_key = r["releases"].get(target)
        if new_key is None:
            continue
        previous = _release(state, r.get("previous", {}).get(target)) or _release(state, stable_key)
        if not in_cohort(r["cohort"], device_id, target, tags):
            return Assignment(previous, r["name"], None, "outside the rollout's cohort")
        if r["status"] == "halted":
            return Assignment(previous, r["name"], r["stage"], "rollout halted: back on the previous release")
        percent = r["stages"][r["stage"]]["percent"]
        if bucket(r["salt"], device_id) < percent:
            return Assignment(
                _release(state, new_key),
                r["name"],
                r["stage"],
                f"in stage {r['stage'] + 1} ({percent:g}%)",
                r.get("capture"),
            )
        return Assignment(previous, r["name"], r["stage"], f"not yet in stage {r['stage'] + 1} ({percent:g}%)")
    if stable_key:
        return Assignment(_release(state, stable_key), None, None, "stable release")
    return Assignment(None, None, None, f"no release of {model} for target {target}")
