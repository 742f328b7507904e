"""Signing, verification, tampering and hostile archives."""

import io
import shutil
import tarfile

import pytest

from factory.bundle.signing import generate_keys
from tests.conftest import build_args, invoke


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, trained, synth_ds, keypair, loose_targets):
    out = tmp_path_factory.mktemp("bundles") / "b"
    result = invoke(
        *build_args(trained.path, "cpu", keypair, loose_targets, out, "--data", str(synth_ds), "--no-track")
    )
    assert result.exit_code == 0, result.output
    return next(out.glob("*/*/cpu"))


def _verify(path, pub):
    return invoke("bundle", "verify", str(path), "--pubkey", str(pub))


def test_verify_folder_and_archive(bundle, keypair):
    for path in (bundle, bundle.parent / "cpu.tar.gz"):
        result = _verify(path, keypair[1])
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("OK ")


@pytest.mark.parametrize("name", ["model.onnx", "manifest.json", "manifest.sig"])
@pytest.mark.parametrize("where", [0, 0.5, -1])
def test_flipping_any_byte_fails_verification(tmp_path, bundle, keypair, name, where):
    copy = tmp_path / "cpu"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / name).read_bytes())
    i = int(len(data) * where) if where != -1 else len(data) - 2
    data[i] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    result = _verify(copy, keypair[1])
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr


def test_extra_or_missing_files_fail(tmp_path, bundle, keypair):
    copy = tmp_path / "cpu"
    shutil.copytree(bundle, copy)
    (copy / "evil.so").write_bytes(b"x")
    assert "not listed in the manifest" in _verify(copy, keypair[1]).stderr
    (copy / "evil.so").unlink()
    (copy / "manifest.sig").unlink()
    result = _verify(copy, keypair[1])
    assert result.exit_code == 2 and "unsigned" in result.stderr


def test_another_key_is_refused(tmp_path, bundle):
    _, other_pub = generate_keys(tmp_path / "other")
    result = _verify(bundle, other_pub)
    assert result.exit_code == 2
    assert "not by the trusted key" in result.stderr


def _hostile(path, member: tarfile.TarInfo, data: bytes = b"payload"):
    with tarfile.open(path, "w:gz") as tar:
        if member.isfile():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "subdir"])
def test_hostile_archives_are_refused(tmp_path, kind, keypair):
    if kind == "dotdot":
        member = tarfile.TarInfo("../escaped.txt")
    elif kind == "absolute":
        member = tarfile.TarInfo(str(tmp_path / "absolute.txt"))
    elif kind == "symlink":
        member = tarfile.TarInfo("model.onnx")
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        member = tarfile.TarInfo("model.onnx")
        member.type, member.linkname = tarfile.LNKTYPE, "/etc/passwd"
    else:
        member = tarfile.TarInfo("nested/model.onnx")
    archive = _hostile(tmp_path / "evil.tar.gz", member)
    out = tmp_path / "work" / "out"
    result = invoke("bundle", "unpack", str(archive), "--out", str(out))
    assert result.exit_code == 2, result.output
    assert "refusing" in result.stderr or "link" in result.stderr or "sub-folder" in result.stderr
    assert not out.exists()
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "work" / "escaped.txt").exists()
    assert not (tmp_path / "absolute.txt").exists()
    verify = _verify(archive, keypair[1])
    assert verify.exit_code == 2


def test_oversized_member_is_refused(tmp_path, monkeypatch):
    from factory.bundle import archive as mod

    monkeypatch.setattr(mod, "MAX_MEMBER_BYTES", 10)
    archive = _hostile(tmp_path / "big.tar.gz", tarfile.TarInfo("model.onnx"), b"x" * 100)
    result = invoke("bundle", "unpack", str(archive), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "over the 10 byte limit" in result.stderr
    assert not (tmp_path / "out").exists()


def test_inspect_shows_the_measurements(bundle):
    result = invoke("bundle", "inspect", str(bundle))
    assert result.exit_code == 0, result.output
    for word in ("accuracy", "latency", "p95", "verdict", "model.onnx"):
        assert word in result.stdout


def test_keys_generate_refuses_to_overwrite(tmp_path):
    assert invoke("keys", "generate", "--out", str(tmp_path / "k")).exit_code == 0
    assert oct((tmp_path / "k.key").stat().st_mode & 0o777) == "0o600"
    again = invoke("keys", "generate", "--out", str(tmp_path / "k"))
    assert again.exit_code == 2 and "already exists" in again.stderr
