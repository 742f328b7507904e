"""Rollout plans and their life cycle. Every decision is an append-only audit entry.

active --advance--> active (next stage) ... --advance at 100%--> completed (becomes stable)
active <--pause/resume--> paused
active|paused --halt (health)--> halted (everyone on the previous release; resume or roll back)
active|paused|halted --rollback--> rolled_back (everyone on the previous release)
"""

from __future__ import annotations

import hashlib
import json
import math
import re

import sqlalchemy as sa

from .._faults import crash_point
from ..config import Key, load_yaml, validate
from ..errors import ConfigError, InputError
from . import db

__all__ = [
    "PLAN_SCHEMA",
    "load_plan",
    "check_plan",
    "create",
    "transition",
    "get",
    "list_all",
    "salt_for",
    "RolloutConflict",
    "NotFound",
]


class RolloutConflict(InputError):
    """The request conflicts with the current state (HTTP 409)."""


class NotFound(InputError):
    """No such release or rollout (HTTP 404)."""


NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$"
DEVICE = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"
TAG = r"^[A-Za-z0-9._:=-]{1,100}$"
MAX_STAGES, MAX_LIST, MAX_DEVICES = 20, 50, 10_000


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pattern(pattern: str, what: str):
    def check(v) -> str | None:
        return None if re.fullmatch(pattern, v) else f"{v!r} is not a valid {what}"

    return check


def _list_of(pattern: str, what: str, most: int):
    def check(v) -> str | None:
        if len(v) > most:
            return f"lists at most {most} {what}s (got {len(v)}); use tags for larger cohorts"
        bad = [x for x in v if not isinstance(x, str) or not re.fullmatch(pattern, x)]
        return f"holds {len(bad)} invalid {what}(s), e.g. {bad[0]!r}" if bad else None

    return check


def _between(lo: float, hi: float):
    def check(v) -> str | None:
        return None if _number(v) and lo <= v <= hi else f"must be a number in [{lo:g}, {hi:g}]"

    return check


def _stages(v) -> str | None:
    if not v or len(v) > MAX_STAGES:
        return f"must be a list of 1 to {MAX_STAGES} stages {{percent, min_duration_minutes, min_devices_reporting}}"
    last = 0.0
    for i, st in enumerate(v):
        if not isinstance(st, dict) or not _number(st.get("percent")):
            return f"stage {i + 1} needs a numeric percent"
        unknown = set(st) - {"percent", "min_duration_minutes", "min_devices_reporting"}
        if unknown:
            return f"stage {i + 1} has unknown keys {sorted(map(str, unknown))}"
        if not last < st["percent"] <= 100:
            return f"stage {i + 1}: percents must increase within (0, 100]"
        minutes, devices = st.get("min_duration_minutes", 0), st.get("min_devices_reporting", 0)
        if not _number(minutes) or not 0 <= minutes <= 525_600:
            return f"stage {i + 1}: min_duration_minutes must be a number of minutes in [0, 525600]"
        if not isinstance(devices, int) or isinstance(devices, bool) or not 0 <= devices <= 10**7:
            return f"stage {i + 1}: min_devices_reporting must be a whole number >= 0"
        last = st["percent"]
    return None if last == 100 else "the last stage must reach 100 percent"


CAPTURE_WHEN = {"max_confidence", "drifting", "random_rate"}
CAPTURE_KEYS = {"when", "max_per_device_per_day", "max_bytes", "retention_days"}
MAX_CAPTURE_BYTES = 2_000_000


def _capture(v) -> str | None:
    """The opt-in field-capture policy: conditions, caps and retention (nothing is captured without one)."""
    if not isinstance(v, dict) or set(v) - CAPTURE_KEYS:
        return f"is a mapping of {sorted(CAPTURE_KEYS)}"
    when = v.get("when")
    if not isinstance(when, dict) or not when or set(when) - CAPTURE_WHEN:
        return f"capture.when needs at least one of {sorted(CAPTURE_WHEN)}"
    if "max_confidence" in when and not (_number(when["max_confidence"]) and 0 < when["max_confidence"] <= 1):
        return "capture.when.max_confidence must be a number in (0, 1]"
    if "random_rate" in when and not (_number(when["random_rate"]) and 0 < when["random_rate"] <= 1):
        return "capture.when.random_rate must be a number in (0, 1]"
    if "drifting" in when and not (_number(when["drifting"]) and 0 < when["drifting"] <= 100):
        return "capture.when.drifting is the brightness PSI of the device's recent frames above which it captures"
    caps = {"max_per_device_per_day": (1, 10_000), "max_bytes": (1_000, MAX_CAPTURE_BYTES), "retention_days": (1, 3650)}
    for key, (lo, hi) in caps.items():
        x = v.get(key)
        if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi:
            return f"capture.{key} must be a whole number in [{lo}, {hi}]"
    return None


PLAN_SCHEMA = {
    "name": Key(str, help="unique rollout name, e.g. id-docs-0.1.1", check=_pattern(NAME, "rollout name")),
    "release": {
        "name": Key(str, help="model name", check=_pattern(NAME, "model name")),
        "version": Key(str, help="release version", check=_pattern(SEMVER, "semantic version")),
    },
    "cohort": {
        "targets": Key(
            list, [], "device targets (default: every target the release has)", check=_list_of(NAME, "target", MAX_LIST)
        ),
        "tags": Key(list, [], "devices must carry all of these tags", check=_list_of(TAG, "tag", MAX_LIST)),
        "devices": Key(
            list, [], "explicit device ids, always included", check=_list_of(DEVICE, "device id", MAX_DEVICES)
        ),
        "exclude": Key(list, [], "device ids never included", check=_list_of(DEVICE, "device id", MAX_DEVICES)),
    },
    "stages": Key(list, help="[{percent, min_duration_minutes, min_devices_reporting}], last at 100", check=_stages),
    "health": {
        "max_error_rate": Key(float, 0.02, "share of inferences that failed", check=_between(0, 1)),
        "max_latency_p95_ratio": Key(
            float, 1.2, "device p95 of the new release / of the previous release, same window", check=_between(1, 100)
        ),
        "max_psi": Key(
            float,
            0.25,
            "population stability index of inputs and predictions vs the reference profile",
            check=_between(0, 1000),
        ),
        "max_js": Key(
            float, 0.1, "Jensen-Shannon divergence of predicted classes vs the reference", check=_between(0, 1)
        ),
        "min_inferences": Key(
            int, 50, "inferences a window needs (per target) before it is judged", check=_between(1, 10**9)
        ),
        "alpha": Key(
            float,
            0.01,
            "false-alarm probability of the error and latency rules in one window at their limits: a rule "
            "fails a window only when its confidence bound says so at this level",
            check=_between(1e-9, 0.2),
        ),
        "drift_alpha": Key(
            float,
            0.001,
            "significance level of the chi-square test each drift signal needs besides its PSI/JS limit",
            check=_between(1e-9, 0.2),
        ),
        "windows_to_halt": Key(
            int, 2, "consecutive unhealthy windows before the stage is halted", check=_between(1, 1000)
        ),
        "auto_advance": Key(bool, True),
        "auto_rollback": Key(bool, True),
    },
    "capture": Key(
        dict,
        None,
        "opt-in field capture by the rollout's devices: {when: {max_confidence, drifting, random_rate}, "
        "max_per_device_per_day, max_bytes, retention_days}; without it nothing is captured",
        check=_capture,
        nullable=True,
    ),
}


def check_plan(plan: object, source: str = "rollout plan") -> dict:
    """A rollout plan validated against PLAN_SCHEMA (types, ranges, sizes), stage defaults filled in."""
    if not isinstance(plan, dict):
        raise ConfigError(f"{source}: a rollout plan is a mapping, got {type(plan).__name__}")
    out = validate(plan, PLAN_SCHEMA, source)
    for st in out["stages"]:
        st.setdefault("min_duration_minutes", 0)
        st.setdefault("min_devices_reporting", 0)
    return out


def load_plan(path) -> dict:
    """A rollout plan from a YAML file, validated."""
    return check_plan(load_yaml(path), str(path))


def _row_to_dict(r) -> dict:
    return {
        "name": r.name,
        "model": r.model,
        "plan": json.loads(r.plan),
        "status": r.status,
        "stage": r.stage,
        "stage_started_at": r.stage_started_at,
        "releases": json.loads(r.releases),
        "previous": json.loads(r.previous),
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    }


def get(conn, name: str) -> dict:
    """One rollout as a dict; NotFound (404) if there is none of that name."""
    r = conn.execute(sa.select(db.rollouts).where(db.rollouts.c.name == name)).first()
    if r is None:
        raise NotFound(f"no rollout named {name!r}")
    return _row_to_dict(r)


def create(conn, plan: dict, actor: str) -> dict:
    """Create a rollout from a plan (releases must be published; one active rollout per model and target)."""
    plan = check_plan(plan)
    model, version = plan["release"]["name"], plan["release"]["version"]
    if conn.execute(sa.select(db.rollouts.c.id).where(db.rollouts.c.name == plan["name"])).first():
        raise RolloutConflict(f"a rollout named {plan['name']!r} already exists")
    rows = conn.execute(
        sa.select(db.releases.c.target).where(db.releases.c.name == model, db.releases.c.version == version)
    ).all()
    available = sorted(r.target for r in rows)
    targets = plan["cohort"]["targets"] or available
    missing = sorted(set(targets) - set(available))
    if not available or missing:
        raise NotFound(
            f"release {model} {version} has no bundle for target(s) {missing or targets}; published: {available}",
            hint="publish the bundles first: factory release publish BUNDLE",
        )
    for r in conn.execute(
        sa.select(db.rollouts).where(
            db.rollouts.c.model == model, db.rollouts.c.status.in_(("active", "paused", "halted"))
        )
    ).all():
        overlap = set(json.loads(r.releases)) & set(targets)
        if overlap:
            raise RolloutConflict(
                f"rollout {r.name!r} is still {r.status} for target(s) {sorted(overlap)}",
                hint="complete or roll it back first",
            )
    stable = {
        r.target: r.release_key for r in conn.execute(sa.select(db.stable).where(db.stable.c.model == model)).all()
    }
    releases = {t: f"{model}/{version}/{t}" for t in targets}
    previous = {t: stable[t] for t in targets if t in stable and stable[t] != releases[t]}
    ts = db.now()
    conn.execute(
        db.rollouts.insert().values(
            name=plan["name"],
            model=model,
            plan=db.dumps(plan),
            status="active",
            stage=0,
            stage_started_at=ts,
            releases=db.dumps(releases),
            previous=db.dumps(previous),
            created_at=ts,
            updated_at=ts,
        )
    )
    db.add_audit(
        conn,
        actor,
        "rollout.create",
        plan["name"],
        {"release": f"{model} {version}", "targets": targets, "previous": previous, "stage": plan["stages"][0]},
    )
    db.bump_state(conn)
    return get(conn, plan["name"])


_ALLOWED = {
    "advance": ("active", "paused"),
    "pause": ("active",),
    "resume": ("paused", "halted"),
    "halt": ("active", "paused"),
    "rollback": ("active", "paused", "halted"),
}


def transition(conn, name: str, action: str, actor: str, reason: str = "", evidence: dict | None = None) -> dict:
    """Apply ``action`` (advance | pause | resume | halt | rollback) and write the audit entry."""
    if action not in _ALLOWED:
        raise ConfigError(f"unknown rollout action {action!r}; valid: {', '.join(_ALLOWED)}")
    r = get(conn, name)
    if r["status"] not in _ALLOWED[action]:
        raise RolloutConflict(f"cannot {action} rollout {name!r}: it is {r['status']}")
    ts = db.now()
    values: dict = {"updated_at": ts}
    detail: dict = {"reason": reason, "from_status": r["status"], "from_stage": r["stage"]}
    if evidence:
        detail["evidence"] = evidence
    event = f"rollout.{action}"
    if action == "advance":
        last = len(r["plan"]["stages"]) - 1
        if r["stage"] < last:
            values |= {"stage": r["stage"] + 1, "stage_started_at": ts, "status": "active"}
            detail["to_stage"] = r["stage"] + 1
            detail["percent"] = r["plan"]["stages"][r["stage"] + 1]["percent"]
        else:
            values |= {"status": "completed"}
            event = "rollout.complete"
            detail["stable"] = r["releases"]
    else:
        values["status"] = {"pause": "paused", "resume": "active", "halt": "halted", "rollback": "rolled_back"}[action]
        if action == "resume":
            values["stage_started_at"] = ts
    t = db.rollouts
    changed = conn.execute(  # compare and set: two replicas (or an admin and the evaluator) never both move it
        t.update().where(t.c.name == name, t.c.status == r["status"], t.c.stage == r["stage"]).values(**values)
    ).rowcount
    if not changed:
        raise RolloutConflict(f"cannot {action} rollout {name!r}: it changed meanwhile; read it again")
    if event == "rollout.complete":
        for target, key in r["releases"].items():
            conn.execute(db.stable.delete().where(db.stable.c.model == r["model"], db.stable.c.target == target))
            conn.execute(db.stable.insert().values(model=r["model"], target=target, release_key=key))
    db.add_audit(conn, actor, event, name, detail)
    db.bump_state(conn)
    crash_point("rollout-transition")  # written, not committed: the transaction's all or nothing
    return get(conn, name)


def salt_for(name: str) -> str:
    """The rollout's salt for stable per-device buckets."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def list_all(conn) -> list[dict]:
    """Every rollout, oldest first."""
    return [_row_to_dict(r) for r in conn.execute(sa.select(db.rollouts).order_by(db.rollouts.c.id)).all()]
