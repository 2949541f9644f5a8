"""The deployment files, checked without a Docker engine or a cluster."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"


def manifests() -> dict[str, dict]:
    docs = [d for path in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_kubernetes_manifests_parse_and_wire_together():
    m = manifests()
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "PersistentVolumeClaim"} <= set(m)
    pod = m["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["envFrom"][0]["configMapRef"]["name"] == m["ConfigMap"]["metadata"]["name"]
    mounts = {v["mountPath"]: v for v in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [m["PersistentVolumeClaim"]["metadata"]["name"]]
    assert m["ConfigMap"]["data"]["JPEGWEIGHTS_MODEL_DIR"] == "/models"
    assert m["Service"]["spec"]["selector"] == m["Deployment"]["spec"]["selector"]["matchLabels"]
    assert m["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == m["Deployment"]["metadata"]["name"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (make test installs it with apt-get when run as root)",
)
def test_docker_compose_config_validates():
    result = subprocess.run(["docker-compose", "config"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["services"]["jpegweights"]["deploy"]["replicas"] == 2
    assert any(v.endswith(":/models:ro") for v in config["services"]["jpegweights"]["volumes"])
    nginx = config["services"]["nginx"]
    assert any("deploy/nginx.conf:/etc/nginx/templates/default.conf.template" in v for v in nginx["volumes"])
    scaled = subprocess.run(
        ["docker-compose", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"REPLICAS": "5", "PATH": "/usr/bin:/bin"},
    )
    assert yaml.safe_load(scaled.stdout)["services"]["jpegweights"]["deploy"]["replicas"] == 5
