"""Networking throughput with 1, 2 and 4 worker processes on one PostgreSQL database, side by side.

    .venv/bin/python bench/scale.py
    .venv/bin/python bench/scale.py --nodes 300 --workers 1,2,4 --delays 0,0.05

For each switch delay (seconds the mock switch takes per port change) a fresh database gets two API
servers (``--no-worker``) and ``--nodes`` nodes with a NIC each on the mock switch. Then, for each worker
count: with no worker running, the clients queue one connect per node (all PENDING), the workers
(``rhaas-admin serve-networks``, separate processes) are started and drain them, and the same again
with one detach per node. actions/s = actions / (last finished_at − first finished_at), read from the
database, so neither client speed nor process start-up counts. The switch's journal is checked to hold
exactly one change per action.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from scaleout import NATIVE, Cluster, Run, Step, drive, fresh_database, node_name, pg_reason  # noqa: E402

from rhaas.db.models import PENDING, NetworkingAction  # noqa: E402
from rhaas.db.session import make_engine, make_sessionmaker  # noqa: E402


def drain_rate(
    cluster: Cluster, workers: int, nodes: list[str], step: Step, clients: int
) -> tuple[int, float]:
    """Queue ``step`` on every node with no worker running, then let ``workers`` drain the queue."""
    sessions = make_sessionmaker(make_engine(cluster.db_url))
    with sessions() as db:
        first_id = db.scalar(select(func.coalesce(func.max(NetworkingAction.id), 0)))
    run = Run()
    drive(cluster.live_urls(), nodes, lambda i: [step], clients, run, wait=False)
    cluster.start_workers(workers)
    deadline = time.monotonic() + 600
    while True:
        with sessions() as db:
            pending = db.scalar(
                select(func.count()).where(NetworkingAction.status == PENDING, NetworkingAction.id > first_id)
            )
        if not pending:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"{pending} actions still PENDING after 600 s")
        time.sleep(0.1)
    cluster.stop_workers()
    with sessions() as db:
        first, last, count = db.execute(
            select(
                func.min(NetworkingAction.finished_at),
                func.max(NetworkingAction.finished_at),
                func.count(),
            ).where(NetworkingAction.id > first_id)
        ).one()
    sessions.kw["bind"].dispose()
    if first is None or last is None:  # no action finished
        return count, 0.0
    return count, (last - first).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--delays", default="0,0.05", help="mock switch seconds per port change")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument("--clients", type=int, default=12)
    args = parser.parse_args()
    reason = pg_reason(args.database)
    if reason:
        raise SystemExit(reason)
    worker_counts = [int(w) for w in args.workers.split(",")]
    delays = [float(d) for d in args.delays.split(",")]
    results: dict[float, dict[int, float]] = {}
    nodes = [node_name(i) for i in range(args.nodes)]
    for delay in delays:
        with tempfile.TemporaryDirectory() as tmp, fresh_database(args.database) as db_url:
            cluster = Cluster(
                db_url, Path(tmp), switch_delay=delay, worker_threads=args.threads, lease_seconds=120
            )
            try:
                cluster.start_servers(2)
                seconds = cluster.populate(args.nodes, ["net0"])
                print(f"delay {delay} s: {args.nodes} nodes registered in {seconds:.1f} s", flush=True)
                results[delay] = {}
                for workers in worker_counts:
                    rates = []
                    for step in (Step("connect_network", "net0", NATIVE), Step("detach_network", "net0")):
                        count, span = drain_rate(cluster, workers, nodes, step, args.clients)
                        rates.append(count / span)
                        print(
                            f"  {workers} worker(s), {step.verb}: {count} actions in {span:.2f} s", flush=True
                        )
                    results[delay][workers] = statistics.mean(rates)
                journal = len(cluster.journal_lines())
                expected = 2 * args.nodes * len(worker_counts)
                assert journal == expected, f"the switch saw {journal} changes for {expected} actions"
            finally:
                cluster.close()
    header = " | ".join(f"{w} worker{'s' if w > 1 else ''}" for w in worker_counts)
    print(f"\n| switch delay | {header} |")
    print("|---|" + "---|" * len(worker_counts))
    for delay, by_workers in results.items():
        cells = " | ".join(f"{by_workers[w]:.0f}" for w in worker_counts)
        print(f"| {delay * 1000:.0f} ms | {cells} |")
    print(f"\nactions/s, {args.nodes} nodes, {args.threads} threads per worker, 2 API servers, PostgreSQL")


if __name__ == "__main__":
    main()
