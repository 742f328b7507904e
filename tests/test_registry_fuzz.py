"""Property-based fuzzing of the registry's OpenAPI document (schemathesis): no input may cause a 5xx."""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from tests.registry_server import Server, make_settings  # noqa: E402


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
        srv.admin = create_token(conn, "fuzz-admin", "admin")
    yield srv
    srv.stop()


def test_no_server_errors(fuzz_server):
    """Every operation of the OpenAPI document, 30 generated requests each (valid and invalid ones)."""
    from hypothesis import given

    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    auth = {"Authorization": f"Bearer {fuzz_server.admin}"}
    failures, tried, calls = [], 0, []
    for result in schema.get_all_operations():
        op = result.ok()
        tried += 1

        @given(case=op.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(headers=auth, timeout=30)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")

        check()
    assert tried >= 10 and len(calls) >= 5 * tried, f"{tried} operations, {len(calls)} requests"
    assert not failures, "\n".join(failures[:10])
