"""Fleet image delivery: one whole-disk image to N nodes, from the server alone and with the agents' peer
exchange, over rate-limited links.

    .venv/bin/python bench/fleet.py                              # N = 1, 8, 32, 64; both mechanisms
    .venv/bin/python bench/fleet.py --nodes 1,8 --plain-nodes 1 --size-mib 32 --rate-mbit 20
    .venv/bin/python bench/fleet.py --nodes 3 --mechanisms multicast --slow-node-mbit 5   # repairs

Needs root. Every node is a network namespace holding one end of a veth pair whose other end is a port of
one Linux bridge; the server is one more namespace on the same bridge. Each link is shaped in both
directions with ``tc qdisc ... tbf`` (``--rate-mbit``, 20 Mbit/s by default: the server's link too), with
jumbo frames (``--mtu``, see `MTU`), so the network, not this machine's CPUs, is the bottleneck: each run
prints how busy the machine was. The image is ``--size-mib`` of random data (nothing compresses, every
chunk differs).

What is real: on each node, the agent's own delivery code in a process of its own, as in the FPBL: it asks
the server for work with the agent API client (`rhaas.agent.api`), parses the answer
(`rhaas.agent.extents.parse_image`), and writes the image with `rhaas.agent.extents.write_image` into a
plain file standing for its disk, through the peer exchange (`rhaas.agent.swarm`) or, with ``plain``,
chunk by chunk from the server. The tracker is the server's (`rhaas.core.provisioning.tracker`). What is
not: the server is a small HTTP server (no TLS, no database, no authentication) that answers the three
agent calls the delivery makes (``work``, ``chunks/<sha256>``, ``peers``) from the image in memory; the
nodes do not boot anything afterwards.

Per N and mechanism it prints the completion time of the last node (from the moment all agents are told
to start), the bytes the server sent (and as images), T(N)/T(1), the CPU seconds the agents and the
server used and how busy the whole machine was; and per run what the fleet wrote in each second, the
packets the links' queues dropped, and how the agents' requests to their peers were answered. Every
node's file is checked against the image. Namespaces, veths, the bridge and every process are removed at
the end, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
#: Of every namespace, link and bridge this bench makes (``--prefix``; at most 5 characters).
PREFIX = "rfl"
SERVER_IP = "10.77.0.1"
PORT = 8080
PEER_PORT = 7070
SUBNET = 16
#: How long a link's queue may be, in milliseconds at its rate (``--queue-ms``).
QUEUE_MS = 100
#: Of every link (``--mtu``): jumbo frames, as provisioning networks often use. This machine does the
#: networking of every host of the bench in its kernel: at 1500 bytes and N = 64 that took more than
#: half its CPU time and left it 99 % busy, so the CPU, not the links, set the pace.
MTU = 9000
#: Bytes each link's token bucket holds (``--burst``): one whole segmentation-offload packet (64 KiB) and
#: a frame. With less, ``tbf`` cuts every such packet into frames in software, at a cost in CPU.
BURST = 70_000
#: TCP congestion control on every host of the bench (``--congestion``): an FPBL runs Debian's kernel,
#: whose default is cubic; this machine's may differ (BBR here: it does not back off on loss, and 8 of
#: its flows into one tail-drop queue of jumbo frames starved some of them past the agent's timeout).
CONGESTION = "cubic"
#: With ``multicast``: the rate the group is sent at, as a share of the links' (``--multicast-share``; the
#: server's ``peer_multicast_mbit``). Every node's link carries the group's datagrams at that rate; the
#: rest is room for the peers' repairs, the tracker and bursts, so that the queues do not drop datagrams.
MULTICAST_SHARE = 0.9
RATE_MBIT = 20
#: With ``--slow-node-mbit``: the last node's download link at that rate instead (0: as the others). Below
#: the group's rate, its queue drops datagrams in the kernel, as a node on a slower link would: a test of
#: the repairs (this kernel has no ``netem``, nor the ``gact`` action, to drop packets at random). That
#: node starts `SLOW_START` seconds after the others, so that it is not the one sending to the group (the
#: first to announce itself is): the group would then go at its pace.
SLOW_MBIT = 0
SLOW_START = 1.0
SLOW_NODE = -1  # its index, once the topology is made


def node_ip(i: int) -> str:
    return f"10.77.{1 + i // 200}.{1 + i % 200}"


# --- the topology --------------------------------------------------------------------------------------


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def shape(dev: str, rate_mbit: int, netns: str | None = None) -> None:
    """Egress of ``dev`` limited to ``rate_mbit`` (a token bucket)."""
    where = ["ip", "netns", "exec", netns] if netns else []
    burst = max(BURST, MTU + 100)
    sh(*where, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate_mbit}mbit",
       "burst", f"{burst}", "latency", f"{QUEUE_MS}ms")  # fmt: skip


def cable(netns: str, host_dev: str, address: str, rate_mbit: int, down_mbit: int = 0) -> None:
    """A namespace with ``eth0`` at ``address``, cabled to the bridge by ``host_dev``, shaped both ways
    (its download at ``down_mbit`` if given)."""
    sh("ip", "netns", "add", netns)
    mtu = str(MTU)
    sh("ip", "link", "add", host_dev, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu,
       "netns", netns)  # fmt: skip
    sh("ip", "link", "set", host_dev, "master", f"{PREFIX}-br", "up")
    sh("ip", "-n", netns, "addr", "add", f"{address}/{SUBNET}", "dev", "eth0")
    sh("ip", "-n", netns, "link", "set", "eth0", "up")
    sh("ip", "-n", netns, "link", "set", "lo", "up")
    shape(host_dev, down_mbit or rate_mbit)  # towards the namespace: its download
    shape("eth0", rate_mbit, netns)  # from the namespace: its upload


def teardown() -> None:
    """Remove every namespace, link and bridge of this bench (also what an earlier run left)."""
    for name in sh("ip", "netns", "list", check=False).stdout.split():
        if name.startswith(f"{PREFIX}-"):
            sh("ip", "netns", "delete", name, check=False)  # its veth end goes, and the host's with it
    for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        dev = line.split(":")[1].strip().split("@")[0]
        if dev.startswith(f"{PREFIX}-"):
            sh("ip", "link", "delete", dev, check=False)


@contextlib.contextmanager
def neighbour_room(nodes: int) -> Iterator[None]:
    """Room in the kernel's ARP table for every node to know every other. The table is one for all
    namespaces (1024 entries by default): 65 namespaces that each talk to 64 others need 4160, and past
    the limit the kernel drops packets ("neighbor table overflow"): connections time out at N = 32 and 64
    for a reason a real fleet, one host per node, does not have. Restored afterwards."""
    keys = [f"/proc/sys/net/ipv4/neigh/default/gc_thresh{i}" for i in (1, 2, 3)]
    before = [Path(k).read_text().strip() for k in keys]
    need = 2 * (nodes + 1) ** 2
    try:
        for key, least in zip(keys, (need // 4, need // 2, need), strict=True):
            Path(key).write_text(str(max(least, int(Path(key).read_text()))))
        yield
    finally:
        for key, value in zip(reversed(keys), reversed(before), strict=True):
            Path(key).write_text(value)


@contextlib.contextmanager
def topology(nodes: int, rate_mbit: int) -> Iterator[None]:
    teardown()
    # A namespace starts with the host's default, and may not set another itself: set the host's while
    # the namespaces are made, and put it back at once.
    key = Path("/proc/sys/net/ipv4/tcp_congestion_control")
    before = key.read_text().strip()
    try:
        key.write_text(CONGESTION)
        sh("ip", "link", "add", f"{PREFIX}-br", "mtu", str(MTU), "type", "bridge")
        sh("ip", "link", "set", f"{PREFIX}-br", "type", "bridge", "ageing_time", "30000")
        sh("ip", "link", "set", f"{PREFIX}-br", "up")
        cable(f"{PREFIX}-s", f"{PREFIX}-hs", SERVER_IP, rate_mbit)
        global SLOW_NODE
        SLOW_NODE = nodes - 1 if SLOW_MBIT else -1
        for i in range(nodes):
            slow = SLOW_MBIT if i == SLOW_NODE else 0
            cable(f"{PREFIX}-n{i}", f"{PREFIX}-h{i}", node_ip(i), rate_mbit, slow)
        key.write_text(before)
        yield
    finally:
        key.write_text(before)
        teardown()


# --- processes -----------------------------------------------------------------------------------------


class Proc:
    """A process of this bench in a namespace, read line by line."""

    def __init__(self, netns: str, *args: str) -> None:
        self.netns = netns
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        argv = ["ip", "netns", "exec", netns, sys.executable, str(Path(__file__).resolve()), *args]
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            if line.startswith("RHAAS-AGENT"):  # the agent's log: what went wrong, if anything
                print(f"{self.netns}: {line.strip()}", file=sys.stderr, flush=True)
            with self.cond:
                self.lines.append(line.strip())
                self.cond.notify_all()
        with self.cond:
            self.lines.append("")  # the end
            self.cond.notify_all()

    def line(self, prefix: str, timeout: float) -> str:
        """The first line starting with ``prefix`` (the rest of it); TimeoutError, or RuntimeError if
        the process ended without it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line[len(prefix) :].strip()
                if "" in self.lines:
                    raise RuntimeError(f"{self.netns}: ended (status {self.popen.poll()}) without {prefix}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.netns}: no {prefix} within {timeout:g} s")
                self.cond.wait(left)

    def tell(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def machine_cpu() -> dict[str, float]:
    """The whole machine's CPU seconds so far, by kind (/proc/stat): what the kernel's bridging and
    shaping cost is in ``system`` and ``softirq``, beside the processes'."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:8]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq = (int(f) / tick for f in fields)
    return {"user": user + nice, "system": system + irq, "softirq": softirq, "idle": idle + iowait}


def link_drops(nodes: int) -> tuple[int, int, int]:
    """Packets sent so far by the queues of every link (both directions), and dropped by the queues
    towards the nodes (their downloads) and from them (their uploads), from ``tc -s``."""
    sent = down = up = 0
    devices = [([], f"{PREFIX}-hs"), (["ip", "netns", "exec", f"{PREFIX}-s"], "eth0")]
    for i in range(nodes):
        devices += [([], f"{PREFIX}-h{i}"), (["ip", "netns", "exec", f"{PREFIX}-n{i}"], "eth0")]
    for where, dev in devices:
        out = sh(*where, "tc", "-s", "qdisc", "show", "dev", dev, check=False).stdout.split()
        if "Sent" in out:
            at = out.index("Sent")
            sent += int(out[at + 3])
            if where:
                up += int(out[at + 6].rstrip(","))
            else:
                down += int(out[at + 6].rstrip(","))
    return sent, down, up


def fleet_timeline(timelines: list[list[int]], size: int) -> list[float]:
    """MB the whole fleet wrote in each second from go, from each node's bytes written by each second."""
    seconds = max(len(t) for t in timelines)
    total = [0] * seconds
    for t in timelines:
        held = 0
        for s in range(seconds):
            held = max(held, t[s] if s < len(t) else size)
            total[s] += held
    return [round((b - a) / 1e6, 1) for a, b in zip([0, *total], total, strict=False)]


def one_run(
    mechanism: str, n: int, image: Path, chunk_mib: int, piece_kib: int, work: Path, timeout: float
) -> dict[str, Any]:
    """One fleet delivery; its figures."""
    procs: list[Proc] = []
    try:
        server = Proc(f"{PREFIX}-s", "serve", "--image", str(image), "--chunk-mib", str(chunk_mib),
                      "--piece-kib", str(piece_kib), "--mechanism", mechanism,
                      "--multicast-mbit", str(MULTICAST_SHARE * RATE_MBIT))  # fmt: skip
        procs.append(server)
        server.line("ready", 30)
        agents = []
        for i in range(n):
            disk = work / f"n{i}.img"
            agent = Proc(f"{PREFIX}-n{i}", "agent", "--node", f"n{i}", "--disk", str(disk),
                         "--address", node_ip(i))  # fmt: skip
            procs.append(agent)
            agents.append(agent)
        for agent in agents:
            agent.line("ready", 60)
        drops_before = link_drops(n)
        go = time.time()
        cpu_before = machine_cpu()
        for i, agent in enumerate(agents):
            if i != SLOW_NODE:
                agent.tell(f"go {go}")
        if 0 <= SLOW_NODE < n:
            time.sleep(SLOW_START)  # a late start, on purpose (see SLOW_MBIT): nothing to wait for
            agents[SLOW_NODE].tell(f"go {go}")
        results = [json.loads(agent.line("done", timeout)) for agent in agents]
        cpu = {k: v - cpu_before[k] for k, v in machine_cpu().items()}
        drops = [b - a for a, b in zip(drops_before, link_drops(n), strict=True)]
        checks = [json.loads(agent.line("checked", timeout)) for agent in agents]
        server.stop()
        stats = json.loads(server.line("stats", 10))
    finally:
        for proc in procs:
            proc.stop()
        for i in range(n):
            (work / f"n{i}.img").unlink(missing_ok=True)
    bad = [c["node"] for c in checks if c["sha256"] != stats["sha256"]]
    if bad:
        raise RuntimeError(f"{mechanism} N={n}: {', '.join(bad)} did not get the image")
    return {
        "mechanism": mechanism, "n": n, "last": max(r["done_at"] for r in results) - go,
        "first": min(r["done_at"] for r in results) - go, "server_bytes": stats["sent"],
        "image_bytes": stats["size"], "server_done": stats["last_at"] - go,
        "agent_cpu": sum(c["cpu"] for c in checks),
        "agent_cpu_max": max(c["cpu"] for c in checks), "server_cpu": stats["cpu"],
        "asked": sum(r["asked"] for r in results), "refused": sum(r["refused"] for r in results),
        "busy_answers": sum(r["busy"] for r in results), "cut": sum(r["cut"] for r in results),
        "from_peers": sum(r["from_peers"] for r in results),
        "from_multicast": sum(r["from_multicast"] for r in results),
        "multicast_sent": sum(r["multicast_sent"] for r in results),
        "multicast_lost": sum(r["multicast_lost"] for r in results),
        "dropped": sum(len(r["dropped"]) for r in results),
        "twice": sum(r["twice"] for r in results),
        "times": sorted(round(r["done_at"] - go, 1) for r in results),
        "timeline": fleet_timeline([r["timeline"] for r in results], results[0]["size"]),
        "busy": 1 - cpu["idle"] / sum(cpu.values()), "machine": cpu, "packets": drops,
    }  # fmt: skip


def bench(args: argparse.Namespace) -> int:
    global PREFIX, QUEUE_MS, BURST, MTU, CONGESTION, MULTICAST_SHARE, RATE_MBIT, SLOW_MBIT
    MULTICAST_SHARE, RATE_MBIT, SLOW_MBIT = args.multicast_share, args.rate_mbit, args.slow_node_mbit
    PREFIX, QUEUE_MS, BURST, MTU = args.prefix, args.queue_ms, args.burst, args.mtu
    CONGESTION = args.congestion
    if os.geteuid() != 0:
        print("bench/fleet.py needs root (network namespaces, tc)", file=sys.stderr)
        return 2
    swarm_ns = [int(x) for x in args.nodes.split(",") if x]
    plain_ns = [
        int(x) for x in (args.plain_nodes if args.plain_nodes is not None else args.nodes).split(",") if x
    ]
    runs = [("plain", n) for n in plain_ns if "plain" in args.mechanisms.split(",")]
    runs += [(m, n) for m in ("swarm", "multicast") for n in swarm_ns if m in args.mechanisms.split(",")]
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    image = work / "image.raw"
    with open(image, "wb") as out:
        for _ in range(args.size_mib):
            out.write(os.urandom(1 << 20))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results: list[dict[str, Any]] = []
    try:
        with neighbour_room(max(n for _, n in runs)), topology(max(n for _, n in runs), args.rate_mbit):
            for mechanism, n in runs:
                r = one_run(mechanism, n, image, args.chunk_mib, args.piece_kib, work, args.timeout)
                results.append(r)
                print(
                    f"# {mechanism} N={n}: last node {r['last']:.1f} s, server sent "
                    f"{r['server_bytes'] / r['image_bytes']:.2f} images "
                    f"(the last at {r['server_done']:.0f} s); nodes done at {r['times']}; the fleet wrote "
                    f"MB/s {r['timeline']}; machine {r['busy']:.0%} busy (CPU s: "
                    + ", ".join(f"{k} {v:.0f}" for k, v in r["machine"].items() if k != "idle")
                    + f"); links sent {r['packets'][0]} packets, dropped {r['packets'][1]} towards the "
                    f"nodes, {r['packets'][2]} from them; peers asked {r['asked']} times: "
                    f"{r['refused']} had none, {r['busy_answers']} busy, {r['cut']} cut off; multicast sent "
                    f"{r['multicast_sent'] / 1e6:.1f} MB, {r['from_multicast'] / 1e6:.0f} MB taken from it, "
                    f"{r['multicast_lost']} pieces lost a datagram",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nimage {args.size_mib} MiB of random data in {args.chunk_mib} MiB chunks, exchanged in "
          f"{args.piece_kib} KiB pieces; every link "
          f"{args.rate_mbit} Mbit/s each way (server's too); {os.cpu_count()} CPUs")  # fmt: skip
    head = ("mechanism", "N", "last node s", "T(N)/T(1)", "server MB", "server images", "from peers MB",
            "agents CPU s", "max agent CPU s", "server CPU s", "machine busy", "dropped",
            "received twice MB", "from the group MB", "pieces that lost a datagram")  # fmt: skip
    print(" | ".join(head))
    base = {
        m: next((r["last"] for r in results if r["mechanism"] == m and r["n"] == 1), None)
        for m in ("plain", "swarm", "multicast")
    }
    for r in results:
        one = base[r["mechanism"]]
        ratio = f"{r['last'] / one:.2f}" if one else "-"
        print(" | ".join((
            r["mechanism"], str(r["n"]), f"{r['last']:.1f}", ratio, f"{r['server_bytes'] / 1e6:.1f}",
            f"{r['server_bytes'] / r['image_bytes']:.2f}", f"{r['from_peers'] / 1e6:.0f}",
            f"{r['agent_cpu']:.1f}", f"{r['agent_cpu_max']:.2f}", f"{r['server_cpu']:.1f}",
            f"{r['busy']:.0%}", str(r["dropped"]),
            f"{r['twice'] / 1e6:.1f}", f"{r['from_multicast'] / 1e6:.0f}", str(r["multicast_lost"]),
        )))  # fmt: skip
    return 0


# --- inside the namespaces -------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    """The server's side: the agent calls a delivery makes, from the image in memory; prints ``ready``,
    and ``stats {...}`` on SIGTERM."""
    from rhaas.core.provisioning.tracker import Tracker

    data = Path(args.image).read_bytes()
    size = args.chunk_mib << 20
    piece_size = args.piece_kib << 10
    chunks = {}
    extents = []
    layout = []  # pieces per chunk
    for offset in range(0, len(data), size):
        chunk = data[offset : offset + size]
        digest = hashlib.sha256(chunk).hexdigest()
        chunks[digest] = chunk
        pieces = [
            hashlib.sha256(chunk[at : at + piece_size]).hexdigest() for at in range(0, len(chunk), piece_size)
        ]
        extents.append({"offset": offset, "length": len(chunk), "sha256": digest, "pieces": pieces})
        layout.append(len(pieces))
    image: dict[str, Any] = {"virtual_size": len(data), "zeroed": True, "chunk_url": "chunks/{sha256}",
                             "extents": extents}  # fmt: skip
    if args.mechanism != "plain":
        image["peers"] = {"url": "peers", "port": PEER_PORT, "piece_size": piece_size}
    tracker = Tracker()
    sent = [0]
    last = [0.0]  # when the server last finished sending a chunk
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def do_GET(self) -> None:
            parts = self.path.split("/")  # /agent/v1/nodes/<node>/...
            if parts[-1].startswith("work"):
                peers = {"url": f"{'/'.join(parts[:-1])}/peers", "port": PEER_PORT, "piece_size": piece_size}
                mine = dict(image, peers=peers)
                answer = {"action": "deploy", "job": "j", "image": mine if "peers" in image else image}
                self._reply(200, json.dumps(answer).encode())
            elif parts[-2] == "chunks" and parts[-1] in chunks:
                self._reply(200, chunks[parts[-1]], "application/octet-stream")
                with lock:
                    sent[0] += len(chunks[parts[-1]])
                    last[0] = time.time()
            else:
                self._reply(404, b"{}")

        def do_POST(self) -> None:
            parts = self.path.split("/")
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            if parts[-1] != "peers" or args.mechanism == "plain":
                self._reply(404, b"{}")
                return
            dropped = [(d["address"], d["port"]) for d in body.get("dropped", [])]
            address = body.get("address") or self.client_address[0]
            answer = tracker.announce(
                "image",
                lambda: layout,
                parts[-2],
                address,
                body["port"],
                int(body["have"] or "0", 16),
                dropped,
                (PEER_PORT, args.multicast_mbit * 125_000.0) if args.mechanism == "multicast" else None,
            )
            self._reply(200, json.dumps(answer).encode())

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 256
    httpd = ThreadingHTTPServer((SERVER_IP, PORT), Handler)

    def stop(*_: object) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        stats = {"sent": sent[0], "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                 "cpu": usage.ru_utime + usage.ru_stime, "last_at": last[0]}  # fmt: skip
        print(f"stats {json.dumps(stats)}", flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    httpd.serve_forever()
    return 0


def agent(args: argparse.Namespace) -> int:
    """One node: ask for work, wait for ``go``, deliver the image into ``--disk``; prints ``ready``,
    ``done {...}`` (as soon as the image is written) and ``checked {...}`` (once it stopped serving)."""
    from rhaas.agent import extents
    from rhaas.agent.api import Api
    from rhaas.agent.disk import Disk
    from rhaas.agent.settings import Settings
    from rhaas.agent.work import Artifact

    settings = Settings(agent=f"http://{SERVER_IP}:{PORT}", node=args.node, secret="bench")
    api = Api(settings)
    image = extents.parse_image(api.call("GET", "work")["image"])

    def fetch(artifact: Artifact, sink: Any) -> str:
        return api.download(artifact, sink, lambda done, total: None)

    def announce(url: str, have: str, port: int, dropped: list[tuple[str, int]]) -> object:
        body = {"port": port, "have": have, "address": args.address,
                "dropped": [{"address": a, "port": p} for a, p in dropped]}  # fmt: skip
        return api.call_url("POST", url, body, "peers")

    exchange = extents.exchange_for(image, fetch, announce)
    with open(args.disk, "wb") as out:
        out.truncate(image.virtual_size)
    disk = Disk(args.node, args.disk, image.virtual_size)
    print("ready", flush=True)
    stdin: IO[str] = sys.stdin
    line = stdin.readline().split()
    if not line or line[0] != "go":
        return 1
    go = float(line[1])
    timeline = [0] * 600  # bytes written by each second from go

    def progress(done: int, total: int) -> None:
        second = int(time.time() - go)
        if 0 <= second < len(timeline):
            timeline[second] = max(timeline[second], done)

    extents.write_image(image, disk, fetch, progress, exchange)
    done_at = time.time()
    stats = exchange.stats() if exchange is not None else None
    result = {
        "node": args.node, "done_at": done_at,
        "from_server": stats.from_server if stats else image.data_bytes,
        "from_peers": stats.from_peers if stats else 0, "dropped": list(stats.dropped) if stats else [],
        "twice": stats.twice if stats else 0, "asked": stats.asked if stats else 0,
        "refused": stats.refused if stats else 0, "busy": stats.busy if stats else 0,
        "cut": stats.cut if stats else 0, "from_multicast": stats.from_multicast if stats else 0,
        "multicast_sent": stats.multicast_sent if stats else 0,
        "multicast_lost": stats.multicast_lost if stats else 0, "timeline": timeline[: int(done_at - go) + 1],
        "size": image.data_bytes,
    }  # fmt: skip
    print(f"done {json.dumps(result)}", flush=True)
    if exchange is not None:
        exchange.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    digest = hashlib.sha256()
    with open(args.disk, "rb") as written:
        while block := written.read(1 << 20):
            digest.update(block)
    print(f"checked {json.dumps({'node': args.node, 'sha256': digest.hexdigest(), 'cpu': cpu})}", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    parser.add_argument("--nodes", default="1,8,32,64", help="fleet sizes, comma-separated")
    parser.add_argument("--plain-nodes", help="fleet sizes for plain HTTP (default: --nodes)")
    parser.add_argument(
        "--mechanisms", default="plain,swarm,multicast",
        help="of plain, swarm (the peers alone), multicast (to the group, the peers repair)",
    )  # fmt: skip
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--chunk-mib", type=int, default=4)
    parser.add_argument("--piece-kib", type=int, default=256, help="of the pieces the agents exchange")
    parser.add_argument("--rate-mbit", type=int, default=RATE_MBIT)
    parser.add_argument("--multicast-share", type=float, default=MULTICAST_SHARE,
                        help="of the links' rate the multicast group is sent at")  # fmt: skip
    parser.add_argument("--mtu", type=int, default=MTU, help="of every link")
    parser.add_argument("--congestion", default=CONGESTION, help="TCP congestion control of the hosts")
    parser.add_argument("--burst", type=int, default=BURST, help="each link's token bucket, bytes")
    parser.add_argument("--queue-ms", type=int, default=QUEUE_MS, help="each link's queue, in ms at its rate")
    parser.add_argument("--slow-node-mbit", type=int, default=SLOW_MBIT,
                        help="the last node's download at this rate (a test of the repairs)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds a run may take")
    parser.add_argument("--prefix", default=PREFIX, help="of the namespaces and links made (<= 5 chars)")
    s = sub.add_parser("serve")
    s.add_argument("--image", required=True)
    s.add_argument("--chunk-mib", type=int, default=4)
    s.add_argument("--piece-kib", type=int, default=256)
    s.add_argument("--mechanism", choices=("plain", "swarm", "multicast"), required=True)
    s.add_argument("--multicast-mbit", type=float, required=True)
    a = sub.add_parser("agent")
    a.add_argument("--node", required=True)
    a.add_argument("--disk", required=True)
    a.add_argument("--address", required=True)
    args = parser.parse_args()
    if args.role == "serve":
        return serve(args)
    if args.role == "agent":
        return agent(args)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
