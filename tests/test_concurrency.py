"""Races through a real server: concurrent claims of the same nodes never double-own a node."""

from concurrent.futures import ThreadPoolExecutor


def test_50_concurrent_claims_for_10_nodes(server):
    with server.client("admin", "adminpw") as admin:
        for project in range(5):
            assert admin.put(f"/project/p{project}").status_code == 200
        for i in range(10):
            obm = {"type": "mock", "host": f"b{i}", "user": "u", "password": "p"}
            assert admin.put(f"/node/n{i}", json={"obm": obm}).status_code == 200

    def claim(k: int) -> tuple[int, str, str]:
        project, node = f"p{k % 5}", f"n{k % 10}"
        with server.client("admin", "adminpw") as c:
            r = c.post(f"/project/{project}/connect_node", json={"node": node})
            return r.status_code, project, node

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(claim, range(50)))
    codes = sorted(code for code, _, _ in results)
    assert codes.count(200) == 10, results
    assert set(codes) == {200, 409}, results
    winners = {node: project for code, project, node in results if code == 200}
    assert len(winners) == 10
    with server.client("admin", "adminpw") as admin:
        owned = {}
        for project in range(5):
            for node in admin.get(f"/project/p{project}/nodes").json():
                assert node not in owned, f"{node} owned twice"
                owned[node] = f"p{project}"
        assert owned == winners
        assert admin.get("/nodes/free").json() == []
