"""The deployment snippets in config/ agree with the gateway they deploy.

No Kubernetes, Traefik or Envoy runs here, so these tests read the files:
the manifest is checked against Kubernetes' API schemas, and each file
against the gateway's own names: its settings, its reserved
paths, the headers it reads a key from and the identity headers it answers
with. A renamed setting or header fails here instead of in a deployment.
(The nginx snippet runs against a real nginx in test_nginx_forward_auth.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from gateway.server import Context, build_gateway_app
from gateway.settings import Settings, load_settings
from tests.gateway.conftest import GATEWAY

CONFIG = Path(__file__).parents[2] / "config"
DEFAULTS = Settings(key_pepper="p" * 40)
KEY_HEADERS = {name.lower() for name in DEFAULTS.key_headers}
IDENTITY_HEADERS = {
    DEFAULTS.user_id_header.lower(),
    DEFAULTS.key_id_header.lower(),
    DEFAULTS.assertion_header.lower(),
}


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((CONFIG / name).read_text()) if d]


def kind(name: str, wanted: str) -> list[dict[str, Any]]:
    return [d for d in documents(name) if d["kind"] == wanted]


# Kubernetes -----------------------------------------------------------------

MANIFEST = "kubernetes/rpa-gateway.yaml"


@pytest.mark.parametrize("version", ["1.29.0", kubernetes_validate.latest_version()])
def test_the_manifest_is_valid_kubernetes_without_unknown_fields(version: str) -> None:
    for document in documents(MANIFEST):
        kubernetes_validate.validate(document, version, strict=True)


def container() -> dict[str, Any]:
    (deployment,) = kind(MANIFEST, "Deployment")
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def test_the_manifest_sets_only_real_settings_and_they_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (config_map,) = kind(MANIFEST, "ConfigMap")
    env = dict(config_map["data"])
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container()["env"]}
    names = {re.sub("^RPA_GATEWAY_", "", n).lower() for n in [*env, *secrets]}
    assert names <= set(Settings.model_fields)
    # The secret the comment says to create holds what the pods read.
    assert {ref["name"] for ref in secrets.values()} == {"rpa-gateway"}
    assert {ref["key"] for ref in secrets.values()} == {"key-pepper", "redis-url"}
    assert "RPA_GATEWAY_KEY_PEPPER" in secrets  # never in the ConfigMap
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RPA_GATEWAY_KEY_PEPPER", "p" * 40)
    settings = load_settings()
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert settings.listen_address == ("0.0.0.0", ports["gateway"])
    assert settings.admin_listen_address == ("0.0.0.0", ports["admin"])


def test_the_services_and_policy_name_ports_the_container_has() -> None:
    ports = {p["name"] for p in container()["ports"]}
    services = kind(MANIFEST, "Service")
    assert {p["targetPort"] for s in services for p in s["spec"]["ports"]} == ports
    (policy,) = kind(MANIFEST, "NetworkPolicy")
    allowed = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert sorted(allowed) == sorted(ports)
    # The admin listener is open only to labelled pods.
    (admin_rule,) = [r for r in policy["spec"]["ingress"] if "from" in r]
    assert [p["port"] for p in admin_rule["ports"]] == ["admin"]
    # Pods of this namespace only: a namespace selector would let any
    # namespace label a pod and reach the admin API.
    assert all("namespaceSelector" not in peer for peer in admin_rule["from"])


def test_the_pod_runs_as_the_images_user_without_privileges() -> None:
    (deployment,) = kind(MANIFEST, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    dockerfile = (CONFIG.parent / "Dockerfile").read_text()
    (uid,) = re.findall(r"useradd .*--uid (\d+)", dockerfile)
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsNonRoot"] is True
    hardening = container()["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True
    assert hardening["allowPrivilegeEscalation"] is False
    assert hardening["capabilities"]["drop"] == ["ALL"]
    # serve --workers writes shared metrics under the temporary folder.
    assert {m["mountPath"] for m in container()["volumeMounts"]} == {"/tmp"}
    assert container()["command"] + container()["args"] == ["rpa-gateway", "serve"]


async def test_the_probes_ask_paths_the_gateway_answers(context: Context) -> None:
    probes = {
        name: container()[name]["httpGet"]
        for name in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert {probe["port"] for probe in probes.values()} == {"gateway"}
    transport = httpx.ASGITransport(app=build_gateway_app(context))
    async with httpx.AsyncClient(transport=transport, base_url=GATEWAY) as client:
        for probe in probes.values():
            response = await client.get(probe["path"])
            assert response.status_code == 200, probe
    # Ready checks Redis and the subscription; the others only the process.
    assert probes["startupProbe"]["path"] == "/_gateway/ready"


# Traefik ----------------------------------------------------------------------


def test_traefik_asks_the_auth_endpoint_and_passes_only_the_identity() -> None:
    (dynamic,) = documents("traefik/dynamic.yml")
    middlewares = dynamic["http"]["middlewares"]
    forward = middlewares["rpa-gateway-auth"]["forwardAuth"]
    assert httpx.URL(forward["address"]).path == "/_gateway/auth"
    assert forward["trustForwardHeader"] is False
    passed = {name.lower() for name in forward["authResponseHeaders"]}
    assert passed == IDENTITY_HEADERS | {"x-request-id"}
    # The key is removed before the backend, and so are the underscore
    # spellings of the identity headers (some servers fold '_' into '-').
    removed = middlewares["rpa-strip-credentials"]["headers"]["customRequestHeaders"]
    assert set(removed.values()) == {""}
    removed_names = {name.lower() for name in removed}
    assert removed_names >= KEY_HEADERS
    assert {h.replace("-", "_") for h in IDENTITY_HEADERS} <= removed_names
    # Authenticate first, strip after.
    (router,) = dynamic["http"]["routers"].values()
    assert router["middlewares"] == ["rpa-gateway-auth", "rpa-strip-credentials"]


# Envoy ------------------------------------------------------------------------


def envoy_filters() -> tuple[dict[str, Any], dict[str, Any]]:
    (envoy,) = documents("envoy/envoy.yaml")
    (listener,) = envoy["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (manager,) = chain["filters"]
    return manager["typed_config"], envoy["static_resources"]


def test_envoy_sends_the_key_to_the_auth_endpoint_and_fails_closed() -> None:
    manager, resources = envoy_filters()
    ext_authz = next(
        f["typed_config"]
        for f in manager["http_filters"]
        if f["name"] == "envoy.filters.http.ext_authz"
    )
    assert ext_authz["failure_mode_allow"] is False
    service = ext_authz["http_service"]
    assert service["path_prefix"] == "/_gateway/auth"
    cluster = service["server_uri"]["cluster"]
    assert cluster in {c["name"] for c in resources["clusters"]}
    sent = {
        p["exact"]
        for p in service["authorization_request"]["allowed_headers"]["patterns"]
    }
    assert sent >= KEY_HEADERS
    answer = service["authorization_response"]
    upstream = {p["exact"] for p in answer["allowed_upstream_headers"]["patterns"]}
    assert upstream == IDENTITY_HEADERS | {"x-request-id"}
    client = {p["exact"] for p in answer["allowed_client_headers"]["patterns"]}
    assert "www-authenticate" in client and "retry-after" in client


def test_envoy_strips_the_key_and_refuses_underscore_headers() -> None:
    manager, _ = envoy_filters()
    options = manager["common_http_protocol_options"]
    assert options["headers_with_underscores_action"] == "REJECT_REQUEST"
    (host,) = manager["route_config"]["virtual_hosts"]
    for route in host["routes"]:
        assert set(route["request_headers_to_remove"]) >= KEY_HEADERS
