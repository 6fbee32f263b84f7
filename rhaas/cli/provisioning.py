"""``rhaas node provision``, ``rhaas node provisioning``, ``rhaas node fpbl enroll`` and
``rhaas provision-job show``: fast provisioning from the command line (rhaas extension)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from rhaas.cli.common import emit, json_option, pass_client
from rhaas.cli.table import fields, table
from rhaas.client import Client
from rhaas.errors import RhaasError

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
@click.option("--wait", is_flag=True, help="Show each node's progress until its OS runs.")
@click.option("--timeout", type=click.FloatRange(min=0), default=900.0, show_default=True)
@json_option
@pass_client
def provision(
    client: Client, nodes: tuple[str, ...], image: str, ssh_keys: tuple[str, ...],
    user_data: str | None, network_config: str | None, kernel: str | None, initrd: str | None,
    cmdline: str | None, wait: bool, timeout: float, as_json: bool,
) -> None:  # fmt: skip
    """Deploy IMAGE on ready NODES of your project, all in parallel (kexec: no firmware reboot). A node
    that runs an OS already is rebuilt: returned (NMI, wiped) and deployed again, in this one request. A
    whole-disk image boots its own default entry, with the SSH keys, user-data and network configuration
    given here handed to cloud-init; each node's hostname is its name."""
    keys = [line.strip() for path in ssh_keys for line in _read(path).splitlines() if line.strip()]
    seed = {
        "ssh_keys": keys or None, "user_data": _read(user_data) if user_data else None,
        "network_config": _read(network_config) if network_config else None, "kernel": kernel,
        "initrd": initrd, "cmdline": cmdline,
    }  # fmt: skip
    jobs: dict[str, str] = {}
    for name in nodes:
        try:
            jobs[name] = client.node.provision(name, image, **seed)
        except RhaasError as exc:
            if not jobs:
                raise
            click.echo(f"{name}: {type(exc).__name__}: {exc.msg}", err=True)
    if not wait:
        emit(jobs, as_json, lambda d: table(["node", "job"], sorted(d.items())))
        return
    final = wait_jobs(client, jobs, timeout, as_json)
    emit(
        final,
        as_json,
        lambda d: table(
            ["node", "status", "path"], [[n, j["status"], j["path"]] for n, j in sorted(d.items())]
        ),
    )
    failed = sorted(n for n, j in final.items() if j["status"] != "DONE")
    if failed or len(jobs) < len(nodes):
        raise click.ClickException(f"not provisioned: {', '.join(failed or sorted(set(nodes) - set(jobs)))}")


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
