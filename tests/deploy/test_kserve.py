"""deploy/kserve/, checked without a cluster: each manifest against KServe's own CRD schema
(vendored in deploy/kserve/crds/, see its NOTICE), the runtime against the server it runs, and
the InferenceService against the runtime.

The CRDs' schemas are turned into JSON Schema (draft 4, which OpenAPI 3.0's schemas follow) with
the Kubernetes extensions honoured: an object without ``x-kubernetes-preserve-unknown-fields``
takes no fields its schema does not name (what ``kubectl apply``'s strict field validation
refuses; the API server alone would drop them silently), ``x-kubernetes-int-or-string`` takes
both, ``nullable`` takes null. CEL rules (``x-kubernetes-validations``) are not evaluated.
"""

from __future__ import annotations

import copy
import hashlib
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from jpegweights.cli.main import build_parser
from jpegweights.service import Settings
from tests.conftest import ROOT

KSERVE = ROOT / "deploy" / "kserve"
CRDS = KSERVE / "crds"
# The part of ObjectMeta the manifests use (the API server checks metadata itself, not the CRD).
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {"name": NAME, "namespace": NAME, "labels": LABELS, "annotations": LABELS},
}


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 2 MB: C if there


def strict(schema: dict) -> dict:
    """A CRD's structural schema as JSON Schema that refuses what strict field validation refuses."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict(s) for s in out[key]]
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if schema.get("x-kubernetes-embedded-resource"):  # apiVersion, kind and metadata come with it
        out["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, **out.get("properties", {})}
        out["properties"].setdefault("metadata", {"type": "object"})
    if out.get("type") == "object" and "additionalProperties" not in out:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if schema.get("nullable") and "type" in out:
        out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
    return out


@cache
def validators() -> dict[tuple[str, str], jsonschema.Draft4Validator]:
    """(apiVersion, kind) -> a validator, for each version the vendored CRDs serve."""
    found = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = load_yaml(path)
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = OBJECT_META
            schema["required"] = ["apiVersion", "kind", "metadata", "spec", *schema.get("required", [])]
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            found[key] = jsonschema.Draft4Validator(schema)
    return found


def problems(manifest: dict) -> list[str]:
    """What the CRD's schema finds wrong with ``manifest``: ["path: message"], [] when valid."""
    validator = validators().get((manifest.get("apiVersion"), manifest.get("kind")))
    if validator is None:
        return [f"no vendored CRD serves {manifest.get('apiVersion')} {manifest.get('kind')}"]
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message[:200]}" for e in errors]


def manifests() -> dict[str, dict]:
    docs = [d for path in sorted(KSERVE.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_the_vendored_crds_are_the_release_their_notice_names():
    notice = (CRDS / "NOTICE").read_text()
    listed = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", notice, re.M))
    assert set(listed) == {p.name for p in CRDS.glob("*.yaml")}
    for name, digest in listed.items():
        assert hashlib.sha256((CRDS / name).read_bytes()).hexdigest() == digest, f"{name} differs from the release"
    assert "Apache License" in (CRDS / "LICENSE").read_text() and "Release: v" in notice


@pytest.mark.parametrize("kind", ["ClusterServingRuntime", "InferenceService"])
def test_manifests_validate_against_kserve_crds(kind):
    assert problems(manifests()[kind]) == []


def edit(kind: str, path: str, value: Any) -> dict:
    """The manifest of ``kind`` with ``value`` at the dotted ``path`` (a list index as a number;
    None deletes it)."""
    doc = copy.deepcopy(manifests()[kind])
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = doc
    for p in parents:
        target = target[p]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return doc


@pytest.mark.parametrize(
    ("kind", "path", "value", "expected"),
    [
        # misspelt fields, refused as kubectl's strict validation would
        ("InferenceService", "spec.predictor.model.storageURI", "s3://x/y", "'storageURI' was unexpected"),
        ("InferenceService", "spec.predictor.modle", {}, "'modle' was unexpected"),
        ("ClusterServingRuntime", "spec.supportedModelFormats.0.autoselect", True, "'autoselect' was unexpected"),
        ("ClusterServingRuntime", "spec.containers.0.ports.0.containerport", 8080, "'containerport' was unexpected"),
        # wrong types
        ("InferenceService", "spec.predictor.minReplicas", "one", "'one' is not of type 'integer'"),
        ("ClusterServingRuntime", "spec.protocolVersions", "v2", "'v2' is not of type 'array'"),
        ("ClusterServingRuntime", "spec.containers.0.resources.limits.cpu", True, "True is not of type"),
        # required fields missing
        ("ClusterServingRuntime", "spec.containers", None, "'containers' is a required property"),
        ("ClusterServingRuntime", "spec.supportedModelFormats.0.name", None, "'name' is a required property"),
        ("InferenceService", "metadata.name", "Not_A_Name", "does not match"),
        ("InferenceService", "apiVersion", "serving.kserve.io/v1", "no vendored CRD serves"),
    ],
)
def test_a_broken_manifest_is_refused(kind, path, value, expected):
    found = problems(edit(kind, path, value))
    assert any(expected in p for p in found), found


def test_what_kubernetes_allows_is_allowed():
    """int-or-string takes both; fields under x-kubernetes-preserve-unknown-fields (the
    InferenceService's status, its only such object) are kept, not refused."""
    assert problems(edit("ClusterServingRuntime", "spec.containers.0.resources.limits.cpu", 2)) == []
    assert problems(edit("ClusterServingRuntime", "spec.containers.0.readinessProbe.httpGet.port", "http1")) == []
    assert problems(edit("InferenceService", "status", {"anything": {"at": "all"}})) == []


def test_the_service_runs_on_the_runtime():
    runtime, service = manifests()["ClusterServingRuntime"], manifests()["InferenceService"]
    model = service["spec"]["predictor"]["model"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] == "jpegweights" and "jpegweights" in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"] == ["v2"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["storageUri"].split("://")[0] in {"s3", "gs", "pvc", "https", "hf", "oci"}


def test_the_runtime_runs_jpegweights_serve_on_kserves_folder_and_port():
    container = manifests()["ClusterServingRuntime"]["spec"]["containers"][0]
    assert container["name"] == "kserve-container"  # the container KServe wires storage and routing to
    assert container["image"].startswith("jpegweights:")
    command = [*container["command"], *container["args"]]
    assert command[:2] == ["jpegweights", "serve"], shlex.join(command)
    args = build_parser().parse_args(command[1:])  # the real CLI: an option it lacks fails here
    assert args.model_dir == Path("/mnt/models") and args.host == "0.0.0.0" and args.port == 8080
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    env = {e["name"]: e["value"] for e in container["env"]}
    fields = {f"JPEGWEIGHTS_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["JPEGWEIGHTS_CACHE_DIR"] in mounts  # the one folder the server writes: a volume of its own
