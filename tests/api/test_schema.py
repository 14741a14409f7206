"""The OpenAPI schema at /api/schema/ and its docs pages (/api/docs/, /api/redoc/).

The schema is public: it describes the API and holds no one's data, so anonymous
users read it as logged-in users do. The docs load only the project's own static
files (drf_spectacular_sidecar), so they work on a machine with no internet.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from drf_spectacular.validation import validate_schema

from tests.api.conftest import token_client

# Every operation the API issue names, as (method, path) in the schema.
OPERATIONS = {
    ("GET", "/api/v1/cases/"),
    ("GET", "/api/v1/cases/{id}/"),
    ("GET", "/api/v1/cases/{id}/images/{image_pk}.png"),
    ("GET", "/api/v1/models/"),
    ("GET", "/api/v1/generations/"),
    ("POST", "/api/v1/generations/"),
    ("GET", "/api/v1/generations/{id}/"),
    ("POST", "/api/v1/generations/{id}/cancel/"),
    ("POST", "/api/v1/generations/{id}/rerun/"),
    ("GET", "/api/v1/generations/{id}/images/{index}.png"),
    ("GET", "/api/v1/generations/{id}/images/{index}/diff.png"),
    ("GET", "/api/v1/datasets/"),
    ("POST", "/api/v1/datasets/"),
    ("GET", "/api/v1/datasets/{id}/"),
    ("POST", "/api/v1/datasets/{id}/cancel/"),
    ("POST", "/api/v1/datasets/{id}/export/"),
    ("GET", "/api/v1/datasets/{id}/export.zip"),
    ("GET", "/api/v1/datasets/{id}/report/"),
    ("POST", "/api/v1/datasets/{id}/report/"),
    ("GET", "/api/v1/tokens/"),
    ("POST", "/api/v1/tokens/"),
    ("DELETE", "/api/v1/tokens/{id}/"),
    *(
        operation
        for jobs in ("imports", "training-runs", "evaluations")
        for operation in (
            ("GET", f"/api/v1/{jobs}/"),
            ("POST", f"/api/v1/{jobs}/"),
            ("GET", f"/api/v1/{jobs}/{{id}}/"),
            ("POST", f"/api/v1/{jobs}/{{id}}/cancel/"),
        )
    ),
    ("GET", "/api/v1/training-runs/{id}/loss.png"),
    ("GET", "/api/v1/evaluations/{id}/histogram.png"),
}
PNG_PATHS = {path for _, path in OPERATIONS if path.endswith(".png")}
ERRORS_REF = {"$ref": "#/components/schemas/Errors"}
LINKS = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""")
SIDECAR = "/static/drf_spectacular_sidecar/"


def _schema(response) -> dict:
    assert response.status_code == 200, response.content[:300]
    return yaml.safe_load(response.content)


def _operations(schema: dict) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method != "parameters"
    }


def test_it_serves_a_valid_openapi_3_schema_to_anonymous_users(client, db):
    response = client.get("/api/schema/")

    schema = _schema(response)
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    assert schema["openapi"].startswith("3.")
    validate_schema(schema)  # raises naming the first part that is not OpenAPI 3


def test_it_serves_the_same_schema_to_session_and_token_users(client, alice):
    anonymous = _schema(client.get("/api/schema/"))
    client.force_login(alice)
    by_session = _schema(client.get("/api/schema/"))
    by_token = _schema(token_client(alice).get("/api/schema/"))

    assert by_session == anonymous
    assert by_token == anonymous


def test_it_refuses_a_bad_token_even_for_the_schema(client, db):
    response = client.get("/api/schema/", HTTP_AUTHORIZATION="Token not-a-key")

    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "authentication_failed"


@pytest.mark.parametrize(
    ("query", "accept"),
    [("?format=json", "*/*"), ("", "application/vnd.oai.openapi+json")],
)
def test_it_serves_json_when_asked(client, db, query, accept):
    response = client.get(f"/api/schema/{query}", HTTP_ACCEPT=accept)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    assert json.loads(response.content) == _schema(client.get("/api/schema/"))


def test_it_answers_yaml_for_a_format_it_lacks_rather_than_refusing(client, db):
    response = client.get("/api/schema/", HTTP_ACCEPT="text/csv")

    assert response.status_code == 200
    assert yaml.safe_load(response.content)["openapi"].startswith("3.")


def test_it_holds_every_operation_of_the_issue(client, db):
    schema = _schema(client.get("/api/schema/"))

    missing = OPERATIONS - _operations(schema)
    assert not missing, f"not in the schema: {sorted(missing)}"


def test_it_documents_the_error_shape_on_every_operation(client, db):
    schema = _schema(client.get("/api/schema/"))

    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            for code in ("400", "401", "403", "429", "503"):
                body = responses[code]["content"]["application/json"]["schema"]
                assert body == ERRORS_REF, (method, path, code)
            if "{" in path:
                assert "404" in responses, (method, path)
            if method in ("post", "delete"):
                assert {"409", "413"} <= set(responses), (method, path)


def test_it_documents_png_downloads_as_png(client, db):
    schema = _schema(client.get("/api/schema/"))

    for path in PNG_PATHS:
        content = schema["paths"][path]["get"]["responses"]["200"]["content"]
        assert list(content) == ["image/png"], path


def test_it_declares_token_and_session_authentication(client, db):
    schema = _schema(client.get("/api/schema/"))

    schemes = schema["components"]["securitySchemes"]
    assert schemes["tokenAuth"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "`Token <key>` or `Bearer <key>`",
    }
    assert schemes["cookieAuth"]["in"] == "cookie"


def test_it_stays_clean_under_spectacular_validate_fail_on_warn(tmp_path: Path, db):
    out = tmp_path / "schema.yaml"

    # Raises SchemaGenerationError on any warning, SchemaValidationError if invalid.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))

    assert _operations(yaml.safe_load(out.read_text())) >= OPERATIONS


@pytest.mark.parametrize("page", ["/api/docs/", "/api/redoc/"])
def test_its_docs_load_only_local_static_files(client, db, page):
    response = client.get(page)

    assert response.status_code == 200
    html = response.content.decode()
    assert "http://" not in html
    assert "https://" not in html
    links = LINKS.findall(html)
    assets = [link for link in links if link != "/api/schema/"]
    assert assets, html[:500]
    assert all(link.startswith(SIDECAR) for link in assets), links
    for asset in assets:
        file = client.get(asset)
        assert file.status_code == 200, asset
        assert b"".join(file.streaming_content), asset


def test_its_swagger_page_reads_the_schema_from_this_server(client, db):
    html = client.get("/api/docs/").content.decode()

    assert '"/api/schema/"' in html
    assert "swagger-ui-bundle.js" in html


def test_its_docs_pages_need_no_login(client, db):
    for page in ("/api/docs/", "/api/redoc/"):
        assert client.get(page).status_code == 200


def _parameter(schema: dict, path: str, name: str) -> dict:
    (found,) = [
        parameter
        for parameter in schema["paths"][path]["get"]["parameters"]
        if parameter["name"] == name
    ]
    return found


def test_it_bounds_each_path_parameter_as_its_url_does(client, db):
    schema = _schema(client.get("/api/schema/"))
    images = "/api/v1/generations/{id}/images/{index}.png"
    samples = "/api/v1/training-runs/{id}/samples/{name}"
    case_image = "/api/v1/cases/{id}/images/{image_pk}.png"

    assert _parameter(schema, images, "index")["schema"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 99999,  # [0-9]{1,5}
    }
    assert _parameter(schema, case_image, "image_pk")["schema"]["maximum"] == (
        10**18 - 1
    )
    assert _parameter(schema, samples, "name")["schema"] == {
        "type": "string",
        "pattern": r"^epoch-[0-9A-Za-z_.-]{1,100}\.png$",
    }
    # DRF's default lookup takes any segment: the view answers 404 for a bad one.
    assert _parameter(schema, images, "id")["schema"] == {"type": "integer"}


def test_it_allows_every_optional_query_parameter_blank(client, db):
    schema = _schema(client.get("/api/schema/"))

    query = [
        parameter
        for item in schema["paths"].values()
        for operation in item.values()
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "query"
    ]
    assert {p["name"] for p in query} >= {"cursor", "page_size", "kind", "view"}
    assert all(p.get("allowEmptyValue") is True for p in query)
