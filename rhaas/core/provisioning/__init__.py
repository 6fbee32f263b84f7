"""Fast provisioning: the node lifecycle between the FPBL agent, the provisioning API and the BMC.

A node under fast provisioning moves through the states of `rhaas.states` (the one transition table;
nothing else assigns a node's state). Every transition is a committed row: a node's state in
``node_provisioning`` and its jobs in ``provision_job`` (with each phase the agent reported). A node is
free to claim only while it is ``ready`` (or not under fast provisioning at all), so a returned node goes
back to the pool only once its wipe has been verified. A restarted server resumes from the rows.

By job:

- `enrolment`: enrol a node, its agent's secret and return token, authentication, the NIC the FPBL holds.
- `jobs`: deploy and return jobs (open, stamp, finish), their deadlines; `provision`, `start_return`.
- `protocol`: the agent's calls (check-in, work, report, blobs) and the network boot's iPXE script.
- `groups`: fleet-sized requests (one group of deploys, all or nothing) and their aggregated progress.
- `views`: a job, a node's provisioning state and history.
- `clock`: the rules the worker's ticker applies (what is due, claims, what a missed deadline does).

The clock itself (NMIs, power cycles, network boots: the BMC calls) runs in `rhaas.worker.provisioning`;
this package knows nothing of HTTP or BMCs. `rhaas.api.routes.provisioning` and `rhaas.core.projects`
call the names below.
"""

from __future__ import annotations

from rhaas.core.provisioning.enrolment import agent_row, checkin_row, enroll, holds_port
from rhaas.core.provisioning.groups import provision_group, show_group
from rhaas.core.provisioning.jobs import (
    DEPLOY,
    FAST,
    KEXEC,
    READY_PHASE,
    REBOOT,
    RETURN,
    RUNNING,
    UNEXPECTED_RESET,
    WIPE_VERIFIED,
    provision,
    start_return,
)
from rhaas.core.provisioning.protocol import (
    EXIT_SCRIPT,
    MAC_PATTERN,
    boot_script,
    checkin,
    deploy_blobs,
    deploy_chunk,
    peer_announce,
    report,
    work,
)
from rhaas.core.provisioning.views import job_view, show_job, show_node_provisioning
from rhaas.states import BOOTING, DEPLOYED, DEPLOYING, FAILED, READY, RETURNING, STATES

__all__ = [
    "BOOTING",
    "DEPLOY",
    "DEPLOYED",
    "DEPLOYING",
    "EXIT_SCRIPT",
    "FAILED",
    "FAST",
    "KEXEC",
    "MAC_PATTERN",
    "READY",
    "READY_PHASE",
    "REBOOT",
    "RETURN",
    "RETURNING",
    "RUNNING",
    "STATES",
    "UNEXPECTED_RESET",
    "WIPE_VERIFIED",
    "agent_row",
    "boot_script",
    "checkin",
    "checkin_row",
    "deploy_blobs",
    "deploy_chunk",
    "enroll",
    "holds_port",
    "job_view",
    "peer_announce",
    "provision",
    "provision_group",
    "report",
    "show_group",
    "show_job",
    "show_node_provisioning",
    "start_return",
    "work",
]
