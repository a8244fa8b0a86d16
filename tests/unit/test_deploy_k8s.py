"""Offline checks of deploy/k8s: no cluster, no Docker.

- Each overlay is resolved by a small Python merge written for the transformations these overlays
  use (namespace, images, inline JSON 6902 patches); where `kubectl` is installed the result must
  equal `kubectl kustomize`'s, so the merge cannot drift from the real thing.
- Every built-in object is validated by kubernetes-validate against the newest Kubernetes schema it
  ships, strict (unknown fields fail).
- The custom resources (ServiceMonitor, PrometheusRule, KServe ServingRuntime/InferenceService) and
  the prometheus-adapter Helm values have no schema there: they are checked structurally here, and
  against the objects and rules they refer to.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ..conftest import matteserve_accepts  # type: ignore[import-not-found]

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu-dev", "gpu-prod")
RULES = ROOT / "deploy" / "observability" / "rules"
CUSTOM = {"ServiceMonitor", "PrometheusRule", "ServingRuntime", "InferenceService"}
K8S_VERSION = kubernetes_validate.utils.latest_version()

Obj = dict[str, Any]


def load_all(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def json_pointer(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for raw in path.lstrip("/").split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        parts.append(int(part) if part.isdigit() else part)
    return parts


def apply_json_patch(obj: Obj, ops: list[Obj]) -> None:
    for op in ops:
        *parents, last = json_pointer(op["path"])
        node: Any = obj
        for part in parents:
            node = node[part]
        if op["op"] == "remove":
            del node[last]
        elif op["op"] in ("add", "replace"):
            if op["op"] == "replace":
                assert last in node if isinstance(node, dict) else last < len(node), op
            if isinstance(node, list) and op["op"] == "add":
                node.insert(len(node) if last == "-" else int(last), op["value"])
            else:
                node[last] = op["value"]
        else:
            raise AssertionError(f"the Python merge does not implement {op['op']!r}")


def set_images(obj: Obj, images: list[Obj]) -> None:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
        name = container["image"].split(":")[0]
        for image in images:
            if image["name"] == name:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"


def python_kustomize(folder: Path) -> list[Obj]:
    """Resolve a kustomization the way kustomize does for the features used under deploy/k8s."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
    assert set(kustomization) <= known, f"{folder}: the Python merge does not implement {set(kustomization) - known}"
    objects: list[Obj] = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        objects += python_kustomize(path) if path.is_dir() else load_all(path)
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matches = [o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
        assert len(matches) == 1, f"patch target {target} matches {len(matches)} objects"
        apply_json_patch(matches[0], yaml.safe_load(patch["patch"]))
    if images := kustomization.get("images"):
        # An overlay's image entry is matched against the base's original name, as kustomize does.
        for obj in objects:
            set_images(obj, images)
    if namespace := kustomization.get("namespace"):
        for obj in objects:
            if obj["kind"] == "Namespace":
                continue
            obj["metadata"]["namespace"] = namespace
    return objects


def resolved(overlay: str) -> list[Obj]:
    return python_kustomize(K8S / "overlays" / overlay)


def by_kind(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_spec(objects: list[Obj], name: str) -> Obj:
    return dict(by_kind(objects, "Deployment")[name]["spec"]["template"]["spec"])


def key(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_python_merge_equals_kubectl_kustomize(overlay: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here: the overlays are resolved only by the Python merge")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, check=True
    )
    real = {key(o): o for o in yaml.safe_load_all(result.stdout) if o}
    ours = {key(o): o for o in resolved(overlay)}
    assert real.keys() == ours.keys()
    for k, obj in ours.items():
        assert obj == real[k], f"{k} differs from kubectl kustomize"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_builtin_object_validates_against_kubernetes(overlay: str) -> None:
    objects = [o for o in resolved(overlay) if o["kind"] not in CUSTOM]
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= {
        o["kind"] for o in objects
    }
    for obj in objects:
        kubernetes_validate.validate(copy.deepcopy(obj), K8S_VERSION, strict=True)


def test_kubernetes_validate_rejects_a_broken_manifest() -> None:
    deployment = copy.deepcopy(by_kind(resolved("gpu-prod"), "Deployment")["matteserve-triton"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_services_and_disruption_budgets_find_their_pods(overlay: str) -> None:
    objects = resolved(overlay)
    deployments = by_kind(objects, "Deployment")
    for deployment in deployments.values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
    for kind, selector_of in (
        ("Service", lambda o: o["spec"]["selector"]),
        ("PodDisruptionBudget", lambda o: o["spec"]["selector"]["matchLabels"]),
        ("NetworkPolicy", lambda o: o["spec"]["podSelector"]["matchLabels"]),
        ("ServiceMonitor", lambda o: o["spec"]["selector"]["matchLabels"]),
    ):
        for obj in by_kind(objects, kind).values():
            selector = selector_of(obj)
            if kind == "ServiceMonitor":
                services = [s["metadata"]["labels"] for s in by_kind(objects, "Service").values()]
                assert sum(selector.items() <= s.items() for s in services) == 1, obj["metadata"]["name"]
                continue
            assert sum(selector.items() <= p.items() for p in pods) == 1, f"{kind} {obj['metadata']['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_pods_have_probes_shm_and_limits(overlay: str) -> None:
    spec = pod_spec(resolved(overlay), "matteserve-triton")
    triton = spec["containers"][0]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in triton["volumeMounts"]
    assert {m["name"] for m in triton["volumeMounts"]} <= volumes.keys()
    for container in [*spec["containers"], *spec.get("initContainers", [])]:
        assert container["resources"]["requests"]["memory"]
        assert container["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}


def test_gpu_prod_triton_holds_a_gpu_and_checks_its_engine_before_starting() -> None:
    objects = resolved("gpu-prod")
    spec = pod_spec(objects, "matteserve-triton")
    for container in [*spec["containers"], *spec["initContainers"]]:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (init,) = spec["initContainers"]
    assert init["command"] == ["matteserve", "build", "--target", "gpu", "--if-stale"]
    assert init["args"] == ["--out", "$(MATTESERVE_REPOSITORY)"]
    claim = {v["name"]: v for v in spec["volumes"]}["models"]["persistentVolumeClaim"]["claimName"]
    assert claim in by_kind(objects, "PersistentVolumeClaim")


def test_gpu_pods_share_engines_keep_their_own_repository_and_size_from_their_cpu_request() -> None:
    spec = pod_spec(resolved("gpu-prod"), "matteserve-triton")
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in [*spec["containers"], *spec["initContainers"]]:
        env = {e["name"]: e for e in container["env"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        engines, repository = env["MATTESERVE_ENGINES"]["value"], env["MATTESERVE_REPOSITORY"]["value"]
        assert mounts[str(Path(engines).parent)] == "models", "engines live on the shared volume"
        assert "persistentVolumeClaim" in volumes["models"]
        assert "emptyDir" in volumes[mounts[str(Path(repository).parent)]], "each pod renders its own repository"
        cpus = env["MATTESERVE_CPUS"]["valueFrom"]["resourceFieldRef"]
        assert (cpus["containerName"], cpus["resource"]) == ("triton", "requests.cpu")
        assert "MATTESERVE_PYTHON_SHM_BYTES" not in env, "sized from /dev/shm and the instance count"


def test_cpu_dev_runs_the_cpu_image_without_gpus() -> None:
    spec = pod_spec(resolved("cpu-dev"), "matteserve-triton")
    assert "initContainers" not in spec
    (triton,) = spec["containers"]
    assert triton["image"].startswith("matteserve/cpu:")
    assert triton["command"] == ["matteserve", "serve"]
    assert "--address=0.0.0.0" in triton["args"]
    matteserve_accepts([*triton["command"], *triton["args"]])
    assert "nvidia.com/gpu" not in str(triton["resources"])
    probe = triton["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 30 * 60, "the first build quantises for minutes"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_targets_the_headless_triton_service(overlay: str) -> None:
    objects = resolved(overlay)
    service = by_kind(objects, "Service")["matteserve-triton"]
    assert service["spec"]["clusterIP"] == "None"
    args = pod_spec(objects, "matteserve-gateway")["containers"][0]["args"]
    (triton,) = [a.split("=", 1)[1] for a in args if a.startswith("--triton=")]
    namespace = service["metadata"]["namespace"]
    assert triton == f"dns:///matteserve-triton.{namespace}.svc.cluster.local:8001"
    assert "--host=0.0.0.0" in args
    assert any(a.startswith("--api-keys-file=") for a in args)
    matteserve_accepts(["matteserve", "gateway", *args])  # the gateway image's entrypoint


def test_only_the_gateway_reaches_triton_inference_ports() -> None:
    policy = by_kind(resolved("gpu-prod"), "NetworkPolicy")["matteserve-triton"]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(by_port) == {8001, 8002}
    (peer,) = by_port[8001]
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert all("podSelector" not in p for p in by_port[8002]), "metrics are read by Prometheus' namespace"


def adapter_rules() -> list[Obj]:
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    return list(values["rules"]["custom"])


def recorded_and_exported_names() -> set[str]:
    names = {
        rule["record"]
        for path in RULES.glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    return names | {"matteserve_gateway_in_flight_requests"}


def test_the_prometheus_adapter_config_is_well_formed_and_reads_real_series() -> None:
    """Structural: prometheus-adapter's config has no schema in kubernetes-validate."""
    for rule in adapter_rules():
        series = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}", rule["seriesQuery"])
        assert series, rule["seriesQuery"]
        assert series.group(1) in recorded_and_exported_names()
        assert re.search(rule["name"]["matches"], series.group(1))
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert "<<.Series>>" in rule["metricsQuery"]
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_autoscaler_reads_a_metric_the_adapter_serves(overlay: str) -> None:
    objects = resolved(overlay)
    served = {rule["name"]["as"] for rule in adapter_rules()}
    deployments = by_kind(objects, "Deployment")
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    assert set(hpas) == {"matteserve-triton", "matteserve-gateway"}
    for hpa in hpas.values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        for metric in hpa["spec"]["metrics"]:
            assert metric["type"] == "Pods"
            assert metric["pods"]["metric"]["name"] in served


def test_the_prometheus_rule_carries_exactly_the_observability_rules() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync_rules", K8S / "sync_rules.py")
    assert spec
    assert spec.loader
    sync_rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync_rules)
    (shipped,) = load_all(K8S / "base" / "prometheusrule.yaml")
    assert shipped == sync_rules.prometheus_rule(), "run `python deploy/k8s/sync_rules.py`"


def test_service_monitors_scrape_named_metrics_ports() -> None:
    """Structural: ServiceMonitor is a Prometheus Operator CRD."""
    objects = resolved("gpu-prod")
    services = by_kind(objects, "Service")
    for monitor in by_kind(objects, "ServiceMonitor").values():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        (endpoint,) = monitor["spec"]["endpoints"]
        selector = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [s for s in services.values() if selector.items() <= s["metadata"]["labels"].items()]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"


def test_the_kserve_alternative_is_well_formed() -> None:
    """Structural: ServingRuntime and InferenceService are KServe CRDs."""
    runtime, service = load_all(K8S / "kserve" / "inferenceservice.yaml")
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["storageUri"].startswith("pvc://matteserve-models/")
    (container,) = runtime["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    (dshm,) = runtime["spec"]["volumes"]
    assert dshm["emptyDir"]["medium"] == "Memory"
    # The container part is a core PodSpec container: validate it through a Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [container]}}
    pod["spec"]["volumes"] = runtime["spec"]["volumes"]
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
