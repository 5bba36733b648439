"""The deployment files, checked without a cluster or a Docker engine: the Kubernetes manifests
against the Kubernetes JSON schemas (kubernetes-validate, offline), the KServe resources for
their required fields, the Dockerfile's structure and sources, and — the check that matters
most — the exact arguments each manifest gives kiln, run by the real binary, with every probe
path answering 200 without a token."""

import os
import re
import shutil
import subprocess
import urllib.request

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from conftest import ROOT, KilnServer, kiln_bin, make_repository

DEPLOY = ROOT / "deploy"


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kubernetes_files():
    return sorted((DEPLOY / "kubernetes").glob("*.yaml"))


@pytest.mark.parametrize("path", kubernetes_files(), ids=lambda p: p.name)
def test_kubernetes_manifests_match_the_schemas(path):
    result = subprocess.run(
        [shutil.which("kubernetes-validate") or str(ROOT / ".venv/bin/kubernetes-validate"),
         "--strict", "--kubernetes-version", "1.33.0", str(path)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "INFO" in result.stdout or "passed" in result.stdout.lower(), result.stdout


def test_the_deployment_has_what_running_many_replicas_needs():
    docs = {d["kind"]: d for d in documents(DEPLOY / "kubernetes" / "kiln.yaml")}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(docs)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    args = container["args"]
    flag = lambda name: float(next(a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")))
    # The kubelet must not kill a pod that is still draining.
    assert pod["terminationGracePeriodSeconds"] > flag("shutdown-delay-secs") + flag("shutdown-timeout-secs")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]


def test_kserve_resources_name_a_v2_runtime():
    runtime = documents(DEPLOY / "kserve" / "servingruntime.yaml")[0]
    service = documents(DEPLOY / "kserve" / "inferenceservice.yaml")[0]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and runtime["kind"] == "ServingRuntime"
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert runtime["spec"]["containers"][0]["args"][1] == "/mnt/models"  # where KServe puts the model


def substitute(args, repo, tokens):
    """The manifest's arguments with cluster paths mapped onto this machine; the ports are left
    to KilnServer (free ports)."""
    out = []
    for a in args:
        if re.match(r"^--(http|grpc|metrics)-port=\d+$", a):
            continue
        a = a.replace("/mnt/models", str(repo)).replace("/models", str(repo))
        a = a.replace("/etc/kiln/tokens", str(tokens))
        out.append(a)
    assert out[0] == "serve"
    return out[2:]  # KilnServer passes `serve REPO` itself


@pytest.mark.parametrize("manifest", ["kubernetes/kiln.yaml", "kserve/servingruntime.yaml"])
def test_the_manifest_arguments_start_kiln_and_the_probes_need_no_token(tmp_path, manifest):
    docs = documents(DEPLOY / manifest)
    spec = next(d for d in docs if d["kind"] in ("Deployment", "ServingRuntime"))["spec"]
    container = (spec["template"]["spec"] if "template" in spec else spec)["containers"][0]
    tokens = tmp_path / "tokens"
    tokens.write_text("ops admin 0123456789abcdef0123456789abcdef\n")
    repo = make_repository(tmp_path)
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    env.pop("KILN_HOST", None)  # tests stay on loopback
    server = KilnServer(repo, substitute(container["args"], repo, tokens), env={**env, "KILN_RECORDS": "off"})
    try:
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in container:
                path = container[probe]["httpGet"]["path"]
                with urllib.request.urlopen(f"http://{server.url}{path}", timeout=10) as r:
                    assert r.status == 200, (probe, path)
    finally:
        assert server.stop(timeout=60) == 0


def test_the_dockerfile_builds_kiln_and_runs_it_as_non_root():
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    stages = [i for i in parser.structure if i["instruction"] == "FROM"]
    assert [s["value"].split()[-1] for s in stages] == ["build", "runtime", "final"]
    # Every image is pinned to a version, never `latest`.
    for s in stages:
        image = s["value"].split()[0]
        assert ":" in image and not image.endswith(":latest"), image
    # Every source that COPY takes from the build context exists in the repository.
    for i in parser.structure:
        if i["instruction"] == "COPY" and "--from" not in i["value"]:
            for source in i["value"].split()[:-1]:
                assert (ROOT / source).exists(), source
    final = parser.structure[parser.structure.index(stages[-1]):]
    user = [i["value"] for i in final if i["instruction"] == "USER"]
    assert user and user[-1] not in ("0", "root")
    assert parser.baseimage.startswith("debian:")
    # The build command is the one this repository's own release build uses.
    assert "cargo build --release --locked -p kiln-cli" in parser.content
    # The ENV names are real kiln settings, and the library path matches the pinned wheel's layout.
    help_text = subprocess.run([kiln_bin(), "serve", "--help"], capture_output=True, text=True).stdout
    for name in re.findall(r"\b(KILN_[A-Z_]+)=", parser.content):
        if name != "KILN_ONNXRUNTIME":
            assert f"env: {name}=" in help_text, name
    global_help = subprocess.run([kiln_bin(), "--help"], capture_output=True, text=True).stdout
    assert "KILN_ONNXRUNTIME" in global_help
    wheel_libs = list((ROOT / ".venv").glob("lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*"))
    assert wheel_libs, "the onnxruntime wheel no longer ships capi/libonnxruntime.so.*"
    assert os.path.exists(ROOT / "python" / "requirements-runtime.txt")
