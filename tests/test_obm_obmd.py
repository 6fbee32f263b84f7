"""The obmd OBM driver passes the OBM conformance suite against the fake obmd, gets and revokes node
tokens with obmd's admin token, and never lets a token out (error messages, logs)."""

from __future__ import annotations

import logging

import httpx
import pytest
from obm_conformance import NodeUnderTest, OBMConformance
from obmd_helpers import obmd_form

from rhaas.drivers.obm.obmd import ObmdOBM, ObmdSettings
from rhaas.errors import OBMError
from rhaas.lab.obmd import FakeObmd


def make(daemon: FakeObmd, node_id: str, **state: object) -> ObmdOBM:
    return ObmdOBM(ObmdSettings.model_validate(obmd_form(daemon, node_id, **state)), timeout=5)


def enabled(obm: ObmdOBM) -> ObmdOBM:
    return ObmdOBM(obm.enable(), timeout=5)


class TestObmdOBM(OBMConformance):
    has_nmi = False

    @pytest.fixture
    def node(self, obmd: FakeObmd) -> NodeUnderTest:
        obm = enabled(make(obmd, "n1"))
        machine = obmd.machines["n1"]
        return NodeUnderTest(obm, lambda: (machine.boots, 0), lambda: machine.bootdev)

    @pytest.fixture(params=["obmd fails", "no obmd", "token revoked"])
    def failing(self, request: pytest.FixtureRequest, obmd: FakeObmd) -> ObmdOBM:
        if request.param == "obmd fails":
            obm = enabled(make(obmd, "bad"))
            obmd.machines["bad"].fail = True
            return obm
        if request.param == "no obmd":
            settings = {"uri": "http://127.0.0.1:9/node/x", "admin_token": "a" * 32, "token": "b" * 32}
            return ObmdOBM(ObmdSettings.model_validate(settings), timeout=2)
        obm = enabled(make(obmd, "n2"))
        make(obmd, "n2").disable()  # another holder of the admin token revoked it
        return obm


def test_enable_gets_a_token_with_the_admin_token_and_disable_revokes_it(obmd: FakeObmd) -> None:
    obm = make(obmd, "n1")
    with pytest.raises(OBMError, match="enable the node's OBM first"):
        obm.power_status()
    on = obm.enable()
    assert on.token == obmd.machines["n1"].token and len(on.token or "") == 32
    assert ObmdOBM(on).power_status() == "off"
    again = ObmdOBM(on).enable()  # a new token replaces the old one, as in obmd
    assert again.token != on.token
    with pytest.raises(OBMError, match="refused the node token"):
        ObmdOBM(on).power_on()
    off = ObmdOBM(again).disable()
    assert off.token is None and obmd.machines["n1"].token is None
    with pytest.raises(OBMError, match="refused the node token"):
        ObmdOBM(again).power_on()
    assert obmd.machines["n1"].boots == 0


def test_a_wrong_admin_token_is_refused(obmd: FakeObmd) -> None:
    form = obmd_form(obmd, "n1")
    obm = ObmdOBM(ObmdSettings.model_validate({**form, "admin_token": "0" * 32}))
    with pytest.raises(OBMError) as raised:
        obm.enable()
    assert obmd.machines["n1"].token is None
    assert "0" * 32 not in str(raised.value) and obm.settings.uri in str(raised.value)


@pytest.mark.parametrize(
    "uri",
    ["ftp://h/node/n", "not a url", "http:///node/n", "http://h/node/n?x=1", "http://u:p@h/node/n", ""],
)
def test_settings_refuse_what_is_not_an_http_url(uri: str) -> None:
    with pytest.raises(ValueError):
        ObmdSettings.model_validate({"uri": uri, "admin_token": "t"})


def test_tokens_are_in_no_error_message_nor_log_line(
    obmd: FakeObmd, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    obm = enabled(make(obmd, "n1"))
    token, admin = obm.settings.token, obm.settings.admin_token
    assert token and repr(token) not in repr(obm.settings) and admin not in repr(obm.settings)
    obm.power_on()
    obm.set_bootdev("pxe")
    obmd.machines["n1"].fail = True
    with pytest.raises(OBMError) as raised:
        obm.power_cycle()
    assert token not in str(raised.value)
    assert "token=<redacted>" in caplog.text  # httpx did log the request line, blanked
    assert token not in caplog.text and admin not in caplog.text


def test_the_console_streams_until_closed(obmd: FakeObmd) -> None:
    obm = enabled(make(obmd, "n1"))
    obm.power_on()
    stream = obm.console()
    chunks = iter(stream)
    assert next(chunks) == b""  # connected
    assert b"boot 1" in next(chunks)
    obm.power_cycle()
    assert b"boot 2" in next(chunks)
    stream.close()  # type: ignore[attr-defined]


def test_garbage_answers_are_obm_errors(obmd: FakeObmd, monkeypatch: pytest.MonkeyPatch) -> None:
    obm = enabled(make(obmd, "n1"))

    def garbage(*args: object, **kwargs: object) -> httpx.Response:
        return httpx.Response(200, content=b"<html>", request=httpx.Request("GET", obm.settings.uri))

    monkeypatch.setattr(httpx, "request", garbage)
    with pytest.raises(OBMError, match="not JSON"):
        obm.power_status()
    with pytest.raises(OBMError, match="not JSON"):
        obm.enable()
