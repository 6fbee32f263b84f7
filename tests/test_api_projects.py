"""Projects and nodes moving in and out of them: success and error cases of every project route."""


def test_project_create_list_delete(api):
    admin = api.admin
    assert admin.ok("GET", "/projects") == []
    admin.ok("PUT", "/project/zeta")
    admin.ok("PUT", "/project/alpha")
    assert admin.ok("GET", "/projects") == ["alpha", "zeta"]
    admin.error("PUT", "/project/alpha", None, 409, "DuplicateError")
    admin.ok("DELETE", "/project/alpha")
    assert admin.ok("GET", "/projects") == ["zeta"]
    admin.error("DELETE", "/project/alpha", None, 404, "NotFoundError")


def test_project_delete_is_blocked_by_nodes_networks_and_access(site):
    admin = site.admin
    admin.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    assert "nodes" in admin.error("DELETE", "/project/p1", None, 409, "BlockedError")
    admin.ok("POST", "/project/p1/detach_node", {"node": "n1"})
    admin.ok("PUT", "/network/net1", {"owner": "p1", "access": "p1", "net_id": ""})
    assert "owns networks" in admin.error("DELETE", "/project/p1", None, 409, "BlockedError")
    admin.ok("DELETE", "/network/net1")
    admin.ok("PUT", "/network/pub", {"owner": "admin", "access": "p1", "net_id": ""})
    assert "access" in admin.error("DELETE", "/project/p1", None, 409, "BlockedError")
    admin.ok("DELETE", "/network/pub")
    admin.ok("DELETE", "/project/p1")


def test_connect_and_detach_node(site):
    alice = site.alice
    assert alice.ok("GET", "/project/p1/nodes") == []
    alice.ok("POST", "/project/p1/connect_node", {"node": "n2"})
    alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    assert alice.ok("GET", "/project/p1/nodes") == ["n1", "n2"]
    assert site.admin.ok("GET", "/nodes/free") == ["n3", "n4"]
    assert site.admin.ok("GET", "/node/n1")["project"] == "p1"
    msg = site.bob.error("POST", "/project/p2/connect_node", {"node": "n1"}, 409, "BlockedError")
    assert msg == "Node n1 is already owned by a project."
    alice.ok("POST", "/project/p1/detach_node", {"node": "n1"})
    assert alice.ok("GET", "/project/p1/nodes") == ["n2"]
    assert site.admin.ok("GET", "/node/n1")["project"] is None


def test_connect_node_errors(site):
    alice = site.alice
    alice.error("POST", "/project/p1/connect_node", {"node": "nope"}, 404, "NotFoundError")
    site.admin.error("POST", "/project/nope/connect_node", {"node": "n1"}, 404, "NotFoundError")
    alice.error("POST", "/project/p2/connect_node", {"node": "n1"}, 401, "AuthorizationError")
    alice.error("POST", "/project/p1/connect_node", {}, 400, "ValidationError")
    alice.error("POST", "/project/p1/connect_node", {"node": 7}, 400, "ValidationError")
    alice.error("POST", "/project/p1/connect_node", {"node": "n1", "x": 1}, 400, "ValidationError")
    assert site.admin.ok("GET", "/nodes/free") == ["n1", "n2", "n3", "n4"]


def test_detach_node_errors(site):
    alice, admin = site.alice, site.admin
    alice.error("POST", "/project/p1/detach_node", {"node": "n1"}, 404, "NotFoundError")
    alice.ok("POST", "/project/p1/connect_node", {"node": "n1"})
    site.bob.error("POST", "/project/p1/detach_node", {"node": "n1"}, 401, "AuthorizationError")
    admin.ok("PUT", "/project/p3")
    admin.error("POST", "/project/p3/detach_node", {"node": "n1"}, 404, "NotFoundError")
    # OBM enabled blocks the detach, as in HIL.
    alice.ok("PUT", "/node/n1/obm", {"enabled": True})
    assert "OBM" in alice.error("POST", "/project/p1/detach_node", {"node": "n1"}, 409, "BlockedError")
    alice.ok("PUT", "/node/n1/obm", {"enabled": False})
    # A network attachment blocks it.
    alice.ok("PUT", "/network/net1", {"owner": "p1", "access": "p1", "net_id": ""})
    sid = alice.ok("POST", "/node/n1/nic/eth0/connect_network", {"network": "net1"}, status=202)["status_id"]
    assert alice.wait_action(sid)["status"] == "DONE"
    assert "networks" in alice.error("POST", "/project/p1/detach_node", {"node": "n1"}, 409, "BlockedError")
    assert alice.ok("GET", "/project/p1/nodes") == ["n1"]


def test_project_networks_lists_networks_with_access(site):
    admin, alice = site.admin, site.alice
    admin.ok("PUT", "/network/pub", {"owner": "admin", "access": "", "net_id": ""})
    alice.ok("PUT", "/network/zz", {"owner": "p1", "access": "p1", "net_id": ""})
    admin.ok("PUT", "/network/aa", {"owner": "admin", "access": "p1", "net_id": ""})
    assert alice.ok("GET", "/project/p1/networks") == ["aa", "zz"]
    assert site.bob.ok("GET", "/project/p2/networks") == []
    site.bob.error("GET", "/project/p1/networks", None, 401, "AuthorizationError")
