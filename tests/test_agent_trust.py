"""Who may speak to the FPBL agents' and the network boot's routes: only the provisioning network's
listener serves them; the customer API answers them with HIL's 404, hands out no agent secret and takes
none (docs/fast-provisioning.md, "Trust").

The attack these tests replay: an ordinary customer of another project reads a free node's MAC (any
user may read a node), asks the customer API for the node's iPXE script to get a fresh agent secret,
then polls the node's work, downloads the next customer's disk, reports a fake kexec and locks the real
agent out. In-process first, then against a real ``rhaas-admin serve`` with both listeners.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from agent_helpers import DISK, Agent, machine, network_boot_site, sha, state
from api_helpers import Api as Site
from click.testing import CliRunner
from dbdump import dump

from rhaas.admin import main as admin_cli
from rhaas.agent import wire
from rhaas.agent.api import Api
from rhaas.agent.settings import parse_cmdline
from rhaas.config import load_settings
from rhaas.lab.polling import wait_for
from rhaas.lab.servers import Server

MAC1 = "52:54:00:00:00:01"


@pytest.fixture
def netprov(db_url: str, tmp_path: Path) -> Iterator[Site]:
    """The site with fast provisioning, its provisioning network and the network boot set up."""
    with network_boot_site(db_url, tmp_path / "fpbl") as api:
        yield api


def ready_agent(api: Site) -> Agent:
    """Enrol n1, network-boot it on the provisioning network's listener, check its agent in."""
    api.admin.ok("PUT", "/node/n1/fpbl", {})
    wait_for("the network boot", lambda: machine("bmc1").power == "on", 30.0, every=0.02)
    script = api.agent.get(f"/boot/v1/ipxe/{MAC1}").text
    words = dict(w.split("=", 1) for w in script.split() if w.startswith("rhaas."))
    agent = Agent(api, "n1", words["rhaas.secret"])
    agent.checkin()
    assert state(api, "n1") == "ready"
    return agent


def attempts(node: str, mac: str, job: str) -> list[tuple[str, str, dict[str, object] | None]]:
    """Every route that hands out or takes an agent secret, as a stranger would call it."""
    report = {"job": job, "phase": "kexec", "state": "done", "at": 1.0}
    checkin = {"mode": "ready", "boot_id": "evil", "kernel": "6.1", "memory_kb": 1}
    return [
        ("GET", f"/boot/v1/ipxe/{mac}", None),
        ("GET", "/boot/v1/ipxe", None),
        ("GET", "/boot/v1/fpbl/vmlinuz", None),
        ("GET", "/boot/v1/fpbl/initrd", None),
        ("GET", f"/agent/v1/nodes/{node}/work", None),
        ("GET", f"/agent/v1/nodes/{node}/work?wait=1", None),
        ("POST", f"/agent/v1/nodes/{node}/report", report),
        ("POST", f"/agent/v1/nodes/{node}/checkin", checkin),
        ("GET", f"/agent/v1/nodes/{node}/blobs/{sha(DISK)}", None),
    ]


def test_a_customer_gets_no_agent_secret_and_no_agent_route_on_the_customer_api(netprov):
    agent = ready_agent(netprov)
    # Bob (project p2) reads the free node, MAC included, as any user may; Alice's deploy is queued on it.
    bob = netprov.bob
    mac = bob.ok("GET", "/node/n1")["nics"][0]["macaddr"]
    assert mac == MAC1
    netprov.alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    job = netprov.alice.ok("POST", "/node/n1/provision", {"image": "a-os"}, status=202)["job_id"]
    before = dump(netprov.sessions)

    for auth in (bob.headers, {"Authorization": "Bearer guessed"}, {}):
        for method, path, body in attempts("n1", mac, job):
            response = netprov.client.request(method, path, json=body, headers=auth)
            assert response.status_code == 404, (method, path, response.status_code, response.text)
            assert response.json() == {"type": "NotFoundError", "msg": f"No such route: {path.split('?')[0]}"}
            assert "secret" not in response.text and not response.headers.get("content-range")
    assert dump(netprov.sessions) == before, "a refused request changed the database"

    # The real agent, on the provisioning network's listener, still holds the node and gets the deploy.
    item = agent.work()
    assert item["action"] == "deploy" and item["job"] == job
    blob = netprov.agent.get(f"/agent/v1/nodes/n1/blobs/{sha(DISK)}", headers=agent.headers)
    assert blob.status_code == 200 and blob.content == DISK
    agent.report(job, "kexec", "start")
    assert state(netprov, "n1") == "deploying"


def test_the_customer_api_documents_no_agent_route_and_the_agent_app_no_customer_route(netprov):
    paths = netprov.client.get("/openapi.json").json()["paths"]
    assert paths and not [p for p in paths if p.startswith(("/agent/", "/boot/"))]
    for path in ("/openapi.json", "/docs", "/v0/nodes/free"):
        response = netprov.agent.get(path, headers=netprov.admin.headers)
        assert response.status_code == 404 and response.json()["type"] == "NotFoundError", path


def test_serve_refuses_fast_provisioning_without_an_agent_listener(tmp_path):
    config = tmp_path / "rhaas.toml"
    config.write_text('[provisioning]\nenabled = true\nagent_url = "http://10.20.0.1:5001"\n')
    database = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    result = CliRunner().invoke(admin_cli, ["serve", "--config", str(config), "--database", database])
    assert result.exit_code == 2 and "agent_listen" in result.output, result.output
    assert not (tmp_path / "x.sqlite3").exists(), "it refused before touching the database"
    bad = CliRunner().invoke(admin_cli, ["serve", "--database", database, "--agent-listen", "10.0.0.1"])
    assert bad.exit_code == 2 and "HOST:PORT" in bad.output, bad.output


@pytest.mark.parametrize("value", ["10.0.0.1", ":5001", "10.0.0.1:0", "10.0.0.1:http", "h:99999", "a b:1"])
def test_agent_listen_must_be_host_and_port(value):
    with pytest.raises(ValueError, match="agent_listen must be HOST:PORT"):
        load_settings(None, provisioning__agent_listen=value)


def test_agent_listen_takes_ipv4_ipv6_and_names():
    for value in ("10.20.0.1:5001", "[fd00::1]:5001", "head.prov.example.org:80"):
        assert load_settings(None, provisioning__agent_listen=value).provisioning.agent_listen == value


def test_a_real_server_serves_agents_over_pinned_tls_and_the_boot_over_plain_http(tmp_path):
    """``rhaas-admin serve`` with all three listeners: the customer API serves neither agents nor boot;
    the agents' listener speaks TLS only, with the certificate whose SHA-256 every enrolment and network
    boot hands out as ``rhaas.pin``; the boot listener serves ``/boot/v1`` only, in plain HTTP. The agent's
    own client checks in through the pinned TLS listener."""
    config = tmp_path / "rhaas.toml"
    config.write_text('[provisioning]\nenabled = true\nagent_url = "https://10.0.2.2:5000"\n')
    server = Server(f"sqlite:///{tmp_path / 'rhaas.sqlite3'}", tmp_path / "server.log", "--config",
                    str(config), agent=True)  # fmt: skip
    server.start()
    try:
        assert server.agent_tls_key.stat().st_mode & 0o777 == 0o600, "the key is the server's alone"
        host, port = server.agent_listen.split(":")
        presented = ssl.get_server_certificate((host, int(port)))
        assert hashlib.sha256(ssl.PEM_cert_to_DER_cert(presented)).hexdigest() == server.pin
        with server.client("admin", "adminpw") as admin:
            obm = {"type": "mock", "host": "trust-bmc", "user": "u", "password": "p"}
            admin.put("/node/t1", json={"obm": obm}).raise_for_status()
            admin.put("/node/t1/nic/eth0", json={"macaddr": "52:54:00:aa:00:01"}).raise_for_status()
            cmdline = admin.put("/node/t1/fpbl", json={}).json()["cmdline"]
            plain = admin.put("/node/t1/fpbl", json={"agent_url": "http://10.0.2.2:5000"})
            assert plain.status_code == 400 and "https only" in plain.json()["msg"], plain.text
        words = dict(w.split("=", 1) for w in cmdline.split())
        assert words["rhaas.pin"] == server.pin and words["rhaas.agent"] == "https://10.0.2.2:5000"
        headers = {"Authorization": f"Bearer {words['rhaas.secret']}"}
        body = {"mode": "ready", "boot_id": "b1", "kernel": "6.1", "memory_kb": 1}
        checkin, boot = "/agent/v1/nodes/t1/checkin", "/boot/v1/ipxe"

        refused = httpx.post(server.url + checkin, json=body, headers=headers)
        assert refused.status_code == 404 and refused.json()["type"] == "NotFoundError"
        assert httpx.get(server.url + boot).status_code == 404
        with pytest.raises(httpx.TransportError):  # no plain HTTP on the agents' listener
            httpx.post(f"http://{server.agent_listen}{checkin}", json=body, headers=headers)
        on_boot = httpx.post(server.boot_url + checkin, json=body, headers=headers)
        assert on_boot.status_code == 404 and on_boot.json()["type"] == "NotFoundError"
        unset = httpx.get(server.boot_url + boot)  # served: the network boot is not set up here
        assert unset.status_code == 409 and unset.json()["type"] == "IllegalStateError"
        assert httpx.get(server.boot_url + "/v0/nodes/free").status_code == 404

        settings = parse_cmdline(cmdline.replace(words["rhaas.agent"], server.agent_url))
        api = Api(settings)
        assert api.call("POST", "checkin", body) == {}
        for _ in range(3):
            assert api.call("GET", "work")["action"] == "wait"
        assert api.connections.opened == 1, "one TLS handshake: the server keeps the connection open"
        for aes, version, cipher in ((True, "TLSv1.3", "TLS_AES_256_GCM_SHA384"),
                                     (False, "TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305")):  # fmt: skip
            with wire.client_context(aes).wrap_socket(socket.create_connection((host, int(port)))) as tls:
                assert (tls.version(), tls.cipher()[0]) == (version, cipher), f"aes={aes}"
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        old.set_ciphers("ECDHE+AES+SHA1")  # CBC with SHA-1: uvicorn's default would take it
        with pytest.raises(ssl.SSLError), old.wrap_socket(socket.create_connection((host, int(port)))):
            pass
        with server.client("admin", "adminpw") as admin:
            assert admin.get("/node/t1/provisioning").json()["state"] == "ready"
    finally:
        server.stop()


def test_serve_refuses_agents_over_plain_http_and_a_boot_url_without_its_listener(tmp_path):
    database = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    config = tmp_path / "rhaas.toml"
    for extra, expected in (
        ('agent_url = "http://10.20.0.1:5001"', "https://"),
        ('agent_url = "https://10.20.0.1:5001"\nboot_url = "http://10.20.0.1:8080"', "boot_listen"),
    ):
        config.write_text(f'[provisioning]\nenabled = true\nagent_listen = "127.0.0.1:1"\n{extra}\n')
        result = CliRunner().invoke(admin_cli, ["serve", "--config", str(config), "--database", database])
        assert result.exit_code == 2 and expected in result.output, result.output
    assert not (tmp_path / "x.sqlite3").exists(), "it refused before touching the database"
