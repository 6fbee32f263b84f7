"""Bad input gets a clear 4xx in HIL's {"type", "msg"} shape and changes nothing."""

import pytest
from dbdump import dump


@pytest.fixture
def unchanged(site):
    before = dump(site.sessions)
    yield site
    assert dump(site.sessions) == before, "a refused request changed the database"


def raw(site, method, path, content=None, headers=None):
    headers = {**site.admin.headers, **(headers or {})}
    return site.client.request(method, path, content=content, headers=headers)


def assert_error(response, status, type_):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"type", "msg"} and body["type"] == type_ and body["msg"], body


def test_malformed_json_and_wrong_shapes(unchanged):
    for content in (b"{", b"[]", b'"node"', b"null", b"\xff\xfe", b'{"node": "n1"} trailing'):
        assert_error(raw(unchanged, "POST", "/v0/project/p1/connect_node", content), 400, "ValidationError")
    for body in (b'{"node": null}', b'{"node": ["n1"]}', b'{"node": {"a": 1}}', b'{"node": true}'):
        assert_error(raw(unchanged, "POST", "/v0/project/p1/connect_node", body), 400, "ValidationError")


def test_body_where_none_is_taken(unchanged):
    assert_error(raw(unchanged, "GET", "/v0/nodes/all", b'{"a": 1}'), 400, "ValidationError")
    assert_error(raw(unchanged, "GET", "/v0/nodes/all", b"{}"), 400, "ValidationError")
    assert_error(raw(unchanged, "PUT", "/v0/project/p9", b'{"a": 1}'), 400, "ValidationError")
    assert_error(raw(unchanged, "DELETE", "/v0/project/p2", b"garbage"), 400, "ValidationError")


def test_query_parameters(unchanged):
    assert_error(raw(unchanged, "GET", "/v0/nodes/all?x=1"), 400, "ValidationError")
    assert_error(raw(unchanged, "GET", "/v0/network/none/attachments?project="), 400, "ValidationError")
    assert_error(raw(unchanged, "GET", "/v0/network/none/attachments?bogus=1"), 400, "ValidationError")


def test_unknown_routes_and_methods(unchanged):
    assert_error(raw(unchanged, "GET", "/v0/no/such/route"), 404, "NotFoundError")
    assert_error(raw(unchanged, "PATCH", "/v0/projects"), 405, "ValidationError")


@pytest.mark.parametrize(
    "name",
    ["x" * 5000, "..", ".", " lead", "tab\there", "nul\x00", "back\\slash"],
    ids=["5000-chars", "dotdot", "dot", "leading-space", "tab", "nul", "backslash"],
)
def test_odd_names_are_refused_on_create(unchanged, name):
    from urllib.parse import quote

    path = quote(name, safe="")
    for method, url, body in [
        ("PUT", f"/v0/project/{path}", None),
        ("PUT", f"/v0/network/{path}", b'{"owner": "admin", "access": "", "net_id": ""}'),
        ("PUT", f"/v0/node/{path}", b'{"obm": {"type": "mock", "host": "h", "user": "u", "password": "p"}}'),
        ("PUT", f"/v0/switch/{path}", b'{"type": "mock"}'),
        ("PUT", f"/v0/auth/basic/user/{path}", b'{"password": "x"}'),
    ]:
        response = raw(unchanged, method, url, body)
        assert response.status_code in (400, 404), (url, response.text)
        assert response.json()["type"] in ("BadArgumentError", "ValidationError", "NotFoundError")
    # Looking one up is a plain 404 (400 for a NUL, which the database cannot even compare).
    response = raw(unchanged, "GET", f"/v0/node/{path}")
    assert response.status_code == (400 if "\x00" in name else 404), response.text


def test_nul_in_credentials_or_body_is_a_4xx(unchanged):
    from api_helpers import basic

    response = unchanged.client.get("/v0/nodes/all", headers={"Authorization": basic("ad\x00min", "x")})
    assert_error(response, 401, "AuthorizationError")
    body = b'{"node": "n\\u0000"}'
    assert_error(raw(unchanged, "POST", "/v0/project/p1/connect_node", body), 400, "ValidationError")


def test_unicode_names_work(site):
    site.admin.ok("PUT", "/project/projét-ü")
    assert "projét-ü" in site.admin.ok("GET", "/projects")


def test_form_content_type_is_read_as_json(site):
    """`curl -d` sends a form Content-Type; HIL then refused every body. rhaas reads JSON regardless."""
    response = raw(
        site,
        "POST",
        "/v0/project/p1/connect_node",
        b'{"node": "n1"}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
