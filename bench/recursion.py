"""The cost of each recursion level, side by side in one run.

    .venv/bin/python bench/recursion.py [--rounds 100] [--json]

Starts a base instance (mock switch, mock BMCs) and two recursive instances on top of it, all on loopback
with SQLite, and measures at depth 1, 2 and 3: show node, list free nodes, connect_node + detach_node, and
connect_network → DONE (which at depth d crosses d levels down to the base's switch and back).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from rhaas.lab.servers import Server


def ok(response: httpx.Response, *codes: int) -> object:
    if response.status_code not in (codes or (200,)):
        raise SystemExit(
            f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
        )
    return response.json() if response.content else None


def timed(n: int, call: Callable[[int], object]) -> list[float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_done(client: httpx.Client, status_id: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        # The long-poll extension answers as soon as the action is done: no polling interval in the figure.
        status = ok(client.get(f"/networking_action/{status_id}", params={"wait": 5}))["status"]  # type: ignore[index]
        if status == "DONE":
            return
        if status != "PENDING" or time.monotonic() > deadline:
            raise SystemExit(f"networking action {status_id}: {status}")


def setup(tmp: Path) -> list[tuple[Server, httpx.Client]]:
    levels: list[tuple[Server, httpx.Client]] = []
    upstream: Server | None = None
    for depth in (1, 2, 3):
        args = ["--vlans", "100-199"]
        env = {}
        if upstream is not None:
            args += [
                "--upstream",
                upstream.url,
                "--upstream-project",
                f"reseller{depth}",
                "--upstream-user",
                "bot",
            ]
            env["RHAAS_UPSTREAM_PASSWORD"] = "botpw"
        server = Server(f"sqlite:///{tmp}/l{depth}.sqlite3", tmp / f"l{depth}.log", *args, env=env).start()
        admin = server.client("admin", "adminpw")
        levels.append((server, admin))
        if depth == 1:
            ok(admin.put("/switch/sw0", json={"type": "mock"}))
            for i in range(12):
                obm = {"type": "mock", "host": f"b{i}", "user": "u", "password": "p"}
                ok(admin.put(f"/node/n{i:02d}", json={"obm": obm}))
                ok(admin.put(f"/node/n{i:02d}/nic/eth0", json={"macaddr": f"52:54:00:00:00:{i:02x}"}))
                ok(admin.put(f"/switch/sw0/port/gi1/0/{i}"))
                ok(
                    admin.post(
                        f"/switch/sw0/port/gi1/0/{i}/connect_nic", json={"node": f"n{i:02d}", "nic": "eth0"}
                    )
                )
        else:
            ok(admin.post("/pool/grow", json={"count": 8 if depth == 2 else 4}))
        for project in (f"reseller{depth + 1}", f"bench{depth}"):
            ok(admin.put(f"/project/{project}"))
        for user, project in (("bot", f"reseller{depth + 1}"), ("user", f"bench{depth}")):
            ok(admin.put(f"/auth/basic/user/{user}", json={"password": f"{user}pw"}))
            ok(admin.post(f"/auth/basic/user/{user}/add_project", json={"project": project}))
        upstream = server
    return levels


def measure(server: Server, depth: int, rounds: int) -> dict[str, list[float]]:
    user = server.client("user", "userpw")
    free = ok(user.get("/nodes/free"))
    assert isinstance(free, list) and len(free) >= 2, free
    owned, spare = free[0], free[1]
    ok(user.post(f"/project/bench{depth}/connect_node", json={"node": owned}))
    ok(user.put("/network/bnet", json={"owner": f"bench{depth}", "access": f"bench{depth}", "net_id": ""}))

    def connect_round_trip(i: int) -> None:
        verb = "connect_network" if i % 2 == 0 else "detach_network"
        sid = ok(user.post(f"/node/{owned}/nic/eth0/{verb}", json={"network": "bnet"}), 202)["status_id"]  # type: ignore[index]
        wait_done(user, sid)

    def claim_release(i: int) -> None:
        ok(user.post(f"/project/bench{depth}/connect_node", json={"node": spare}))
        ok(user.post(f"/project/bench{depth}/detach_node", json={"node": spare}))

    user.get(f"/node/{owned}")  # warm the password cache
    results = {
        "show node": timed(rounds, lambda i: ok(user.get(f"/node/{owned}"))),
        "list free nodes": timed(rounds, lambda i: ok(user.get("/nodes/free"))),
        "connect_node + detach_node": timed(rounds, claim_release),
        "connect_network -> DONE": timed(max(rounds // 2, 10) // 2 * 2, connect_round_trip),
    }
    user.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rhaas-bench-") as tmp:
        levels = setup(Path(tmp))
        try:
            by_depth = {
                depth: measure(server, depth, args.rounds) for depth, (server, _) in enumerate(levels, 1)
            }
        finally:
            for server, admin in reversed(levels):
                admin.close()
                server.stop()
    table = {
        op: {
            depth: {"p50_ms": round(statistics.median(s), 2), "p99_ms": round(p(s, 0.99), 2)}
            for depth, s in r.items()
        }
        for op, r in {op: {d: by_depth[d][op] for d in by_depth} for op in by_depth[1]}.items()
    }
    if args.json:
        print(json.dumps(table))
        return
    print(f"{'operation':<28}" + "".join(f"{'depth ' + str(d) + ' p50/p99 ms':>24}" for d in (1, 2, 3)))
    for op, per_depth in table.items():
        cells = "".join(
            f"{per_depth[d]['p50_ms']:>13.1f} / {per_depth[d]['p99_ms']:<8.1f}" for d in (1, 2, 3)
        )
        print(f"{op:<28}{cells}")
    print("added per level, p50 (depth 1→2 / 2→3):")
    for op, d in table.items():
        print(
            f"  {op:<28} {d[2]['p50_ms'] - d[1]['p50_ms']:+7.1f} / {d[3]['p50_ms'] - d[2]['p50_ms']:+7.1f} ms"
        )


if __name__ == "__main__":
    main()
