"""A fleet-sized provision request and its progress view, on a real server with many ready nodes.

    .venv/bin/python bench/provision_group.py                        # 500 nodes on SQLite
    .venv/bin/python bench/provision_group.py --database postgresql://postgres@127.0.0.1:5432/test

Starts a real ``rhaas-admin serve`` (fast provisioning on, its agents' listener on loopback), registers
``--nodes`` nodes with mock BMCs, enrols each, checks its agent in over the agents' TLS listener (as an
FPBL would) and gives them all to one project with a kernel + initrd image. Then measures, as the
project's member: ``POST /provision_group`` of every node (one request, one transaction), and
``GET /provision_group/<id>`` while all are queued and again once half the agents have taken their
deploy and reported a phase (p50 / p99 over ``--reads`` reads). With ``--database`` on PostgreSQL it
works in a fresh database it creates and drops.
"""

from __future__ import annotations

import argparse
import hashlib
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

USER, PASSWORD, PROJECT = "tenant", "tenantpw", "fleet"


def check(response: httpx.Response, *codes: int) -> httpx.Response:
    if response.status_code not in (codes or (200,)):
        raise SystemExit(
            f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
        )
    return response


def reads(name: str, n: int, call: Callable[[], object]) -> dict[str, float | str | int]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    ordered = sorted(samples)
    return {
        "operation": name,
        "n": n,
        "p50_ms": round(statistics.median(samples), 1),
        "p99_ms": round(ordered[min(n - 1, int(0.99 * n))], 1),
    }


def populate(server: Server, nodes: int) -> tuple[dict[str, str], float]:
    """The nodes, ready in the project; their agents' secrets."""
    with server.client("admin", "adminpw") as admin:
        check(admin.put(f"/project/{PROJECT}"))
        check(admin.put(f"/auth/basic/user/{USER}", json={"password": PASSWORD}))
        check(admin.post(f"/auth/basic/user/{USER}/add_project", json={"project": PROJECT}))
    secrets: dict[str, str] = {}
    start = time.perf_counter()

    def ready(chunk: range) -> None:
        with (
            server.client("admin", "adminpw") as c,
            server.client(USER, PASSWORD) as member,
            httpx.Client(base_url=server.agent_url + "/agent/v1/nodes", verify=False, timeout=30) as agent,
        ):
            for i in chunk:
                node = f"node{i:05d}"
                obm = {"type": "mock", "host": f"bmc{i}", "user": "u", "password": "p"}
                check(c.put(f"/node/{node}", json={"obm": obm}))
                mac = f"52:54:00:{i // 65536:02x}:{i // 256 % 256:02x}:{i % 256:02x}"
                check(c.put(f"/node/{node}/nic/eth0", json={"macaddr": mac}))
                cmdline = check(c.put(f"/node/{node}/fpbl", json={})).json()["cmdline"]
                secret = dict(w.split("=", 1) for w in cmdline.split())["rhaas.secret"]
                body = {"mode": "ready", "boot_id": "b1"}
                headers = {"Authorization": f"Bearer {secret}"}
                check(agent.post(f"/{node}/checkin", json=body, headers=headers))
                check(member.post(f"/project/{PROJECT}/connect_node", json={"node": node}))
                secrets[node] = secret

    workers = 4
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(ready, [range(w, nodes, workers) for w in range(workers)]))
    return secrets, time.perf_counter() - start


def run(server: Server, secrets: dict[str, str], n_reads: int) -> list[dict[str, float | str | int]]:
    results: list[dict[str, float | str | int]] = []
    with server.client(USER, PASSWORD) as member:
        for data in (b"kernel", b"initrd"):
            check(member.put(f"/blob/{hashlib.sha256(data).hexdigest()}", content=data))
        body = {"project": PROJECT, "kernel": hashlib.sha256(b"kernel").hexdigest(),
                "initrd": hashlib.sha256(b"initrd").hexdigest()}  # fmt: skip
        check(member.put("/image/os", json=body))
        nodes = sorted(secrets)
        t0 = time.perf_counter()
        group = check(member.post("/provision_group", json={"nodes": nodes, "image": "os"}), 202).json()
        took = (time.perf_counter() - t0) * 1000
        results.append({"operation": f"POST /provision_group ({len(nodes)} nodes)", "n": 1,
                        "p50_ms": round(took, 1), "p99_ms": round(took, 1)})  # fmt: skip
        path = f"/provision_group/{group['group_id']}"
        results.append(reads("GET group, all queued", n_reads, lambda: check(member.get(path))))

        def deploy(chunk: list[str]) -> None:
            with httpx.Client(base_url=server.agent_url + "/agent/v1/nodes", verify=False, timeout=30) as a:
                for node in chunk:
                    item = check(a.get(f"/{node}/work", headers={"Authorization": f"Bearer {secrets[node]}"}))
                    headers = {"Authorization": f"Bearer {item.json()['secret']}"}
                    report = {"job": item.json()["job"], "phase": "download-kernel", "state": "start",
                              "at": time.time()}  # fmt: skip
                    check(a.post(f"/{node}/report", json=report, headers=headers))

        half = nodes[: len(nodes) // 2]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(deploy, [half[w::4] for w in range(4)]))
        shown = check(member.get(path)).json()
        assert shown["counts"]["in_flight"] == len(half), shown["counts"]
        results.append(reads("GET group, half in flight", n_reads, lambda: check(member.get(path))))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--database", help="PostgreSQL server URL (a fresh database is made on it)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rhaas-bench-") as tmp, database(args.database, Path(tmp)) as url:
        server = Server(url, Path(tmp) / "server.log")
        config = Path(tmp) / "provisioning.toml"
        config.write_text(
            f'[provisioning]\nenabled = true\nagent_listen = "{server.agent_listen}"\n'
            f'agent_url = "{server.agent_url}"\n'
        )
        server.args += ("--config", str(config))
        server.start()
        try:
            secrets, setup = populate(server, args.nodes)
            results = run(server, secrets, args.reads)
        finally:
            server.stop()
    backend = "postgresql" if args.database else "sqlite"
    if args.json:
        print(json.dumps({"database": backend, "nodes": args.nodes, "setup_s": setup, "results": results}))
        return
    print(f"database: {backend}; {args.nodes} nodes registered, enrolled and ready in {setup:.1f} s")
    print(f"{'operation':<40} {'n':>4} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        print(f"{r['operation']:<40} {r['n']:>4} {r['p50_ms']:>8} {r['p99_ms']:>8}")


if __name__ == "__main__":
    main()
