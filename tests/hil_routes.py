"""The routes of the HIL double (`hil_double`): HIL master's API rules, one handler per route.

Order of checks as in HIL: path match (HTML 404 / 405), then the arguments against the route's schema
(400 ``ValidationError``), then authentication (401, or 404 for an unknown user name), then the handler.
Headnode routes are left out (a HIL site without libvirt headnodes answers them with errors anyway).
"""

from __future__ import annotations

import json
import time
from typing import Any

from hil_double import (
    _MOCK_PORT,
    _NATIVE,
    METHOD_PAGE,
    MOCK_SWITCH,
    NOT_FOUND_PAGE,
    SERVER_ERROR_PAGE,
    Action,
    ApiError,
    AuthorizationError,
    BadArgumentError,
    BlockedError,
    DuplicateError,
    HilDouble,
    HilState,
    IllegalStateError,
    Network,
    NotFoundError,
    ProjectMismatchError,
    Route,
    Schema,
    ServerError,
    User,
    ValidationError,
    _compile,
    new_status_id,
    obmd_admin,
)
from hil_double import Nic as NicRow
from hil_double import Node as NodeRow

S, B, D, ANY = str, bool, dict, object
Reply = tuple[int, bytes, dict[str, str]]


class HilApi:
    def __init__(self, double: HilDouble) -> None:
        self.double = double
        self.state: HilState = double.state
        self.routes = [Route(m, _compile(p), h, s) for m, p, h, s in _table()]

    def handle(
        self, method: str, path: str, query: list[tuple[str, str]], raw: bytes, creds: tuple[str, str] | None
    ) -> Reply:
        if self.double.delay:
            time.sleep(self.double.delay)  # HIL's per-request password hash
        matches = [(r, m) for r in self.routes if (m := r.regex.match(path))]
        if not matches:
            return 404, NOT_FOUND_PAGE, {}
        chosen = next(((r, m) for r, m in matches if r.method == method), None)
        if chosen is None:
            allowed = ", ".join(sorted({r.method for r, _ in matches} | {"HEAD", "OPTIONS"}))
            return 405, METHOD_PAGE, {"Allow": allowed}
        route, match = chosen
        try:
            args = _validate(method, route.schema, match.groupdict(), query, raw)
            with self.state.lock:
                caller = self._authenticate(creds)
                result = route.handler(self, caller, args)
        except ApiError as exc:
            body = json.dumps({"type": type(exc).__name__, "msg": exc.msg}).encode()
            return exc.status, body, {}
        except ServerError:
            return 500, SERVER_ERROR_PAGE, {}
        if isinstance(result, Redirect):
            return 307, b"", {"Location": result.location}
        status, body = result if isinstance(result, tuple) else (200, result)
        return status, (b"" if body is None else json.dumps(body, sort_keys=True).encode()), {}

    def _authenticate(self, creds: tuple[str, str] | None) -> User:
        if creds is None:
            raise AuthorizationError("Authentication failed. Authentication is required to use this service.")
        user = self.state.users.get(creds[0])
        if user is None:
            raise NotFoundError(f"User {creds[0]} does not exist.")
        if user.password != creds[1]:
            raise AuthorizationError("Authentication failed. Authentication is required to use this service.")
        return user


class Redirect:
    def __init__(self, location: str) -> None:
        self.location = location


def _validate(
    method: str, schema: Schema, path_args: dict[str, str], query: list[tuple[str, str]], raw: bytes
) -> dict[str, Any]:
    given: dict[str, Any] = {}
    if method == "GET":
        if raw:
            raise ValidationError("GET request made with a non-empty request body")
        for key, value in query:
            if key in given:
                raise ValidationError("Parameter specified more than once")
            if value == "":
                raise ValidationError("Empty parameter specified")
            given[key] = value
    elif raw:
        try:
            given = json.loads(raw)
        except ValueError:
            raise ValidationError("The request body is not valid JSON") from None
    invalid = ValidationError("Request arguments are not valid for this request")
    if not isinstance(given, dict):
        raise invalid
    for key, value in path_args.items():
        if key in given:
            raise invalid
        given[key] = value
    for key, value in given.items():
        if key not in schema or not isinstance(value, schema[key][0]):
            raise invalid
    if any(required and key not in given for key, (_t, required) in schema.items()):
        raise invalid
    return given


# -- access -----------------------------------------------------------------------------------------------
def require_admin(user: User) -> None:
    if not user.is_admin:
        raise AuthorizationError("This operation is administrator-only.")


def require_project(user: User, project: str | None) -> None:
    if user.is_admin:
        return
    if project is None or project not in user.projects:
        raise AuthorizationError("You do not have access to the required project.")


def get(table: dict[str, Any], kind: str, name: str) -> Any:
    if name not in table:
        raise NotFoundError(f"{kind} {name} does not exist.")
    return table[name]


def get_project(api: HilApi, name: str) -> str:
    if name not in api.state.projects:
        raise NotFoundError(f"Project {name} does not exist.")
    return name


# -- projects -----------------------------------------------------------------------------------------------
def list_projects(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    return sorted(api.state.projects)


def project_create(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    if a["project"] in api.state.projects:
        raise DuplicateError(f"Project {a['project']} already exists.")
    api.state.projects.add(a["project"])


def project_delete(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    project = get_project(api, a["project"])
    st = api.state
    if any(n.project == project for n in st.nodes.values()):
        raise BlockedError("Project has nodes still")
    if any(n.owner == project for n in st.networks.values()):
        raise BlockedError("Project still has networks")
    if any(project in n.access for n in st.networks.values()):
        raise BlockedError("Project can still access networks")
    st.projects.discard(project)
    for u in st.users.values():
        u.projects.discard(project)


def project_connect_node(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    project = get_project(api, a["project"])
    require_project(user, project)
    node = get(api.state.nodes, "Node", a["node"])
    if node.project is not None:
        raise BlockedError("Node is already owned by a project.")
    node.project = project


def project_detach_node(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    project = get_project(api, a["project"])
    require_project(user, project)
    node = get(api.state.nodes, "Node", a["node"])
    if node.project != project:
        raise NotFoundError("Node not in project")
    if node.token is not None:
        raise BlockedError("Node's obm is enabled.")
    if any(nic.networks for nic in node.nics.values()):
        raise BlockedError("Node attached to a network")
    if any(_pending(api, nic) for nic in node.nics.values()):
        raise BlockedError("Node has pending network actions")
    node.project = None


def project_nodes(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    project = get_project(api, a["project"])
    require_project(user, project)
    return sorted(n.name for n in api.state.nodes.values() if n.project == project)


def project_networks(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    project = get_project(api, a["project"])
    require_project(user, project)
    return sorted(n.label for n in api.state.networks.values() if project in n.access)


# -- nodes --------------------------------------------------------------------------------------------------
def list_nodes(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    free = a["is_free"] == "free"
    return sorted(n.name for n in api.state.nodes.values() if not free or n.project is None)


def node_register(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    obmd = a["obmd"]
    if set(obmd) != {"uri", "admin_token"} or not all(isinstance(v, str) for v in obmd.values()):
        raise ValidationError("Request arguments are not valid for this request")
    if not obmd["uri"].startswith(("http://", "https://")):
        raise ValidationError("Request arguments are not valid for this request")
    if a["node"] in api.state.nodes:
        raise DuplicateError(f"Node {a['node']} already exists.")
    node = NodeRow(a["node"], obmd["uri"].rstrip("/"), obmd["admin_token"])
    node.metadata = {k: json.dumps(v) for k, v in a.get("metadata", {}).items()}
    api.state.nodes[node.name] = node


def node_delete(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    node = get(api.state.nodes, "Node", a["node"])
    if node.project is not None:
        raise BlockedError("Node is in a project")
    if node.nics:
        raise BlockedError("Node has nics")
    del api.state.nodes[node.name]


def show_node(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    node = get(api.state.nodes, "Node", a["node"])
    if node.project is not None:
        require_project(user, node.project)
    nics = []
    for nic in node.nics.values():
        entry: dict[str, Any] = {"label": nic.label, "macaddr": nic.macaddr, "networks": dict(nic.networks)}
        if user.is_admin:
            entry["port"] = nic.port[1] if nic.port else None
            entry["switch"] = nic.port[0] if nic.port else None
        nics.append(entry)
    return {"name": node.name, "project": node.project, "nics": nics, "metadata": dict(node.metadata)}


def nic_register(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    node = get(api.state.nodes, "Node", a["node"])
    if a["nic"] in node.nics:
        raise DuplicateError(f"Nic {a['nic']} already exists.")
    node.nics[a["nic"]] = NicRow(a["nic"], a["macaddr"])


def nic_delete(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    node = get(api.state.nodes, "Node", a["node"])
    nic = get(node.nics, "Nic", a["nic"])
    if node.project is not None:
        raise BlockedError("Node is in a project")
    if nic.port is not None:
        api.state.switches[nic.port[0]][nic.port[1]] = None
    del node.nics[nic.label]


def metadata_set(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    get(api.state.nodes, "Node", a["node"]).metadata[a["label"]] = json.dumps(a["value"])


def metadata_delete(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    node = get(api.state.nodes, "Node", a["node"])
    get(node.metadata, "Metadata", a["label"])
    del node.metadata[a["label"]]


def node_obm(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    node = get(api.state.nodes, "Node", a["node"])
    require_project(user, node.project)
    if a["enabled"]:
        answer = obmd_admin(node, "POST", "token")
        node.token = str(answer["token"]) if answer else None
    else:
        obmd_admin(node, "DELETE", "token")
        node.token = None


def _power(op: str) -> Any:
    def handler(api: HilApi, user: User, a: dict[str, Any]) -> Any:
        node = get(api.state.nodes, "Node", a["node"])
        require_project(user, node.project)
        if node.token is None:
            raise BlockedError("OBM is not enabled")
        return Redirect(f"{node.obmd_uri}/{op}?token={node.token}")

    return handler


# -- networks -----------------------------------------------------------------------------------------------
def list_networks(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    nets = [n for n in api.state.networks.values() if user.is_admin or not n.access]
    return {n.label: {"network_id": n.network_id, "projects": sorted(n.access) or None} for n in nets}


def network_create(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    st, owner, access, net_id = api.state, a["owner"], a["access"], a["net_id"]
    if owner != "admin":
        get_project(api, owner)
        require_project(user, owner)
        if access != owner:
            raise BadArgumentError("Project-owned networks must be accessible by the owner.")
        if net_id != "":
            raise BadArgumentError("Project-owned networks must use network ID allocation")
    else:
        require_admin(user)
        if access != "":
            get_project(api, access)
    if a["network"] in st.networks:
        raise DuplicateError(f"Network {a['network']} already exists.")
    if net_id == "":
        if not st.free_vlans:
            raise ServerError("No more networks")  # HIL's AllocationError: an HTML 500
        net_id, allocated = str(st.free_vlans.pop(0)), True
    else:
        if not net_id.isdigit() or not 1 <= int(net_id) <= 4096:
            raise BadArgumentError("Invalid net_id")
        if any(n.network_id == net_id for n in st.networks.values()):
            raise BlockedError(f"VLAN {net_id} is already in use.")
        allocated = int(net_id) in st.free_vlans
        if allocated:
            st.free_vlans.remove(int(net_id))
    st.networks[a["network"]] = Network(
        a["network"], None if owner == "admin" else owner, [access] if access else [], net_id, allocated
    )


def network_delete(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    st = api.state
    net = get(st.networks, "Network", a["network"])
    require_project(user, net.owner)
    if any(net.label in nic.networks.values() for node in st.nodes.values() for nic in node.nics.values()):
        raise BlockedError("Network still connected to nodes")
    if any(x.new_network == net.label and x.status == "PENDING" for x in st.actions.values()):
        raise BlockedError("Network has pending actions")
    if net.allocated:
        st.free_vlans = sorted([*st.free_vlans, int(net.network_id)])
    del st.networks[net.label]


def show_network(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    st = api.state
    net = get(st.networks, "Network", a["network"])
    if net.access and not any(user.is_admin or p in user.projects for p in net.access):
        raise AuthorizationError("You do not have access to this network.")
    connected: dict[str, list[str]] = {}
    for node in st.nodes.values():
        for nic in node.nics.values():
            if net.label in nic.networks.values() and _sees(user, net.owner, node.project):
                connected.setdefault(node.name, []).append(nic.label)
    return {
        "name": net.label,
        "channels": [_NATIVE, f"vlan/{net.network_id}"],
        "owner": net.owner or "admin",
        "access": list(net.access) or None,
        "connected-nodes": connected,
    }


def _sees(user: User, *projects: str | None) -> bool:
    return user.is_admin or any(p is not None and p in user.projects for p in projects)


def network_attachments(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    st = api.state
    net = get(st.networks, "Network", a["network"])
    project = a.get("project")
    owner_access = _sees(user, net.owner) if net.owner else user.is_admin
    if project is None and not owner_access:
        raise AuthorizationError("Operation requires admin rights or access to network's owning project")
    if project is not None:
        get_project(api, project)
        if not owner_access and not (project in net.access and _sees(user, project)):
            raise AuthorizationError("You do not have access to this project.")
    out = {}
    for node in st.nodes.values():
        for nic in node.nics.values():
            for channel, label in nic.networks.items():
                if label == net.label and (project is None or node.project == project):
                    out[node.name] = {"nic": nic.label, "channel": channel, "project": node.project}
    return out


def network_grant(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    net = get(api.state.networks, "Network", a["network"])
    project = get_project(api, a["project"])
    require_project(user, net.owner)
    if project in net.access:
        raise DuplicateError(f"Network {net.label} is already in project {project}")
    net.access.append(project)


def network_revoke(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    net = get(api.state.networks, "Network", a["network"])
    project = get_project(api, a["project"])
    if not (user.is_admin or _sees(user, net.owner, project)):
        raise AuthorizationError("You are not authorized to remove the specified project from this network.")
    if project not in net.access:
        raise NotFoundError(f"Network {net.label!r} is not in project {project!r}")
    if project == net.owner:
        raise BlockedError(f"Project {project!r} is owner of network {net.label!r}")
    net.access.remove(project)


def _pending(api: HilApi, nic: NicRow) -> bool:
    return nic.action is not None and api.state.actions[nic.action].status == "PENDING"


def _check_pending(api: HilApi, nic: NicRow) -> None:
    """HIL's check_pending_action: refuse while one is PENDING, else forget the finished one."""
    if nic.action is None:
        return
    if _pending(api, nic):
        raise BlockedError("A networking operation is already active on the nic.")
    del api.state.actions[nic.action]
    nic.action = None


def _queue(api: HilApi, node: str, nic: NicRow, kind: str, network: str | None, channel: str) -> str:
    sid = new_status_id()
    api.state.actions[sid] = Action(sid, kind, node, nic.label, network, channel)
    nic.action = sid
    return sid


def connect_network(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    node = get(api.state.nodes, "Node", a["node"])
    nic = get(node.nics, "Nic", a["nic"])
    net = get(api.state.networks, "Network", a["network"])
    if node.project is None:
        raise ProjectMismatchError("Node not in project")
    require_project(user, node.project)
    if nic.port is None:
        raise NotFoundError("No port is connected to given nic.")
    _check_pending(api, nic)
    if net.access and node.project not in net.access:
        raise ProjectMismatchError("Project does not have access to given network.")
    if net.label in nic.networks.values():
        raise BlockedError("The network is already attached to the nic.")
    channel = a.get("channel", _NATIVE)
    if channel in nic.networks:
        raise BlockedError("The channel is already in use on the nic.")
    if channel not in (_NATIVE, f"vlan/{net.network_id}"):
        raise BadArgumentError(f"Channel {channel!r}, is not legal for this network.")
    return 202, {"status_id": _queue(api, node.name, nic, "modify_port", net.label, channel)}


def detach_network(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    node = get(api.state.nodes, "Node", a["node"])
    net = get(api.state.networks, "Network", a["network"])
    nic = get(node.nics, "Nic", a["nic"])
    if node.project is None:
        raise ProjectMismatchError("Node not in project")
    require_project(user, node.project)
    _check_pending(api, nic)
    channel = next((c for c, label in nic.networks.items() if label == net.label), None)
    if channel is None:
        raise BadArgumentError("The network is not attached to the nic.")
    return 202, {"status_id": _queue(api, node.name, nic, "modify_port", None, channel)}


def show_action(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    action = api.state.actions.get(a["status_id"])
    if action is None:
        raise NotFoundError("status_id not found")
    require_project(user, api.state.nodes[action.node].project)
    return {
        "status": action.status,
        "node": action.node,
        "nic": action.nic,
        "type": action.type,
        "channel": action.channel,
        "new_network": action.new_network,
    }


# -- switches and ports -------------------------------------------------------------------------------------
def list_switches(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    return sorted(api.state.switches)


def switch_register(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    if a["type"] != MOCK_SWITCH or {k for k in a if k not in ("switch", "type")} != {
        "hostname",
        "username",
        "password",
    }:
        raise BadArgumentError(f"Unknown switch type or bad fields for {a['type']!r}")
    if a["switch"] in api.state.switches:
        raise DuplicateError(f"Switch {a['switch']} already exists.")
    api.state.switches[a["switch"]] = {}


def switch_delete(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    ports = get(api.state.switches, "Switch", a["switch"])
    if ports:
        raise BlockedError("Switch has ports")
    del api.state.switches[a["switch"]]


def show_switch(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    ports = get(api.state.switches, "Switch", a["switch"])
    labels = [{"label": p} for p in sorted(ports)]
    return {"name": a["switch"], "ports": labels, "capabilities": ["nativeless-trunk-mode"]}


def port_register(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    ports = get(api.state.switches, "Switch", a["switch"])
    if not _MOCK_PORT.match(a["port"]):
        raise BadArgumentError(f"Invalid port name {a['port']!r}")
    if a["port"] in ports:
        raise DuplicateError(f"Port {a['port']} already exists.")
    ports[a["port"]] = None


def _port(api: HilApi, a: dict[str, Any]) -> dict[str, tuple[str, str] | None]:
    ports: dict[str, tuple[str, str] | None] = get(api.state.switches, "Switch", a["switch"])
    get(ports, "Port", a["port"])
    return ports


def port_delete(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    ports = _port(api, a)
    if ports[a["port"]] is not None:
        raise BlockedError("Port is connected to a nic")
    del ports[a["port"]]


def port_show(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    wired = _port(api, a)[a["port"]]
    if wired is None:
        return {}
    return {"node": wired[0], "nic": wired[1], "networks": dict(api.state.nic(*wired).networks)}


def port_connect_nic(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    ports = _port(api, a)
    node = get(api.state.nodes, "Node", a["node"])
    nic = get(node.nics, "Nic", a["nic"])
    if ports[a["port"]] is not None or nic.port is not None:
        raise DuplicateError("Port or nic already connected")
    ports[a["port"]] = (node.name, nic.label)
    nic.port = (a["switch"], a["port"])


def port_detach_nic(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    ports = _port(api, a)
    wired = ports[a["port"]]
    if wired is None:
        raise NotFoundError("Port not connected to anything")
    if api.state.nodes[wired[0]].project is not None:
        raise BlockedError("The port is attached to a node which is not free")
    api.state.nic(*wired).port = None
    ports[a["port"]] = None


def port_revert(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    wired = _port(api, a)[a["port"]]
    if wired is None:
        raise NotFoundError("No nic connected to port")
    nic = api.state.nic(*wired)
    _check_pending(api, nic)
    return {"status_id": _queue(api, wired[0], nic, "revert_port", None, "")}


# -- users, extensions --------------------------------------------------------------------------------------
def list_users(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    return {n: {"is_admin": u.is_admin, "projects": sorted(u.projects)} for n, u in api.state.users.items()}


def user_create(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    if a["user"] in api.state.users:
        raise DuplicateError(f"User {a['user']} already exists.")
    api.state.users[a["user"]] = User(a["password"], a.get("is_admin", False))


def user_delete(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    get(api.state.users, "User", a["user"])
    del api.state.users[a["user"]]


def user_patch(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    target = get(api.state.users, "User", a["user"])
    if target is user:
        raise IllegalStateError("Cannot set own admin status")
    target.is_admin = a["is_admin"]


def user_add_project(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    target = get(api.state.users, "User", a["user"])
    project = get_project(api, a["project"])
    if project in target.projects:
        raise DuplicateError(f"User {a['user']} is already in project {project}")
    target.projects.add(project)


def user_remove_project(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    target = get(api.state.users, "User", a["user"])
    project = get_project(api, a["project"])
    if project not in target.projects:
        raise NotFoundError(f"User {a['user']} is not in project {project}")
    target.projects.discard(project)


def active_extensions(api: HilApi, user: User, a: dict[str, Any]) -> Any:
    require_admin(user)
    return list(api.double.extensions)


def _table() -> list[tuple[str, str, Any, Schema]]:
    p, n, nic = {"project": (S, True)}, {"node": (S, True)}, {"nic": (S, True)}
    net = {"network": (S, True)}
    sw = {"switch": (S, True)}
    port = {**sw, "port": (S, True)}
    u = {"user": (S, True)}
    label = {**n, "label": (S, True)}
    connect = {**n, **nic, **net, "channel": (S, False)}
    create = {**net, "owner": (S, True), "access": (S, True), "net_id": (S, True)}
    mock = {**sw, "type": (S, True), **{k: (S, False) for k in ("hostname", "username", "password")}}
    return [
        ("GET", "/projects", list_projects, {}),
        ("PUT", "/project/<project>", project_create, p),
        ("DELETE", "/project/<project>", project_delete, p),
        ("POST", "/project/<project>/connect_node", project_connect_node, {**p, **n}),
        ("POST", "/project/<project>/detach_node", project_detach_node, {**p, **n}),
        ("GET", "/project/<project>/nodes", project_nodes, p),
        ("GET", "/project/<project>/networks", project_networks, p),
        ("GET", "/nodes/<is_free>", list_nodes, {"is_free": (S, True)}),
        ("PUT", "/node/<node>", node_register, {**n, "obmd": (D, True), "metadata": (D, False)}),
        ("DELETE", "/node/<node>", node_delete, n),
        ("GET", "/node/<node>", show_node, n),
        ("PUT", "/node/<node>/nic/<nic>", nic_register, {**n, **nic, "macaddr": (S, True)}),
        ("DELETE", "/node/<node>/nic/<nic>", nic_delete, {**n, **nic}),
        ("PUT", "/node/<node>/metadata/<label>", metadata_set, {**label, "value": (ANY, True)}),
        ("DELETE", "/node/<node>/metadata/<label>", metadata_delete, label),
        ("PUT", "/node/<node>/obm", node_obm, {**n, "enabled": (B, True)}),
        ("POST", "/node/<node>/power_cycle", _power("power_cycle"), {**n, "force": (B, False)}),
        ("POST", "/node/<node>/power_on", _power("power_on"), n),
        ("POST", "/node/<node>/power_off", _power("power_off"), n),
        ("GET", "/node/<node>/power_status", _power("power_status"), n),
        ("PUT", "/node/<node>/boot_device", _power("boot_device"), {**n, "bootdev": (S, True)}),
        ("GET", "/node/<node>/console", _power("console"), n),
        ("POST", "/node/<node>/nic/<nic>/connect_network", connect_network, connect),
        ("POST", "/node/<node>/nic/<nic>/detach_network", detach_network, {**n, **nic, **net}),
        ("GET", "/networking_action/<status_id>", show_action, {"status_id": (S, True)}),
        ("GET", "/networks", list_networks, {}),
        ("PUT", "/network/<network>", network_create, create),
        ("DELETE", "/network/<network>", network_delete, net),
        ("GET", "/network/<network>", show_network, net),
        ("GET", "/network/<network>/attachments", network_attachments, {**net, "project": (S, False)}),
        ("PUT", "/network/<network>/access/<project>", network_grant, {**net, **p}),
        ("DELETE", "/network/<network>/access/<project>", network_revoke, {**net, **p}),
        ("GET", "/switches", list_switches, {}),
        ("PUT", "/switch/<switch>", switch_register, mock),
        ("DELETE", "/switch/<switch>", switch_delete, sw),
        ("GET", "/switch/<switch>", show_switch, sw),
        ("PUT", "/switch/<switch>/port/<path:port>", port_register, port),
        ("DELETE", "/switch/<switch>/port/<path:port>", port_delete, port),
        ("GET", "/switch/<switch>/port/<path:port>", port_show, port),
        ("POST", "/switch/<switch>/port/<path:port>/connect_nic", port_connect_nic, {**port, **n, **nic}),
        ("POST", "/switch/<switch>/port/<path:port>/detach_nic", port_detach_nic, port),
        ("POST", "/switch/<switch>/port/<path:port>/revert", port_revert, port),
        ("GET", "/auth/basic/users", list_users, {}),
        ("PUT", "/auth/basic/user/<user>", user_create, {**u, "password": (S, True), "is_admin": (B, False)}),
        ("DELETE", "/auth/basic/user/<user>", user_delete, u),
        ("PATCH", "/auth/basic/user/<user>", user_patch, {**u, "is_admin": (B, True)}),
        ("POST", "/auth/basic/user/<user>/add_project", user_add_project, {**u, **p}),
        ("POST", "/auth/basic/user/<user>/remove_project", user_remove_project, {**u, **p}),
        ("GET", "/active_extensions", active_extensions, {}),
    ]  # fmt: skip
