"""Where the agent takes its device token from: the flag, a token file, systemd's credential, the state
folder; a file that does not hold one token is refused."""

from __future__ import annotations

import json

import pytest

from factory.device.commands import _credential
from factory.errors import InputError


def test_the_token_comes_from_the_flag_then_the_file_then_systemd_then_the_state_folder(tmp_path, monkeypatch):
    state = tmp_path / "state"
    state.mkdir()
    (state / "credentials.json").write_text(json.dumps({"device_id": "cam-1", "token": "from-state"}))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "device-token").write_text("from-systemd\n")
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert _credential(state, "cam-1", "from-flag", str(tmp_path / "token")) == "from-flag"
    assert _credential(state, "cam-1", None, str(tmp_path / "token")) == "from-file"
    assert _credential(state, "cam-1", None) == "from-systemd"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert _credential(state, "cam-1", None) == "from-state"
    with pytest.raises(InputError, match="holds the credential of device 'cam-1'"):
        _credential(state, "cam-2", None)  # a device speaks only for itself


@pytest.mark.parametrize("content", ["", "two tokens\n", "x" * 600])
def test_a_token_file_that_does_not_hold_one_token_is_refused(tmp_path, content):
    (tmp_path / "token").write_text(content)
    with pytest.raises(InputError, match="does not hold one device token"):
        _credential(tmp_path, "cam-1", None, str(tmp_path / "token"))
    with pytest.raises(InputError, match="cannot read the device token"):
        _credential(tmp_path, "cam-1", None, str(tmp_path / "missing"))
