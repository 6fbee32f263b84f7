"""Fuzz every route of the OpenAPI document, as admin, as a project member and anonymously.

For each operation in ``/openapi.json`` hypothesis draws path parameters (known names, odd names: ``/``,
``..``, unicode, 5,000 characters …), query strings and bodies (schema-shaped, wrong types, missing and
extra keys, malformed JSON, bodies where none is taken, GET bodies). Every answer must be below 500;
every error must be HIL's ``{"type": str, "msg": str}``; and a refused request (4xx) must leave the
database exactly as it was (a whole dump before and after is compared).

The in-process worker is off: the test drains actions itself after each accepted request, so nothing
changes the database behind a refused request's back. Generation is derandomized, so CI is deterministic.
"""

from __future__ import annotations

import itertools
import json
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from api_helpers import Api, make_api, populate_site
from dbdump import dump
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from rhaas.backends import make_backend
from rhaas.worker.networking import NetworkWorker

#: Examples per operation and role (58 operations × 3 roles × 2 databases).
EXAMPLES = 10

ODD_NAMES = [
    "/",
    "..",
    ".",
    "a/b",
    "../../etc/passwd",
    "",
    " ",
    " lead",
    "trail ",
    "x" * 5000,
    "é" * 300,
    "日本語",
    "\u202etxet",
    "🦀",
    "%",
    "%2F",
    "%00",
    "\\",
    "tab\there",
    "new\nline",
    "nul\x00",
    "\x7f",
    "?x=1",
    "#frag",
    "null",
    "0",
    "-1",
    "1e309",
    "²",  # str.isdigit() says yes, int() says no
    "١٠٠",  # Arabic-Indic digits: int() reads 100
    "1_0",
    "+5",
]

#: Names that exist in the fuzz site, by path parameter / body key.
KNOWN: dict[str, list[str]] = {
    "project": ["p1", "p2", "p3"],
    "node": ["n1", "n2", "n3", "n4"],
    "nic": ["eth0", "eth1"],
    "switch": ["sw0"],
    "port": ["gi1/0/1", "gi1/0/2", "gi1/0/3", "gi1/0/4", "gi1/0/9"],
    "network": ["pub", "net1", "net2", "new"],
    "label": ["rack", "EK"],
    "is_free": ["free", "all"],
    "channel": ["vlan/native", "vlan/100", "vlan/101", "vlan/4095", ""],
    "macaddr": ["52:54:00:00:00:09"],
    "owner": ["admin", "p1", "p2"],
    "access": ["", "p1", "p2"],
    "net_id": ["", "200", "100", "4095", "x", "²", "١٠٠"],
    "bootdev": ["pxe", "disk", "none", "floppy"],
    "password": ["pw", ""],
    "user": ["carol", "bob", "nobody"],
    "type": ["mock", "", "nope", "http://schema.massopencloud.org/haas/v0/switches/mock"],
}

ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
MALFORMED = st.sampled_from(
    [
        b"{",
        b"[]",
        b'"x"',
        b"null",
        b"\xff\xfe",
        b'{"a": 1} trailing',
        b"{'a': 1}",
        b"{}{}",
        b"1" * 5000,
        b"[" * 100_000,
        b'{"a":' * 50_000,
    ]
)


def names(key: str, caller: str | None) -> st.SearchStrategy[str]:
    known = [n for n in KNOWN.get(key, []) if n != caller]  # an admin deleting itself ends the run
    text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
    options = [st.sampled_from(ODD_NAMES), text]
    if known:
        options = [st.sampled_from(known)] * 4 + options  # mostly names that exist: reach deeper checks
    return st.one_of(*options)


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return resolve(doc, doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return resolve(doc, next(s for s in schema[key] if s.get("type") != "null"))
    return schema


WILD = st.one_of(
    st.sampled_from(ODD_NAMES),
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=12),
    st.integers(-(2**70), 2**70),
    ANY_JSON,
)


def tame_value(doc: dict[str, Any], key: str, schema: dict[str, Any], caller: str | None) -> Any:
    """A value the route may accept: a name that exists, a sane number, a well-formed OBM."""
    schema = resolve(doc, schema)
    kind = schema.get("type")
    if key == "obm":
        return st.fixed_dictionaries(
            {"type": st.sampled_from(KNOWN["type"])},
            optional={"host": names("host", None), "user": names("user", None), "password": ANY_JSON},
        )
    if kind == "string":
        known = [n for n in KNOWN.get(key, []) if n != caller]
        return st.sampled_from(known) if known else names(key, caller)
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(-1, 5)
    if kind == "object" and "properties" in schema:
        return object_for(doc, schema, caller)
    return ANY_JSON


def object_for(doc: dict[str, Any], schema: dict[str, Any], caller: str | None) -> st.SearchStrategy[Any]:
    """Mostly a tame object with one field made wild, so that each odd value reaches deep checks."""
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    tame = {k: tame_value(doc, k, v, caller) for k, v in props.items()}
    shaped = st.fixed_dictionaries(
        {k: s for k, s in tame.items() if k in required},
        optional={k: s for k, s in tame.items() if k not in required},
    )
    if not props:
        return shaped
    one_wild = st.tuples(shaped, st.sampled_from(sorted(props)), WILD).map(lambda t: {**t[0], t[1]: t[2]})
    extra = st.dictionaries(st.sampled_from(["bogus", *props, "node"]), ANY_JSON, min_size=1, max_size=2)
    return st.one_of(
        shaped,
        one_wild,
        one_wild,
        one_wild,
        st.tuples(shaped, extra).map(lambda t: {**t[0], **t[1]}),
        shaped.map(lambda d: dict(list(d.items())[1:])),  # a key missing
    )


def body_for(doc: dict[str, Any], op: dict[str, Any], caller: str | None) -> st.SearchStrategy[bytes | None]:
    as_json = ANY_JSON.map(lambda v: json.dumps(v).encode())
    if "requestBody" not in op:
        # Mostly no body; sometimes one where none is taken (GET bodies included).
        return st.one_of(st.none(), st.none(), st.just(b"{}"), as_json, MALFORMED)
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    shaped = object_for(doc, resolve(doc, schema), caller).map(lambda v: json.dumps(v).encode())
    return st.one_of(shaped, shaped, shaped, shaped, as_json, MALFORMED, st.none())


def query_for(op: dict[str, Any]) -> st.SearchStrategy[str]:
    declared = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
    values = {
        "wait": st.sampled_from(["0", "0.01", "-1", "31", "nan", "inf", "abc", "", "1e309"]),
        "project": st.sampled_from(["p1", "p2", "nope", "", "x" * 5000, "é"]),
    }
    other = st.text(string.printable, max_size=5)
    pair = st.sampled_from([*declared, "bogus"]).flatmap(
        lambda k: st.tuples(st.just(k), values.get(k, other))
    )
    pairs = st.lists(pair, max_size=2)
    query = pairs.map(lambda kvs: "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in kvs))
    return st.one_of(st.just(""), st.just(""), st.just(""), query)  # an unknown key is refused early


def request_for(
    doc: dict[str, Any], path: str, op: dict[str, Any], caller: str | None
) -> st.SearchStrategy[tuple[str, bytes | None]]:
    params = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
    values = st.fixed_dictionaries({p: names(p, caller) for p in params})

    def url(args: tuple[dict[str, str], str]) -> str:
        given_values, query = args
        out = path
        for name, value in given_values.items():
            # A port may hold '/' (its route is a path converter); everything else is quoted whole.
            out = out.replace("{" + name + "}", quote(value, safe="/" if name == "port" else ""))
        return out + ("?" + query if query else "")

    return st.tuples(st.tuples(values, query_for(op)).map(url), body_for(doc, op, caller))


def _error_shape_problem(response: Any) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return "error body is not JSON"
    if not (isinstance(data, dict) and set(data) == {"type", "msg"}):
        return "error body is not {type, msg}"
    if not (isinstance(data["type"], str) and isinstance(data["msg"], str) and data["type"] and data["msg"]):
        return "error type/msg are not non-empty strings"
    return None


class Fuzzer:
    """Sends requests, checks each answer, and keeps a dump of the database between accepted ones."""

    def __init__(self, api: Api, worker: NetworkWorker) -> None:
        self.api, self.worker = api, worker
        self.snapshot: dict[str, list[tuple[Any, ...]]] | None = None
        self.cases = 0
        self.status_counts: dict[int, int] = {}
        self.problems: list[str] = []

    def send(self, headers: dict[str, str], method: str, url: str, body: bytes | None) -> None:
        if self.snapshot is None:
            self.snapshot = dump(self.api.sessions)
        response = self.api.client.request(method, url, content=body, headers=headers)
        self.cases += 1
        code = response.status_code
        self.status_counts[code] = self.status_counts.get(code, 0) + 1
        where = f"{method} {url[:120]} body={body[:120] if body else body!r}"
        if code >= 500:
            self.problems.append(f"{code} for {where}: {response.text[:300]}")
        if code >= 400:
            shape = _error_shape_problem(response)
            if shape:
                self.problems.append(f"{shape} ({code}) for {where}: {response.text[:200]}")
            if code < 500 and dump(self.api.sessions) != self.snapshot:
                self.problems.append(f"refused request ({code}) changed the database: {where}")
                self.snapshot = None
        else:
            while self.worker.run_once():  # apply what an accepted request queued, then re-dump
                pass
            self.snapshot = None


def fuzz_operation(
    fuzzer: Fuzzer,
    requests: st.SearchStrategy[tuple[str, bytes | None]],
    headers: st.SearchStrategy[dict[str, str]],
    method: str,
) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=requests, extra=headers)
    def run(case: tuple[str, bytes | None], extra: dict[str, str]) -> None:
        url, body = case
        fuzzer.send(extra, method, url, body)

    run()


@pytest.fixture
def fuzz_site(db_url: str) -> Iterator[tuple[Api, NetworkWorker]]:
    with make_api(db_url, worker__in_process=False) as api:
        worker = NetworkWorker(api.sessions, make_backend(api.settings), api.settings.worker)
        try:
            populate_site(api)
            admin = api.admin
            admin.ok("PUT", "/network/pub", {"owner": "admin", "access": "", "net_id": ""})
            for project, nodes in (("p1", ["n1", "n2"]), ("p2", ["n3"])):
                body = {"owner": project, "access": project, "net_id": ""}
                admin.ok("PUT", f"/network/net{project[1]}", body)
                for node in nodes:
                    admin.ok("POST", f"/project/{project}/connect_node", {"node": node})
            admin.ok("PUT", "/node/n1/metadata/rack", {"value": "r1"})
            status = admin.ok("POST", "/node/n1/nic/eth0/connect_network", {"network": "net1"}, status=202)
            while worker.run_once():
                pass
            KNOWN["status_id"] = [status["status_id"], "00000000-0000-0000-0000-000000000000"]
            yield api, worker
        finally:
            worker.stop()


ROLES = {
    "admin": ("admin", "adminpw"),
    "member": ("alice", "alicepw"),
    "anonymous": (None, None),
}


@pytest.mark.parametrize("role", list(ROLES))
def test_fuzz_every_route(fuzz_site, role, request):
    api, worker = fuzz_site
    user, password = ROLES[role]
    doc = api.client.get("/openapi.json").json()
    fuzzer = Fuzzer(api, worker)
    headers = {} if user is None else {"Authorization": basic_header(user, password)}
    anon_headers = st.sampled_from(
        [
            {},
            {"Authorization": "Basic !!!"},
            {"Authorization": "Bearer x"},
            {"Authorization": basic_header("admin", "no")},
        ]
    )
    operations = [(m.upper(), p, op) for p, ops in doc["paths"].items() for m, op in ops.items()]
    assert len(operations) >= 50, "the OpenAPI document lost its routes"
    header_strategy = anon_headers if user is None else st.just(headers)
    for method, path, op in operations:
        fuzz_operation(fuzzer, request_for(doc, path, op, user), header_strategy, method)
    summary = ", ".join(f"{code}: {n}" for code, n in sorted(fuzzer.status_counts.items()))
    report(
        request,
        f"fuzz {role} [{request.node.callspec.params['db_url']}]: {fuzzer.cases} cases over "
        f"{len(operations)} operations ({summary})",
    )
    assert not fuzzer.problems, "\n".join(fuzzer.problems[:20])


#: The odd values the sweep puts into each slot in turn (a subset of ODD_NAMES: the sweep is exhaustive).
SWEEP = ["/", "..", "", " lead", "x" * 5000, "\u202etxet", "🦀", "%2F", "nul\x00", "²", "١٠٠", "-1"]


def tame_json(doc: dict[str, Any], key: str, schema: dict[str, Any]) -> Any:
    """The first tame value of a slot, deterministically."""
    schema = resolve(doc, schema)
    kind = schema.get("type")
    if key == "obm":
        return {"type": "mock", "host": "h", "user": "u", "password": "p"}
    if kind == "object" and "properties" in schema:
        return {
            k: tame_json(doc, k, v)
            for k, v in schema["properties"].items()
            if k in schema.get("required", [])
        }
    if kind == "boolean":
        return False
    if kind == "integer":
        return 1
    return KNOWN.get(key, ["x"])[0]


def sweep_cases(
    doc: dict[str, Any], method: str, path: str, op: dict[str, Any]
) -> Iterator[tuple[str, bytes | None]]:
    """A tame request with one path parameter or one body field replaced by each SWEEP value."""
    params = {
        p["name"]: KNOWN.get(p["name"], ["x"])[0] for p in op.get("parameters", []) if p["in"] == "path"
    }
    body: dict[str, Any] | None = None
    if "requestBody" in op:
        body = tame_json(doc, "", op["requestBody"]["content"]["application/json"]["schema"])
        schema = resolve(doc, op["requestBody"]["content"]["application/json"]["schema"])
        body_keys = list(schema.get("properties", {}))
    else:
        body_keys = []

    def url(values: dict[str, str]) -> str:
        out = path
        for name, value in values.items():
            out = out.replace("{" + name + "}", quote(value, safe="/" if name == "port" else ""))
        return out

    fresh = itertools.count()
    for value in SWEEP:
        for name in params:
            yield url({**params, name: value}), None if body is None else json.dumps(body).encode()
        for key in body_keys:
            # A creating PUT gets a new name each time: its odd field must not meet a Duplicate first.
            creating = {list(params)[-1]: f"fresh{next(fresh)}"} if method == "put" and params else {}
            yield url({**params, **creating}), json.dumps({**(body or {}), key: value}).encode()


@pytest.mark.parametrize("role", ["admin"])  # a member's sweep mostly meets 401s: not worth the time
def test_odd_values_in_every_slot(fuzz_site, role, request):
    """Exhaustive where random generation is thin: each odd value in each slot of each route."""
    api, worker = fuzz_site
    user, password = ROLES[role]
    doc = api.client.get("/openapi.json").json()
    fuzzer = Fuzzer(api, worker)
    headers = {"Authorization": basic_header(user, password)}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for url, body in sweep_cases(doc, method, path, op):
                fuzzer.send(headers, method.upper(), url, body)
    summary = ", ".join(f"{code}: {n}" for code, n in sorted(fuzzer.status_counts.items()))
    report(
        request, f"sweep {role} [{request.node.callspec.params['db_url']}]: {fuzzer.cases} cases ({summary})"
    )
    assert not fuzzer.problems, "\n".join(fuzzer.problems[:20])


def basic_header(user: str, password: str | None) -> str:
    from api_helpers import basic

    return basic(user, password or "")


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Print past pytest's capture, so the case counts show in CI's log."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        print("\n" + line)
