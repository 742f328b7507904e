"""Issue 31, part 2: a hostile review of enrolment, captures, the pages, the static fleet manifest, telemetry
and publishing, each attempt tried for real against a registry on loopback (uvicorn in a subprocess).

The releases here are synthetic: a signed bundle whose model file is a few random bytes (the registry
verifies signatures and hashes, it never loads a model), so the module needs no training and runs fast.
"""

import base64
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from tests.conftest import DBS, db_url
from tests.registry_server import archive, fake_bundle, start_registry

MODEL = "sr-model"
CAPTURE = {"when": {"random_rate": 1.0}, "max_per_device_per_day": 3, "max_bytes": 40_000, "retention_days": 1}


def _h(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module", params=DBS)
def reg(request, tmp_path_factory, keypair):
    """A registry with 1.0.0 stable and 1.1.0 rolled out (with a capture block) to devices tagged ``cap``, on
    SQLite and (when the suite has one) PostgreSQL: the races are decided by each database's own locks."""
    from factory.bundle.signing import load_private_key
    from factory.registry.auth import create_token

    tmp = tmp_path_factory.mktemp("review")
    key = load_private_key(keypair[0])
    database = db_url(request.param, tmp)
    srv, settings, engine, admin, _ = start_registry(
        tmp, keypair[1], telemetry={"evaluate_seconds": 0.0}, database=database
    )
    with engine.begin() as conn:
        tokens = {r: create_token(conn, f"review-{r}", r) for r in ("viewer", "enroll")}
    tokens["admin"] = admin
    c = httpx.Client(base_url=srv.url, headers=_h(admin), timeout=30)
    for v in ("1.0.0", "1.1.0"):
        r = c.post("/v1/releases", content=archive(fake_bundle(tmp / "b" / v, key, v)))
        assert r.status_code == 201, r.text
    for plan, act in (
        ({"name": "base", "release": {"name": MODEL, "version": "1.0.0"}, "stages": [{"percent": 100}]}, True),
        (
            {
                "name": "field",
                "release": {"name": MODEL, "version": "1.1.0"},
                "stages": [{"percent": 100}],
                "cohort": {"tags": ["cap"]},
                "capture": CAPTURE,
                "health": {"auto_advance": False},
            },
            False,
        ),
    ):
        assert c.post("/v1/rollouts", json=plan).status_code == 201
        if act:
            assert c.post(f"/v1/rollouts/{plan['name']}/advance", json={"reason": "t"}).status_code == 200
    yield {"srv": srv, "url": srv.url, "engine": engine, "tokens": tokens, "admin": c, "tmp": tmp, "key": key,
           "settings": settings}  # fmt: skip
    c.close()
    srv.stop()


def enroll(reg, device_id, tags=("cap",), token=None):
    r = httpx.post(
        reg["url"] + "/v1/devices/enroll",
        headers=_h(token or reg["tokens"]["enroll"]),
        json={"device_id": device_id, "target": "cpu", "tags": list(tags)},
    )
    assert r.status_code == 201, r.text
    return r.json()["token"]


def jpeg(seed=0, side=64) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def capture_body(device_id, key, image=None, **extra):
    return {
        "idempotency_key": f"{device_id}:{key}",
        "device_id": device_id,
        "rollout": "field",
        "release": {"name": MODEL, "version": "1.1.0", "target": "cpu"},
        "reason": "random",
        "output": {"label": "a", "confidence": 0.5},
        "image": base64.b64encode(image if image is not None else jpeg(hash(key) % 1000)).decode(),
    } | extra


def count(reg, table, device_id=None) -> int:
    from factory.registry import db

    t = getattr(db, table)
    q = sa.select(sa.func.count()).select_from(t)
    if device_id is not None:
        q = q.where(t.c.device_id == device_id)
    with reg["engine"].connect() as conn:
        return conn.execute(q).scalar_one()


def upload(reg, token, body, **kw):
    return (
        httpx.post(reg["url"] + "/v1/captures", headers=_h(token), timeout=60, **kw)
        if body is None
        else (httpx.post(reg["url"] + "/v1/captures", headers=_h(token), json=body, timeout=60))
    )


def summary(device_id, version="1.1.0", n=20, start=None):
    from factory.device.telemetry import Window

    w = Window(device_id, "cpu", ["cap"], {"name": MODEL, "version": version, "target": "cpu"}, 2, seconds=60,
               start=start if start is not None else time.time() // 60 * 60)  # fmt: skip
    for i in range(n):
        w.add(1.0, {"confidence": 0.8, "cls": i % 2}, (120.0, 40.0))
    return w.summary()


# --------------------------------------------------------------------------------------------- 1: enrolment
def test_enrolment_cannot_race_take_over_or_be_done_with_a_device_token(reg):
    """Eight enrolments of one new id at once: one credential, seven clear 409s (before: a 500, and a race
    could leave two working credentials for one device id)."""
    from factory.registry import db

    def attempt(_):
        return httpx.post(
            reg["url"] + "/v1/devices/enroll",
            headers=_h(reg["tokens"]["enroll"]),
            json={"device_id": "contested", "target": "cpu", "tags": []},
            timeout=60,
        )

    with ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(attempt, range(8)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [201] + [409] * 7, [r.text for r in answers]
    assert all("already enrolled" in r.json()["detail"] for r in answers if r.status_code == 409)
    with reg["engine"].connect() as conn:
        live = conn.execute(
            sa.select(db.tokens.c.id).where(db.tokens.c.device_id == "contested", db.tokens.c.revoked == sa.false())
        ).all()
    assert len(live) == 1
    owner = next(r.json()["token"] for r in answers if r.status_code == 201)
    # a device token cannot enrol (itself or another id), nor can a viewer
    for token in (owner, reg["tokens"]["viewer"]):
        r = httpx.post(reg["url"] + "/v1/devices/enroll", headers=_h(token), json={"device_id": "x9", "target": "cpu"})
        assert r.status_code == 403 and "needs: admin or enroll" in r.json()["detail"]
    # the enrolment token cannot re-enrol an enrolled id: the owner's credential keeps working
    r = httpx.post(
        reg["url"] + "/v1/devices/enroll",
        headers=_h(reg["tokens"]["enroll"]),
        json={"device_id": "contested", "target": "cpu", "tags": ["cap"]},
    )
    assert r.status_code == 409
    r = httpx.get(
        reg["url"] + "/v1/assignment",
        headers=_h(owner),
        params={"model": MODEL, "device_id": "contested", "target": "cpu"},
    )
    assert r.status_code == 200
    # ...and the owner cannot speak for a neighbour
    r = httpx.post(reg["url"] + "/v1/devices", headers=_h(owner), json={"device_id": "probe", "target": "cpu"})
    assert r.status_code == 403


def test_an_enrolment_token_with_a_budget_mints_that_many_ids_even_in_a_burst(reg):
    """Replaying one enrolment token mints a new identity each time (that is its job); a leaked one could mint
    thousands, each a vote in health decisions. With --max-devices it mints that many, even at once."""
    from factory.errors import InputError
    from factory.registry.auth import create_token

    with reg["engine"].begin() as conn:
        budget = create_token(conn, "shop-7-enrol", "enroll", max_devices=3)
        with pytest.raises(InputError, match="budget of an enrolment token"):
            create_token(conn, "v", "viewer", max_devices=3)

    def attempt(i):
        return httpx.post(
            reg["url"] + "/v1/devices/enroll",
            headers=_h(budget),
            json={"device_id": f"budget-{i}", "target": "cpu", "tags": []},
            timeout=60,
        )

    with ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(attempt, range(8)))
    assert sorted(r.status_code for r in answers) == [201] * 3 + [403] * 5, [r.text for r in answers]
    spent = next(r.json() for r in answers if r.status_code == 403)
    assert "enrolled its 3 device(s)" in spent["detail"] and "--max-devices" in spent["hint"]
    assert sum(count(reg, "devices", f"budget-{i}") for i in range(8)) == 3
    # the CLI takes the budget; a budget on another role is a usage error
    from tests.conftest import invoke

    config = reg["tmp"] / "cli.yaml"
    config.write_text(json.dumps({k: reg["settings"][k] for k in ("database", "storage")}))
    ok = invoke(
        "registry", "token", "create", "--name", "e2", "--role", "enroll", "--max-devices", "1", "--config", str(config)
    )
    assert ok.exit_code == 0 and ok.output.strip().startswith("fct_e_")
    bad = invoke(
        "registry", "token", "create", "--name", "v2", "--role", "viewer", "--max-devices", "1", "--config", str(config)
    )
    assert bad.exit_code != 0 and "--max-devices" in bad.output


def test_concurrent_registrations_of_one_new_id_are_never_a_500(reg):
    def attempt(_):
        return reg["admin"].post("/v1/devices", json={"device_id": "relay-new", "target": "cpu", "tags": []})

    with ThreadPoolExecutor(8) as ex:
        codes = [r.status_code for r in ex.map(attempt, range(8))]
    assert codes == [201] * 8 and count(reg, "devices", "relay-new") == 1


def test_a_revoked_device_token_stops_working_everywhere(reg):
    from factory.registry import db
    from factory.registry.auth import revoke_token

    token = enroll(reg, "revoked-cam")
    assert upload(reg, token, capture_body("revoked-cam", "before")).status_code == 201
    with reg["engine"].begin() as conn:
        assert revoke_token(conn, "device:revoked-cam") == 1
    time.sleep(5.3)  # the token cache's ttl: every replica drops it within it
    h = _h(token)
    attempts = [
        ("POST", "/v1/captures", {"json": capture_body("revoked-cam", "after")}),
        ("POST", "/v1/telemetry", {"json": summary("revoked-cam")}),
        ("POST", "/v1/telemetry/batch", {"json": {"summaries": [summary("revoked-cam")]}}),
        ("POST", "/v1/devices", {"json": {"device_id": "revoked-cam", "target": "cpu", "tags": ["cap"]}}),
        ("GET", "/v1/assignment", {"params": {"model": MODEL, "device_id": "revoked-cam", "target": "cpu"}}),
        ("GET", "/v1/fleet-manifest", {}),
        ("GET", "/v1/releases", {}),
        ("GET", f"/v1/releases/{MODEL}/1.1.0/cpu/bundle", {}),
    ]
    for method, path, kw in attempts:
        r = httpx.request(method, reg["url"] + path, headers=h, timeout=30, **kw)
        assert r.status_code == 401, (path, r.status_code, r.text)
    assert count(reg, "captures", "revoked-cam") == 1 and count(reg, "telemetry", "revoked-cam") == 0
    with reg["engine"].connect() as conn:
        assert [a["action"] for a in db.audit_entries(conn, action="token.revoke")][-1:] == ["token.revoke"]


# --------------------------------------------------------------------------------------------- 2: captures
def test_the_daily_cap_holds_when_a_device_uploads_many_at_once(reg):
    """Before: eight concurrent uploads were all counted against an empty day and all stored (cap 3)."""
    token = enroll(reg, "burst-cam")
    with ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(lambda i: upload(reg, token, capture_body("burst-cam", f"k{i}")), range(8)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [201] * 3 + [429] * 5, [r.text for r in answers]
    assert "captures a day" in next(r for r in answers if r.status_code == 429).json()["detail"]
    assert count(reg, "captures", "burst-cam") == CAPTURE["max_per_device_per_day"]


def test_one_capture_sent_eight_times_at_once_is_stored_once(reg):
    token = enroll(reg, "retry-cam")
    body = capture_body("retry-cam", "same")
    with ThreadPoolExecutor(8) as ex:
        answers = [r.json() for r in ex.map(lambda _: upload(reg, token, body), range(8))]
    assert sorted(a["status"] for a in answers) == ["accepted"] + ["duplicate"] * 7
    assert len({a["id"] for a in answers}) == 1 and count(reg, "captures", "retry-cam") == 1


@pytest.mark.parametrize(
    "name, raw, status",
    [
        ("nested 100,000 deep", "[" * 100_000, 422),
        ("NaN in the model's output", None, 422),
        ("Infinity by overflow", None, 422),
        ("not UTF-8", b"\xff\xfe{", 422),
    ],
)
def test_hostile_capture_bodies_are_a_4xx_and_store_nothing(reg, name, raw, status):
    """Before: the deep one was a 500 (RecursionError escaped the JSON parser); NaN was stored."""
    token = enroll(reg, f"hostile-{abs(hash(name)) % 10_000}")
    text = json.dumps(capture_body("x", "y"))
    if "NaN" in name:
        raw = text.replace('"confidence": 0.5', '"confidence": NaN')
    elif "Infinity" in name:
        raw = text.replace('"confidence": 0.5', '"confidence": 1e400')
    before = count(reg, "captures")
    r = httpx.post(reg["url"] + "/v1/captures", headers=_h(token), content=raw, timeout=30)
    assert r.status_code == status, r.text
    assert "detail" in r.json() and count(reg, "captures") == before


def test_one_summary_sent_eight_times_at_once_is_stored_once(reg):
    """Before: the losers of the race hit the unique index, a 500."""
    token = enroll(reg, "retry-tele")
    body = summary("retry-tele")

    def post(_):
        return httpx.post(reg["url"] + "/v1/telemetry", headers=_h(token), json=body, timeout=60)

    with ThreadPoolExecutor(8) as ex:
        codes = sorted(r.status_code for r in ex.map(post, range(8)))
    assert codes == [201] + [409] * 7 and count(reg, "telemetry", "retry-tele") == 1
    with ThreadPoolExecutor(4) as ex:
        batches = [
            r.json()
            for r in ex.map(
                lambda _: reg["admin"].post(
                    "/v1/telemetry/batch", json={"summaries": [summary("retry-tele")] * 0 + [body]}
                ),
                range(4),
            )
        ]
    assert all(b["results"][0]["status"] == "duplicate" for b in batches)


def _nested(depth):
    value = {"label": "a"}
    for _ in range(depth):
        value = {"x": value}
    return value


def test_deep_free_form_fields_cannot_poison_the_capture_listing_or_the_audit_log(reg):
    """Before: a capture whose output nested 300 deep (1.5 KB, under every size limit) was stored, and every
    later GET /v1/captures was a 500 (the response serializer gives up past a few hundred levels): one device
    could break the listing and the export for everyone. The same for an audit entry's detail."""
    token = enroll(reg, "deep-cam")
    for field in ("output", "source", "simulated"):
        r = upload(reg, token, capture_body("deep-cam", f"deep-{field}", **{field: _nested(300)}))
        assert r.status_code == 422 and "more than 32 deep" in r.json()["detail"], (field, r.text)
    assert count(reg, "captures", "deep-cam") == 0
    assert upload(reg, token, capture_body("deep-cam", "flat", output=_nested(20))).status_code == 201
    assert reg["admin"].get("/v1/captures").status_code == 200
    r = reg["admin"].post("/v1/audit", json={"action": "loop.deep", "detail": _nested(300)})
    assert r.status_code == 422 and "deep" in r.json()["detail"]
    assert reg["admin"].get("/v1/audit", params={"limit": 10000}).status_code == 200


def test_a_device_cannot_reuse_another_devices_capture_key(reg):
    """Before: it was answered "duplicate" with the other device's capture id (a confirmation, and a leak)."""
    a, b = enroll(reg, "key-owner"), enroll(reg, "key-thief")
    owner = upload(reg, a, capture_body("key-owner", "k")).json()
    stolen = upload(reg, b, capture_body("key-thief", "k") | {"idempotency_key": "key-owner:k"})
    assert stolen.status_code == 409 and "another device" in stolen.json()["detail"]
    assert str(owner["id"]) not in stolen.text and count(reg, "captures", "key-thief") == 0


def test_capture_images_must_be_jpeg_or_png_whatever_the_content_type_says(reg):
    token = enroll(reg, "liar-cam")
    fakes = {
        "html": b"<html><script>alert(1)</script></html>" * 4,
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="64" height="64"/></svg>',
        "gif": cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))[1].tobytes().replace(b"\x89PNG", b"GIF8"),
        "bmp": cv2.imencode(".bmp", np.zeros((16, 16, 3), np.uint8))[1].tobytes(),
        "jpeg header, html body": b"\xff\xd8\xff\xe0" + b"<script>alert(1)</script>" * 8,
    }
    for i, (what, data) in enumerate(fakes.items()):
        body = json.dumps(capture_body("liar-cam", f"f{i}", image=data))
        for ctype in ("image/png", "text/html", "application/json"):
            r = httpx.post(
                reg["url"] + "/v1/captures", headers=_h(token) | {"Content-Type": ctype}, content=body, timeout=30
            )
            assert r.status_code == 422, (what, ctype, r.text)
    assert count(reg, "captures", "liar-cam") == 0
    # a real JPEG sent as "text/html" is what its bytes are, and is served as an image, never sniffed
    body = json.dumps(capture_body("liar-cam", "real"))
    r = httpx.post(reg["url"] + "/v1/captures", headers=_h(token) | {"Content-Type": "text/html"}, content=body)
    assert r.status_code == 201
    img = reg["admin"].get(f"/v1/captures/{r.json()['id']}/image")
    assert img.headers["content-type"] == "image/jpeg" and img.headers["x-content-type-options"] == "nosniff"
    assert img.headers["cache-control"] == "no-store" and img.headers["content-disposition"].startswith("attachment")


def test_only_admins_read_captures_and_every_read_is_audited(reg):
    token = enroll(reg, "private-cam")
    cid = upload(reg, token, capture_body("private-cam", "p1")).json()["id"]
    other = enroll(reg, "nosy-cam")
    for who in (reg["tokens"]["viewer"], token, other):  # the device itself cannot read it back either
        for path in ("/v1/captures", f"/v1/captures/{cid}/image", "/v1/audit?action=capture.read"):
            assert httpx.get(reg["url"] + path, headers=_h(who)).status_code == 403, path
    assert httpx.get(reg["url"] + f"/v1/captures/{cid}/image").status_code == 401
    for bad in ("0", "-1", "abc", str(2**63), "..%2F..%2Fetc%2Fpasswd", "1%00"):
        r = reg["admin"].get(f"/v1/captures/{bad}/image")
        assert r.status_code in (404, 422), (bad, r.status_code)
    assert reg["admin"].get("/v1/captures/2147483000/image").status_code == 404
    before = len(reg["admin"].get("/v1/audit", params={"action": "capture.read", "limit": 10000}).json())
    assert reg["admin"].get(f"/v1/captures/{cid}/image").content[:2] == b"\xff\xd8"
    rows = reg["admin"].get("/v1/captures", params={"rollout": "field"}).json()["captures"]
    assert any(r["id"] == cid for r in rows)
    reads = reg["admin"].get("/v1/audit", params={"action": "capture.read", "limit": 10000}).json()
    assert len(reads) == before + 1
    last = reads[-1]
    assert last["actor"] == "admin" and last["detail"]["capture_id"] == cid
    assert last["detail"]["device_id"] == "private-cam" and last["ts"] and last["detail"]["rollout"] == "field"
    timeline = reg["admin"].get("/v1/rollouts/field").json()["audit"]  # reads never crowd out its decisions
    assert not [a for a in timeline if a["action"].startswith("capture.")]
    listed = reg["admin"].get("/v1/audit", params={"action": "capture.list"}).json()[-1]
    assert listed["detail"]["count"] == len(rows) and "private-cam" in listed["detail"]["devices"]
    # an audit entry of this kind cannot be forged through the loop's audit endpoint
    forged = reg["admin"].post("/v1/audit", json={"action": "capture.read", "detail": {}})
    assert forged.status_code == 422


def test_capture_images_and_their_metadata_never_reach_history_or_status_pages(reg):
    token = enroll(reg, "paged-cam")
    sha = upload(reg, token, capture_body("paged-cam", "pg", source="SECRET-SOURCE-xyz")).json()["sha256"]
    viewer = _h(reg["tokens"]["viewer"])
    page = httpx.get(reg["url"] + "/v1/history/devices/paged-cam", headers=viewer).json()
    assert page["captures"] == 1
    time.sleep(1.1)  # the health report is shared for a second
    for path in ("/v1/history/devices/paged-cam", "/v1/health", "/v1/history/rollouts/field", "/metrics"):
        text = httpx.get(reg["url"] + path, headers=viewer).text
        assert sha not in text and "SECRET-SOURCE" not in text and "/v1/captures/" not in text, path
    for path in ("/status", "/status/devices/paged-cam"):
        html = httpx.get(reg["url"] + path).text
        assert "/v1/captures" not in html and sha not in html


def test_expired_captures_and_their_images_are_deleted_by_the_evaluator(reg):
    from factory.registry import db

    token = enroll(reg, "old-cam")
    r = upload(reg, token, capture_body("old-cam", "o1")).json()
    store_key = reg["tmp"] / "blobs" / "captures" / r["sha256"][:2]
    assert any(store_key.glob(r["sha256"] + "*"))
    with reg["engine"].begin() as conn:
        conn.execute(db.captures.update().where(db.captures.c.id == r["id"]).values(expires_at=time.time() - 1))
    assert reg["admin"].post("/v1/evaluate").status_code == 200
    assert count(reg, "captures", "old-cam") == 0 and not any(store_key.glob(r["sha256"] + "*"))
    assert reg["admin"].get(f"/v1/captures/{r['id']}/image").status_code == 404


def test_an_operator_forgets_one_device_over_http_and_from_the_cli(reg, tmp_path):
    import yaml

    from factory.registry import db
    from tests.conftest import invoke

    shared = jpeg(seed=4242)
    gone, kept = enroll(reg, "forget-me"), enroll(reg, "keep-me")
    mine = [upload(reg, gone, capture_body("forget-me", f"g{i}", image=jpeg(900 + i))).json() for i in range(2)]
    upload(reg, gone, capture_body("forget-me", "shared", image=shared))
    theirs = upload(reg, kept, capture_body("keep-me", "shared", image=shared)).json()
    for device, token in (("forget-me", gone), ("keep-me", kept)):
        r = httpx.post(reg["url"] + "/v1/telemetry", headers=_h(token), json=summary(device))
        assert r.status_code == 201, r.text
    blobs = reg["tmp"] / "blobs" / "captures"
    for who in (reg["tokens"]["viewer"], gone):
        assert httpx.delete(reg["url"] + "/v1/devices/forget-me/data", headers=_h(who)).status_code == 403
    assert reg["admin"].delete("/v1/devices/..%2Fkeep-me/data").status_code in (404, 422)
    out = reg["admin"].delete("/v1/devices/forget-me/data").json()
    assert out == {"device_id": "forget-me", "captures": 3, "images": 2, "telemetry": 1}
    assert count(reg, "captures", "forget-me") == 0 and count(reg, "telemetry", "forget-me") == 0
    for c in mine:  # its own images are gone; the one another device also sent stays for that device
        assert not any((blobs / c["sha256"][:2]).glob(c["sha256"] + "*"))
    assert reg["admin"].get(f"/v1/captures/{theirs['id']}/image").content == shared
    assert count(reg, "captures", "keep-me") == 1 and count(reg, "telemetry", "keep-me") == 1
    entry = reg["admin"].get("/v1/audit", params={"action": "device.forget"}).json()[-1]
    assert entry["actor"] == "admin" and entry["detail"]["captures"] == 3 and entry["detail"]["revoke"] is False
    # the CLI, on the registry's own database and blob store; --revoke: it must re-enrol
    config = tmp_path / "registry.yaml"
    config.write_text(yaml.safe_dump({k: reg["settings"][k] for k in ("database", "storage")}))
    result = invoke("registry", "forget-device", "keep-me", "--revoke", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "1 capture(s), 1 image(s), 1 telemetry summary(ies), 1 token(s) revoked" in result.output
    assert count(reg, "captures", "keep-me") == 0
    assert not any((blobs / theirs["sha256"][:2]).glob(theirs["sha256"] + "*"))
    with reg["engine"].connect() as conn:
        assert db.audit_entries(conn, action="device.forget")[-1]["actor"] == "cli"
        assert count(reg, "devices", "keep-me") == 0
    bad = invoke("registry", "forget-device", "../etc", "--config", str(config))
    assert bad.exit_code != 0 and "must be 1-200 characters" in bad.output


# --------------------------------------------------------------------------------------------- 5: telemetry
def test_nan_infinity_and_huge_histograms_are_refused_and_monitoring_stays_readable(reg):
    token = enroll(reg, "nan-cam")
    h = _h(token) | {"Content-Type": "application/json"}
    good = json.dumps(summary("nan-cam"))
    s = summary("nan-cam")
    hostile = {
        "NaN window start": good.replace(f'"start": {s["window"]["start"]}', '"start": NaN'),
        "Infinity count": good.replace(f'"count": {s["count"]}', '"count": Infinity'),
        "-Infinity in an extra field": good[:-1] + ', "extra": -Infinity}',
        "1e400 in an extra field": good[:-1] + ', "extra": 1e400}',
        "NaN inside a histogram": good.replace('"latency_ms": [', '"latency_ms": [NaN, '),
        "nested 50,000 deep": "[" * 50_000,
    }
    before = count(reg, "telemetry")
    for what, raw in hostile.items():
        r = httpx.post(reg["url"] + "/v1/telemetry", headers=h, content=raw)
        assert r.status_code == 422, (what, r.status_code, r.text)
        batch = '{"summaries": [' + raw + "]}"
        r = httpx.post(reg["url"] + "/v1/telemetry/batch", headers=h, content=batch)
        assert r.status_code == 422 or r.json()["accepted"] == 0, (what, r.text)
    huge = dict(s, predicted_class=[0] * 4097)
    r = httpx.post(reg["url"] + "/v1/telemetry", headers=h, content=json.dumps(huge))
    assert r.status_code == 422 and "4096" in r.text
    wrong = dict(s, latency_ms=s["latency_ms"] + [0] * 1000)
    assert httpx.post(reg["url"] + "/v1/telemetry", headers=h, content=json.dumps(wrong)).status_code == 422
    enormous = dict(s, predicted_class=[0] * 200_000)
    assert httpx.post(reg["url"] + "/v1/telemetry", headers=h, content=json.dumps(enormous)).status_code == 413
    counts = dict(s, latency_ms=[10**12] + s["latency_ms"][1:])
    assert httpx.post(reg["url"] + "/v1/telemetry", headers=h, content=json.dumps(counts)).status_code == 422
    assert count(reg, "telemetry") == before
    assert httpx.post(reg["url"] + "/v1/telemetry", headers=h, content=good).status_code == 201
    viewer = _h(reg["tokens"]["viewer"])
    time.sleep(1.1)
    report = httpx.get(reg["url"] + "/v1/health", headers=viewer)
    assert report.status_code == 200 and "NaN" not in report.text and "Infinity" not in report.text
    assert httpx.get(reg["url"] + "/metrics", headers=viewer).status_code == 200
    assert reg["admin"].post("/v1/evaluate").status_code == 200
    assert httpx.get(reg["url"] + "/v1/history/devices/nan-cam", headers=viewer).json()["recent"][0]["count"] == 20


# --------------------------------------------------------------------------------------------- 3: pages
PAYLOAD = "\"'><img src=x onerror=alert(1)></script><script>alert(2)</script><!--"
NODE_DOM = """
const els = {};
const DATA = require("fs").readFileSync(process.argv[2], "utf8");
globalThis.window = globalThis;
globalThis.document = {body: {dataset: {}}, getElementById(id){
  return els[id] || (els[id] = {innerHTML: "", textContent: id === "factory-data" ? DATA : "", dataset: {}}); }};
globalThis.location = {hash: "", pathname: "/status"};
globalThis.localStorage = {getItem(){ return null; }, setItem(){}};
globalThis.history = {replaceState(){}};
globalThis.performance = {now(){ return 1; }};
globalThis.setInterval = () => 0;
"""


def _poison(obj, keys=("targets",)):
    """Every string in a page's data made hostile (its old value kept after it); the keys of ``targets`` too."""
    if isinstance(obj, str):
        return PAYLOAD + obj
    if isinstance(obj, list):
        return [_poison(x) for x in obj]
    if isinstance(obj, dict):
        return {k: (_poison_keys(v) if k in keys else _poison(v)) for k, v in obj.items()}
    return obj


def _poison_keys(d):
    return {PAYLOAD + k: _poison(v) for k, v in d.items()} if isinstance(d, dict) else _poison(d)


def _render(tmp_path, page_html: str) -> dict:
    """Run a page's own script in node against a stub DOM; the markup it wrote into each element."""
    import re
    import shutil

    if shutil.which("node") is None:
        pytest.skip("no node on this machine")
    data = re.search(r'<script id="factory-data" type="application/json">(.*?)</script>', page_html, re.S)[1]
    script = page_html.split('type="application/json">', 1)[1].split("<script>", 1)[1].rsplit("</script>", 1)[0]
    (tmp_path / "data.json").write_text(data)
    js = tmp_path / "page.js"
    js.write_text(NODE_DOM + script + "\nsetTimeout(() => console.log(JSON.stringify(els)), 50);\n")
    out = subprocess.run(["node", str(js), str(tmp_path / "data.json")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _assert_inert(els: dict, where: str) -> None:
    from html.parser import HTMLParser

    class Parsed(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.handlers, self.text = set(), [], []

        def handle_starttag(self, tag, attrs):
            self.tags.add(tag)
            self.handlers += [a for a, _ in attrs if a.startswith("on")]

        def handle_data(self, data):
            self.text.append(data)

    assert not els.get("error", {}).get("textContent"), (where, els["error"])
    html = "".join(e["innerHTML"] for e in els.values())
    page = Parsed()
    page.feed(html)
    assert not page.tags & {"script", "img", "iframe"} and not page.handlers, (where, page.tags, page.handlers)
    assert any("<img src=x onerror=alert(1)>" in t for t in page.text), where  # shown, as text
    assert "<!--" not in html, where


def test_pages_show_hostile_names_tags_and_reasons_as_text(reg, tmp_path):
    """Device ids, tags, rollout names, releases and reasons are validated on the way in; these are the
    pages' own defences, tried on data where every string is hostile (rows stored before validation, a
    signed manifest's free text, an admin's --reason)."""
    from factory.registry import history_page, status_page

    token = enroll(reg, "page-cam")
    assert httpx.post(reg["url"] + "/v1/telemetry", headers=_h(token), json=summary("page-cam")).status_code == 201
    reg["admin"].post("/v1/rollouts/field/pause", json={"reason": PAYLOAD})
    reg["admin"].post("/v1/rollouts/field/resume", json={"reason": PAYLOAD})
    viewer = _h(reg["tokens"]["viewer"])
    for kind, path in (
        ("rollouts", "/v1/history/rollouts/field"),
        ("releases", f"/v1/history/releases/{MODEL}/1.1.0/cpu"),
        ("devices", "/v1/history/devices/page-cam"),
    ):
        data = httpx.get(reg["url"] + path, headers=viewer).json()
        html = history_page.snapshot(kind, _poison(data))
        assert "<img" not in html.split('id="factory-data"')[1].split("</script>")[0]  # embedded data is inert
        _assert_inert(_render(tmp_path, html), kind)
    time.sleep(1.1)
    report = httpx.get(reg["url"] + "/v1/health", headers=viewer).json()
    assert report["rollouts"], report
    _assert_inert(_render(tmp_path, status_page.snapshot(_poison(report), {})), "status")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/audit?limit=-1",
        "/v1/audit?limit=abc",
        f"/v1/audit?limit={10**30}",
        "/v1/audit?limit=1e9",
        "/v1/audit?action=<script>",
        "/v1/history/devices/" + "a" * 300,
        "/v1/history/devices/%3Cscript%3E",
        "/v1/history/rollouts/" + "%00",
        "/v1/history/releases/x/1.0.0/" + "t" * 200,
        "/v1/captures?rollout=../../x",
        "/v1/captures?release=" + "r" * 600,
        "/v1/releases?name=%3Cimg%3E",
    ],
)
def test_hostile_query_and_path_parameters_are_a_4xx(reg, path):
    t0 = time.monotonic()
    r = reg["admin"].get(path)
    assert 400 <= r.status_code < 500 and time.monotonic() - t0 < 2, (r.status_code, r.text[:200])


# --------------------------------------------------------------------------------------------- 4: the static manifest
class _Manifests:
    """A device's view of a CDN: it serves whatever signed manifest it holds (an attacker's replay, too)."""

    def __init__(self, doc):
        self.doc = doc

    def fleet_manifest(self):
        return self.doc


def _agent(reg, client, state_dir, keypair):
    from factory.bundle.signing import load_public_key
    from factory.device.agent import Agent

    fleet = load_public_key(reg["tmp"] / "fleet.pub")
    return Agent(client, model=MODEL, device_id="fm-cam", target="cpu", tags=["cap"], state_dir=state_dir,
                 bundle_key=load_public_key(keypair[1]), fleet_key=fleet)  # fmt: skip


def test_an_old_signed_manifest_is_refused_after_a_restart(reg, tmp_path, keypair):
    from factory.errors import SignatureError

    old = reg["admin"].get("/v1/fleet-manifest").json()
    assert reg["admin"].post("/v1/rollouts/field/pause", json={"reason": "move the sequence on"}).status_code == 200
    new = reg["admin"].get("/v1/fleet-manifest").json()
    assert new["payload"]["sequence"] > old["payload"]["sequence"]
    cdn = _Manifests(new)
    agent = _agent(reg, cdn, tmp_path, keypair)
    assert agent._assignment()["version"] == "1.1.0"  # paused: the cohort keeps what it was moved to
    assert json.loads((tmp_path / "fleet.json").read_text())["sequence"] == new["payload"]["sequence"]
    restarted = _agent(reg, _Manifests(old), tmp_path, keypair)  # a new process, the same state folder
    with pytest.raises(SignatureError, match="older"):
        restarted._assignment()
    assert "older" in restarted.sync() and restarted.sync_errors == 1
    assert json.loads((tmp_path / "fleet.json").read_text())["sequence"] == new["payload"]["sequence"]
    restarted.client = _Manifests(new)  # the same manifest again is fine (a CDN serves it many times)
    assert restarted._assignment()["version"] == "1.1.0"
    forged = json.loads(json.dumps(old))
    forged["payload"]["sequence"] = new["payload"]["sequence"] + 100  # a replay with its number raised
    restarted.client = _Manifests(forged)
    with pytest.raises(SignatureError, match="does not verify"):
        restarted._assignment()
    (tmp_path / "fleet.json").write_text('{"sequence": "garbage"}')  # a damaged floor fails closed, clearly
    restarted.client = _Manifests(old)
    with pytest.raises(SignatureError, match="fleet.json"):
        _agent(reg, _Manifests(old), tmp_path, keypair)._assignment()
    assert reg["admin"].post("/v1/rollouts/field/resume", json={"reason": "t"}).status_code == 200


# --------------------------------------------------------------------------------------------- 6: publishing
def test_eight_concurrent_publishes_of_one_version_one_wins_no_half_state(reg):
    from factory.registry import db

    different = [archive(fake_bundle(reg["tmp"] / "race" / str(i), reg["key"], "2.0.0")) for i in range(8)]
    same = archive(fake_bundle(reg["tmp"] / "race-same", reg["key"], "2.1.0"))

    def publish(body):
        return httpx.post(reg["url"] + "/v1/releases", headers=_h(reg["tokens"]["admin"]), content=body, timeout=120)

    with ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(publish, different))
    assert sorted(r.status_code for r in answers) == [201] + [409] * 7, [r.text[:200] for r in answers]
    assert all("already exists with other content" in r.json()["detail"] for r in answers if r.status_code == 409)
    winner = next(r.json() for r in answers if r.status_code == 201)
    with reg["engine"].connect() as conn:
        rows = conn.execute(sa.select(db.releases.c.sha256).where(db.releases.c.version == "2.0.0")).all()
    assert [r.sha256 for r in rows] == [winner["sha256"]]
    bundles = {p.name.split(".")[0] for p in (reg["tmp"] / "blobs" / "bundles").rglob("*.tar.gz")}
    import hashlib

    losers = {hashlib.sha256(b).hexdigest() for b in different} - {winner["sha256"]}
    assert winner["sha256"] in bundles and not losers & bundles  # no loser left a blob behind
    download = reg["admin"].get(f"/v1/releases/{MODEL}/2.0.0/cpu/bundle")
    assert hashlib.sha256(download.content).hexdigest() == winner["sha256"]
    with ThreadPoolExecutor(8) as ex:
        answers = [r.json() for r in ex.map(publish, [same] * 8)]
    assert sorted(a["created"] for a in answers) == [False] * 7 + [True]
