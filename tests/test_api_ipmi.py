"""Power through the API to a real IPMI endpoint (a virtual BMC process on 127.0.0.1), with ipmitool as
an independent witness, including the NMI."""

from __future__ import annotations

import pytest
from ipmi_helpers import PASSWORD, USER

pytestmark = pytest.mark.ipmi


def test_power_through_the_api_agrees_with_ipmitool(api, bmc):
    admin = api.admin
    obm = {"type": "ipmi", "host": "127.0.0.1", "port": bmc.port, "user": USER, "password": PASSWORD}
    admin.ok("PUT", "/node/real", {"obm": obm})
    admin.ok("PUT", "/project/p")
    admin.ok("POST", "/project/p/connect_node", {"node": "real"})
    admin.ok("PUT", "/node/real/obm", {"enabled": True})

    assert admin.ok("GET", "/node/real/power_status") == {"power_status": "off"}
    assert "off" in bmc.ipmitool("chassis", "power", "status")
    admin.ok("PUT", "/node/real/boot_device", {"bootdev": "pxe"})
    admin.ok("POST", "/node/real/power_on")
    assert admin.ok("GET", "/node/real/power_status") == {"power_status": "on"}
    assert "Chassis Power is on" in bmc.ipmitool("chassis", "power", "status")
    assert bmc.state().boots == 1

    admin.ok("POST", "/node/real/power_nmi")
    assert bmc.state().nmis == 1
    admin.ok("POST", "/node/real/power_cycle", {"force": True})
    assert bmc.state().boots == 2
    admin.ok("POST", "/node/real/power_off")
    assert "Chassis Power is off" in bmc.ipmitool("chassis", "power", "status")
    assert admin.ok("GET", "/node/real/power_status") == {"power_status": "off"}
    # The BMC's password never comes back from the API.
    assert PASSWORD not in admin("GET", "/node/real").text


def test_dead_bmc_is_a_502_naming_it(api, bmc):
    admin = api.admin
    obm = {"type": "ipmi", "host": "127.0.0.1", "port": bmc.port, "user": USER, "password": "wrong"}
    admin.ok("PUT", "/node/locked", {"obm": obm})
    admin.ok("PUT", "/node/locked/obm", {"enabled": True})
    msg = admin.error("POST", "/node/locked/power_on", None, 502, "OBMError")
    assert f"127.0.0.1:{bmc.port}" in msg
