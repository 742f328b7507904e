"""Property-based fuzzing of the registry's OpenAPI document (schemathesis): no input may cause a 5xx."""

import pytest

schemathesis = pytest.importorskip("schemathesis")
import httpx  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from tests.registry_server import Server, archive, fake_bundle, make_settings  # noqa: E402


@schemathesis.serializer("application/gzip")
def _gzip_body(ctx, value):
    """Publish bodies are archives: send the generated value's bytes (garbage archives must get a 4xx)."""
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, keypair):
    from factory.bundle.signing import generate_keys
    from factory.registry import db
    from factory.registry.auth import create_token

    tmp = tmp_path_factory.mktemp("fuzz")
    fleet, _ = generate_keys(tmp / "fleet")
    srv = Server(make_settings(tmp, f"sqlite:///{tmp / 'fuzz.db'}", [str(keypair[1])], str(fleet)))
    srv.start()
    with db.engine_for(srv.settings["database"]).begin() as conn:
        srv.tokens = {role: create_token(conn, f"fuzz-{role}", role) for role in ("admin", "viewer", "enroll")}
        srv.tokens["device"] = create_token(conn, "device:fuzz-cam", "device", "fuzz-cam")
    # something to find: a release, a rollout that asks for captures, the device registered and in it
    from factory.bundle.signing import load_private_key

    h = {"Authorization": f"Bearer {srv.tokens['admin']}"}
    bundle = archive(fake_bundle(tmp / "b" / "1.0.0", load_private_key(keypair[0]), "1.0.0", name="fuzz"))
    assert httpx.post(srv.url + "/v1/releases", headers=h, content=bundle).status_code == 201
    plan = {"name": "fuzz", "release": {"name": "fuzz", "version": "1.0.0"}, "stages": [{"percent": 100}],
            "capture": {"when": {"random_rate": 1.0}, "max_per_device_per_day": 5, "max_bytes": 40_000,
                        "retention_days": 1}}  # fmt: skip
    assert httpx.post(srv.url + "/v1/rollouts", headers=h, json=plan).status_code == 201
    device = {"device_id": "fuzz-cam", "target": "cpu", "tags": []}
    assert httpx.post(srv.url + "/v1/devices", headers=h, json=device).status_code == 201
    yield srv
    srv.stop()


@pytest.mark.parametrize("role, examples", [("viewer", 20), ("device", 20), ("enroll", 10), ("admin", 40)])
def test_no_server_errors(fuzz_server, role, examples):
    """Every operation of the OpenAPI document, with each kind of token, ``examples`` generated requests each
    (valid and invalid ones): a 5xx is a bug whoever calls."""
    from hypothesis import given

    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    auth = {"Authorization": f"Bearer {fuzz_server.tokens[role]}"}
    failures, tried, calls = [], 0, []
    for result in schema.get_all_operations():
        op = result.ok()
        tried += 1

        @given(case=op.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(headers=auth, timeout=30)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")

        check()
    assert tried >= 20 and len(calls) >= 5 * tried, f"{tried} operations, {len(calls)} requests"
    print(f"\nschemathesis as {role}: {tried} operations, {len(calls)} requests, {len(failures)} 5xx")
    assert not failures, "\n".join(failures[:10])
