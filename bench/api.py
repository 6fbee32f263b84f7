"""API latency and throughput of a base instance with many nodes (mock switch, mock BMCs, database auth).

    .venv/bin/python bench/api.py                       # 10,000 nodes on SQLite
    .venv/bin/python bench/api.py --database postgresql://postgres@127.0.0.1:5432/test --nodes 10000

Starts a real ``rhaas-admin serve`` on loopback, registers the nodes through the API, then measures
list free nodes, show node, connect_node+detach_node, and connect_network → DONE. Prints p50/p99 and
requests/s for each. With ``--database`` on PostgreSQL it works in a fresh database it creates and drops.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from benchdb import database  # bench/ is on sys.path: this file runs as a script

from rhaas.lab.servers import Server


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(name: str, n: int, call: Callable[[int], object]) -> dict[str, float | str | int]:
    samples = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - t0) * 1000)
    total = time.perf_counter() - start
    return {
        "operation": name,
        "n": n,
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(percentile(samples, 0.99), 2),
        "req_per_s": round(n / total, 1),
    }


def check(response: httpx.Response, *codes: int) -> httpx.Response:
    if response.status_code not in (codes or (200,)):
        raise SystemExit(
            f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
        )
    return response


def populate(server: Server, nodes: int) -> float:
    with server.client("admin", "adminpw") as admin:
        check(admin.put("/project/bench"))
        check(admin.put("/switch/sw0", json={"type": "mock"}))
    start = time.perf_counter()

    def register(chunk: range) -> None:
        with server.client("admin", "adminpw") as c:
            for i in chunk:
                obm = {"type": "mock", "host": f"bmc{i}", "user": "u", "password": "p"}
                check(c.put(f"/node/node{i:05d}", json={"obm": obm}))
                if i < 100:  # the nodes used for networking
                    check(
                        c.put(
                            f"/node/node{i:05d}/nic/eth0",
                            json={"macaddr": f"52:54:00:00:{i // 256:02x}:{i % 256:02x}"},
                        )
                    )
                    check(c.put(f"/switch/sw0/port/gi1/0/{i}"))
                    nic = {"node": f"node{i:05d}", "nic": "eth0"}
                    check(c.post(f"/switch/sw0/port/gi1/0/{i}/connect_nic", json=nic))

    workers = 4
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(register, [range(w, nodes, workers) for w in range(workers)]))
    return time.perf_counter() - start


def run(server: Server, nodes: int, rounds: int) -> list[dict[str, float | str | int]]:
    results = []
    with server.client("admin", "adminpw") as c:
        c.get("/nodes/free")  # warm the password cache and connections
        results.append(measure(f"list free nodes ({nodes})", rounds, lambda i: check(c.get("/nodes/free"))))
        results.append(
            measure("show node", rounds * 5, lambda i: check(c.get(f"/node/node{(i * 7919) % nodes:05d}")))
        )

        def claim_release(i: int) -> None:
            node = f"node{(i % (nodes - 100)) + 100:05d}"
            check(c.post("/project/bench/connect_node", json={"node": node}))
            check(c.post("/project/bench/detach_node", json={"node": node}))

        results.append(measure("connect_node + detach_node", rounds, claim_release))

        check(c.put("/network/benchnet", json={"owner": "bench", "access": "bench", "net_id": ""}))
        for i in range(100):
            check(c.post("/project/bench/connect_node", json={"node": f"node{i:05d}"}))

        def round_trip(i: int) -> None:
            node = f"node{i % 100:05d}"
            verb = "connect_network" if (i // 100) % 2 == 0 else "detach_network"
            sid = check(c.post(f"/node/{node}/nic/eth0/{verb}", json={"network": "benchnet"}), 202).json()
            deadline = time.monotonic() + 30
            while True:
                status = check(c.get(f"/networking_action/{sid['status_id']}")).json()["status"]
                if status != "PENDING":
                    if status != "DONE":
                        raise SystemExit(f"action ended {status}")
                    return
                if time.monotonic() > deadline:
                    raise SystemExit("networking action did not finish in 30 s")
                time.sleep(0.002)

        results.append(measure("connect_network -> DONE", min(rounds, 200), round_trip))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--database", help="PostgreSQL server URL (a fresh database is made on it)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rhaas-bench-") as tmp, database(args.database, Path(tmp)) as url:
        server = Server(url, Path(tmp) / "server.log", "--vlans", "100-999").start()
        try:
            setup = populate(server, args.nodes)
            results = run(server, args.nodes, args.rounds)
        finally:
            server.stop()
    backend = "postgresql" if args.database else "sqlite"
    if args.json:
        print(json.dumps({"database": backend, "nodes": args.nodes, "register_s": setup, "results": results}))
        return
    print(f"database: {backend}; registered {args.nodes} nodes through the API in {setup:.1f} s")
    print(f"{'operation':<32} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for r in results:
        print(f"{r['operation']:<32} {r['n']:>5} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['req_per_s']:>8}")


if __name__ == "__main__":
    main()
