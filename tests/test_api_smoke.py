def test_site_builds_and_node_shows(site):
    node = site.admin.ok("GET", "/node/n1")
    assert node == {
        "metadata": {},
        "name": "n1",
        "nics": [
            {
                "label": "eth0",
                "macaddr": "52:54:00:00:00:01",
                "networks": {},
                "port": "gi1/0/1",
                "switch": "sw0",
            }
        ],
        "project": None,
    }
