"""``rhaas node provision``, ``rhaas node provisioning``, ``rhaas node fpbl enroll``,
``rhaas provision-job show`` and ``rhaas provision-group show``: fast provisioning from the command line
(rhaas extension)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from rhaas.cli.common import emit, json_option, pass_client
from rhaas.cli.table import fields, table
from rhaas.client import Client

ENDED = ("DONE", "ERROR")


def _progress(job: dict[str, Any]) -> str:
    """One line for a job: its last phase, with bytes done if the agent reported them."""
    if job["status"] in ENDED:
        took = ""
        if job["phases"]:
            took = f" in {job['phases'][-1]['at'] - job['phases'][0]['at']:.1f} s"
        end = job["error"] if job["status"] == "ERROR" else f"{job['path']} path{took}"
        return f"{job['status']} ({end})"
    if not job["phases"]:
        return f"{job['status']}: waiting for the node's agent"
    last = job["phases"][-1]
    line = f"{last['phase']} {last['state']}"
    done = last.get("progress")
    if done and done.get("total"):
        share = done["done"] / done["total"]
        bar = "#" * int(share * 20)
        line += f" [{bar:<20}] {share:4.0%} of {done['total'] / 1e6:.1f} MB"
    return line


def wait_jobs(
    client: Client, jobs: dict[str, str], timeout: float, as_json: bool
) -> dict[str, dict[str, Any]]:
    """Poll ``jobs`` (node -> job id) until each has ended, printing each node's progress as it changes."""
    deadline = time.monotonic() + timeout
    shown: dict[str, str] = {}
    final: dict[str, dict[str, Any]] = {}
    while len(final) < len(jobs):
        for node, job_id in jobs.items():
            if node in final:
                continue
            job = client.node.show_provision_job(job_id)
            line = _progress(job)
            if not as_json and shown.get(node) != line:
                click.echo(f"{node}: {line}", err=True)
                shown[node] = line
            if job["status"] in ENDED:
                final[node] = job
        if len(final) == len(jobs):
            break
        if time.monotonic() > deadline:
            waiting = ", ".join(sorted(set(jobs) - set(final)))
            raise click.ClickException(f"timed out after {timeout:g} s waiting for {waiting}")
        time.sleep(0.5)
    return final


@click.command("provision")
@click.argument("nodes", nargs=-1, required=True)
@click.option("--image", required=True, help="The image to deploy (rhaas image list).")
@click.option("--ssh-key", "ssh_keys", multiple=True, type=click.Path(dir_okay=False),
              help="A public key file for the image's default user (repeatable; cloud-init).")  # fmt: skip
@click.option("--user-data", type=click.Path(dir_okay=False), help="cloud-init user-data for the first boot.")
@click.option("--network-config", type=click.Path(dir_okay=False),
              help="cloud-init network configuration (default: DHCP on the connected NIC).")  # fmt: skip
@click.option("--kernel", help="Boot this kernel (a path in a whole-disk image), not the image's default.")
@click.option("--initrd", help="Boot this initrd (a path in a whole-disk image), not the image's default.")
@click.option("--cmdline", help="Boot with this kernel command line, not the image's default entry's.")
@click.option("--wait", is_flag=True, help="Show the fleet's progress until every node's OS runs.")
@click.option("--timeout", type=click.FloatRange(min=0), default=900.0, show_default=True)
@json_option
@pass_client
def provision(
    client: Client, nodes: tuple[str, ...], image: str, ssh_keys: tuple[str, ...],
    user_data: str | None, network_config: str | None, kernel: str | None, initrd: str | None,
    cmdline: str | None, wait: bool, timeout: float, as_json: bool,
) -> None:  # fmt: skip
    """Deploy IMAGE on ready NODES of your project, all in parallel (kexec: no firmware reboot), as one
    provision group: if any node cannot be provisioned, none is. A node that runs an OS already is
    rebuilt: returned (NMI, wiped) and deployed again, in this one request. A whole-disk image boots its
    own default entry, with the SSH keys, user-data and network configuration given here handed to
    cloud-init; each node's hostname is its name. --wait shows the fleet's progress (done, in flight,
    failed, queued, the slowest nodes) and ends with a summary; --json prints the group."""
    keys = [line.strip() for path in ssh_keys for line in _read(path).splitlines() if line.strip()]
    seed = {
        "ssh_keys": keys or None, "user_data": _read(user_data) if user_data else None,
        "network_config": _read(network_config) if network_config else None, "kernel": kernel,
        "initrd": initrd, "cmdline": cmdline,
    }  # fmt: skip
    started = client.node.provision_group(nodes, image, **seed)
    group = started["group_id"]
    if not wait:
        if as_json:
            emit(client.node.show_provision_group(group), True, str)
            return
        click.echo(f"group {group}")
        click.echo(table(["node", "job"], sorted(started["jobs"].items())))
        return
    final = wait_group(client, group, timeout, as_json)
    emit(final, as_json, render_group)
    failed = [m["node"] for m in final["jobs"] if m["status"] != "DONE"]
    if failed:
        raise click.ClickException(f"not provisioned: {', '.join(failed)}")


def _member_line(member: dict[str, Any]) -> str:
    """A node of a group, briefly: its last phase (with its share done, if reported), the time in it and
    the time since the request."""
    phase = member["phase"] or member["status"].lower()
    if member["phase"] and member["phase_state"] != "done":
        phase += f" {member['phase_state']}"
    done = member.get("progress")
    if done and done.get("total"):
        phase += f" {done['done'] / done['total']:.0%}"
    took = f"{member['elapsed']:.0f}s"
    if member["phase"] and member.get("in_phase") is not None:
        took = f"{member['in_phase']:.0f}s of {took}"
    return f"{member['node']} {phase} {took}"


def group_line(group: dict[str, Any]) -> str:
    """One line for a group's progress: its counts, then the nodes still at work that are the slowest."""
    counts = group["counts"]
    line = (
        f"{counts['done']}/{group['nodes']} done, {counts['in_flight']} in flight, "
        f"{counts['failed']} failed, {counts['queued']} queued"
    )
    if group["status"] == "RUNNING" and group["slowest"]:
        line += "; slowest: " + ", ".join(_member_line(m) for m in group["slowest"][:3])
    return line


#: Seconds between progress lines while waiting, when stderr is not a terminal and nothing changed.
QUIET_LINE_EVERY = 15.0


def on_terminal() -> bool:
    """Whether progress goes to a terminal (then one line is rewritten in place)."""
    return bool(sys.stderr.isatty())


def wait_group(client: Client, group: str, timeout: float, as_json: bool) -> dict[str, Any]:
    """Poll a provision group until every deploy has ended; returns its last view. Shows the fleet's
    progress on stderr: one line rewritten in place on a terminal; otherwise a line whenever the counts
    change, and every QUIET_LINE_EVERY seconds."""
    tty = on_terminal()
    deadline = time.monotonic() + timeout
    last_counts: dict[str, int] | None = None
    last_at = 0.0
    width = 0
    while True:
        shown = client.node.show_provision_group(group)
        now = time.monotonic()
        if not as_json:
            line = group_line(shown)
            if tty:
                click.echo("\r" + line.ljust(width), nl=False, err=True)
                width = max(width, len(line))
            elif shown["counts"] != last_counts or now - last_at >= QUIET_LINE_EVERY:
                click.echo(line, err=True)
                last_counts, last_at = shown["counts"], now
        if shown["status"] != "RUNNING":
            if tty and not as_json:
                click.echo(err=True)
            return dict(shown)
        if now > deadline:
            if tty and not as_json:
                click.echo(err=True)
            waiting = ", ".join(m["node"] for m in shown["jobs"] if m["status"] not in ENDED)
            raise click.ClickException(f"timed out after {timeout:g} s waiting for {waiting}")
        time.sleep(1.0 if tty else 2.0)


def render_group(group: dict[str, Any]) -> str:
    """A group's summary: its counts and how long the slowest node took, then every node."""
    took = max((m["elapsed"] for m in group["jobs"]), default=0.0)
    head = f"group {group['id']}: {group_line(group)}; in {took:.1f} s"
    rows = [[m["node"], m["status"], m["path"], f"{m['elapsed']:.1f} s", m["error"] or ""]
            for m in group["jobs"]]  # fmt: skip
    return head + "\n\n" + table(["node", "status", "path", "took", "error"], rows)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}") from None


def _render_provisioning(data: dict[str, Any]) -> str:
    head = fields([("node", data["node"]), ("state", data["state"]), ("checked in", data["checked_in_at"]),
                   ("memory", f"{data['facts'].get('memory_kb', 0) // 1024} MB")])  # fmt: skip
    rows = []
    for job in data["jobs"]:
        took = job["phases"][-1]["at"] - job["phases"][0]["at"] if len(job["phases"]) > 1 else 0.0
        rows.append(
            [job["id"][:8], job["kind"], job["image"] or "-", job["status"], job["path"], f"{took:.1f} s"]
        )
    return head + "\n\n" + table(["job", "kind", "image", "status", "path", "took"], rows, empty="(no jobs)")


@click.command("provisioning")
@click.argument("node")
@json_option
@pass_client
def provisioning(client: Client, node: str, as_json: bool) -> None:
    """Show NODE's provisioning state and its history of deploys and returns."""
    emit(client.node.provisioning(node), as_json, _render_provisioning)


@click.group("fpbl")
def fpbl() -> None:
    """The node's fast provisioning boot loader (admin)."""


@fpbl.command("enroll")
@click.argument("node")
@click.option("--agent-url", default=None, help="Where the node's agent reaches this instance.")
@json_option
@pass_client
def fpbl_enroll(client: Client, node: str, agent_url: str | None, as_json: bool) -> None:
    """Enrol free NODE for fast provisioning; prints the words for its FPBL kernel command line."""
    emit(client.node.enroll_fpbl(node, agent_url), as_json, lambda d: d["cmdline"])


@click.group("provision-job")
def provision_job() -> None:
    """Provision and return jobs."""


@provision_job.command("show")
@click.argument("job")
@json_option
@pass_client
def job_show(client: Client, job: str, as_json: bool) -> None:
    """Show a job and every phase its node's agent reported."""

    def render(data: dict[str, Any]) -> str:
        head = fields([(k, data[k]) for k in ("id", "node", "kind", "image", "status", "path", "error")])
        rows = [[p["phase"], p["state"], f"{p['at'] - data['phases'][0]['at']:+.1f} s", p.get("detail", "")]
                for p in data["phases"]]  # fmt: skip
        return head + "\n\n" + table(["phase", "state", "at", "detail"], rows, empty="(no phases yet)")

    emit(client.node.show_provision_job(job), as_json, render)


@click.group("provision-group")
def provision_group() -> None:
    """Provision groups: the deploys of one ``rhaas node provision`` request."""


@provision_group.command("show")
@click.argument("group")
@json_option
@pass_client
def group_show(client: Client, group: str, as_json: bool) -> None:
    """Show a group's progress: how many nodes are done, in flight, failed and queued, and every node."""
    emit(client.node.show_provision_group(group), as_json, render_group)
