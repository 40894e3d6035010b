"""Container images with podman, built here without any registry (issue 14 item 1).

    .venv/bin/python scripts/images.py build [SERVICE ...]   # make images (default: all + envoy)
    .venv/bin/python scripts/images.py test                  # make images-test
    .venv/bin/python scripts/images.py sizes                 # size and three largest parts of each
    .venv/bin/python scripts/images.py smoke                 # make k8s-smoke: podman kube play of deploy/k8s

- base `localhost/medseg-base:bookworm`: `debootstrap --variant=minbase` of Debian bookworm
  with python3 and CA certificates, docs/man/apt lists removed, `podman import`ed;
- wheelhouse on the host (`pip wheel` of every service's requirements and the medseg package;
  the build mounts it read-only, so nothing is downloaded inside a build);
- one image per server from deploy/podman/Containerfile.service (multi-stage: pip runs from
  its wheel in the first stage; the final stage holds /opt/site, the service's code and
  nothing else), and the gateway from deploy/podman/Containerfile.envoy (Envoy's binary).

podman runs with CONTAINERS_CONF=deploy/podman/containers.conf (runc, explicit ulimits).
Work folders: MEDSEG_IMAGES_WORK (default /var/tmp/medseg-images).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WORK = Path(os.environ.get("MEDSEG_IMAGES_WORK", "/var/tmp/medseg-images"))
ROOTFS, WHEELS, BUILD = WORK / "rootfs", WORK / "wheels", WORK / "build"
BASE = "localhost/medseg-base:bookworm"
TAG = "dev"
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": str(REPO / "deploy" / "podman" / "containers.conf")}
SERVERS = ("postprocess", "smoothing", "case", "nnunet")
# Removed from the base: documentation, manuals, translations, apt's package lists and cache.
BASE_PRUNE = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
              "var/cache/apt", "var/lib/apt/lists", "var/cache/debconf/templates.dat-old")


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(args), flush=True)
    return subprocess.run(args, check=True, env=PODMAN_ENV, **kw)


def podman(*args: str, **kw) -> subprocess.CompletedProcess:
    return run("podman", *args, **kw)


def image(name: str) -> str:
    return f"localhost/medseg-{name}:{TAG}"


def exists(ref: str) -> bool:
    return subprocess.run(["podman", "image", "exists", ref], env=PODMAN_ENV).returncode == 0


# --- base and wheelhouse ---------------------------------------------------------------------

def build_base() -> None:
    if exists(BASE):
        print(f"{BASE} exists")
        return
    if not (ROOTFS / "usr" / "bin" / "python3").exists():
        shutil.rmtree(ROOTFS, ignore_errors=True)
        run("debootstrap", "--variant=minbase", "--include=python3,ca-certificates", "bookworm",
            str(ROOTFS), "http://deb.debian.org/debian")
    for part in BASE_PRUNE:
        shutil.rmtree(ROOTFS / part, ignore_errors=True)
    for folder in ("data", "models"):
        (ROOTFS / folder).mkdir(exist_ok=True)
        os.chown(ROOTFS / folder, 10001, 10001)
    tar = subprocess.Popen(["tar", "-C", str(ROOTFS), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    podman("import", "--change", 'CMD ["python3"]', "-", BASE, stdin=tar.stdout)
    tar.wait()


def requirements(service: str) -> list[str]:
    lines = (REPO / f"{service}_svc" / "requirements.txt").read_text().splitlines()
    reqs = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    return reqs + ["medseg[server]"]


def build_wheelhouse() -> None:
    WHEELS.mkdir(parents=True, exist_ok=True)
    pip = [str(REPO / ".venv" / "bin" / "pip"), "wheel", "-q", "-w", str(WHEELS)]
    run(*pip, "--no-deps", str(REPO / "python"))  # the medseg package, always fresh
    wanted = sorted({r for s in SERVERS for r in requirements(s) if not r.startswith("medseg")})
    extras = ["grpcio-reflection==1.85.1", "grpcio-status==1.85.1", "prometheus-client>=0.20",
              "highdicom>=0.23", "pip"]
    run(*pip, *wanted, *extras, "grpcio==1.85.1", "grpcio-health-checking==1.85.1", "protobuf>=6.31",
        "pydicom>=3.0")


# --- images ----------------------------------------------------------------------------------

def _copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(
        "__pycache__", "*.pyc", "Dockerfile*", "demo_training.json"))


def build_server(service: str) -> None:
    from medseg import addresses

    context = BUILD / service
    shutil.rmtree(context, ignore_errors=True)
    (context / "app").mkdir(parents=True)
    _copy_tree(REPO / f"{service}_svc", context / "app" / f"{service}_svc")
    if service == "nnunet":  # the demo weights and their registry (a volume replaces them)
        _copy_tree(REPO / "models", context / "app" / "models")
    (context / "requirements.txt").write_text("\n".join(requirements(service)) + "\n")
    podman("build", "--format", "docker", "-v", f"{WHEELS}:/wheels:ro", "--build-arg", f"BASE={BASE}",
           "--build-arg", f"SERVICE={service}", "--build-arg", f"PORT={addresses._DEFAULT_PORTS[service]}",
           "-f", str(REPO / "deploy" / "podman" / "Containerfile.service"), "-t", image(service), str(context))


def build_envoy() -> None:
    import envoy

    context = BUILD / "envoy"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    shutil.copy2(Path(envoy.__file__).parent / "_bin" / "envoy", context / "envoy")
    podman("build", "--format", "docker", "--build-arg", f"BASE={BASE}",
           "-f", str(REPO / "deploy" / "podman" / "Containerfile.envoy"), "-t", image("envoy"), str(context))


def build(names: list[str]) -> None:
    start = time.monotonic()
    build_base()
    if not list(WHEELS.glob("medseg-*.whl")) or not list(WHEELS.glob("pip-*.whl")):
        build_wheelhouse()
    for name in names or [*SERVERS, "envoy"]:
        build_envoy() if name == "envoy" else build_server(name)
    print(f"built {', '.join(names or [*SERVERS, 'envoy'])} in {time.monotonic() - start:.0f} s")
    sizes(names)


def sizes(names: list[str] | None = None) -> None:
    """Each image's size and its three largest parts (site-packages entries and /app)."""
    for name in names or [*SERVERS, "envoy"]:
        ref = image(name)
        if not exists(ref):
            continue
        size = int(subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", ref], env=PODMAN_ENV,
                                  capture_output=True, text=True, check=True).stdout.strip())
        parts = "/usr/local/bin/envoy" if name == "envoy" else "/opt/site/* /app/*"
        du = subprocess.run(["podman", "run", "--rm", "--entrypoint", "sh", ref, "-c", f"du -sk {parts} | sort -n | tail -3"],
                            env=PODMAN_ENV, capture_output=True, text=True).stdout.split("\n")
        largest = ", ".join(f"{Path(p).name} {int(k) / 1024:.0f} MB" for k, p in
                            (line.split("\t") for line in reversed(du) if "\t" in line))
        print(f"{ref}: {size / 1e6:.0f} MB; largest: {largest}")
    if exists(BASE):
        size = int(subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", BASE], env=PODMAN_ENV,
                                  capture_output=True, text=True, check=True).stdout.strip())
        print(f"{BASE}: {size / 1e6:.0f} MB")


# --- images-test -----------------------------------------------------------------------------

def test(timeout: float = 900.0) -> int:
    """The built images together in one pod (Envoy + postprocess + nnunet, read-only root
    filesystems): a Measure and a SegmentTumor call through the containerised Envoy."""
    import numpy as np

    from gateway_envoy.stack import Stack, free_ports
    from medseg.client import Client, Ref
    from medseg.phantom import make_phantom
    from medseg.volumes import Volume, write_volume

    services = ["postprocess", "nnunet"]
    folder = BUILD / "images-test"
    shutil.rmtree(folder, ignore_errors=True)
    data = folder / "data"
    data.mkdir(parents=True)
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[3:9, 3:9, 3:9] = 1
    write_volume(Volume(mask, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), data / "mask.nii.gz")
    make_phantom(size=(48, 48, 32), seed=7).write(data / "case")
    for path in [data, *data.rglob("*")]:
        os.chown(path, 10001, 10001)
    # Envoy's config: the local template (servers on the pod's loopback), listening on all
    # interfaces inside the pod; the host reaches it through a published port.
    stack = Stack(run_dir=folder / "run", data_root=data, services=services)
    stack.listen_address = "0.0.0.0"
    config = stack.render()["envoy.yaml"]
    gateway_port = free_ports(1)[0]
    pod = "medseg-images-test"
    subprocess.run(["podman", "pod", "rm", "-f", pod], env=PODMAN_ENV, capture_output=True)
    start = time.monotonic()
    try:
        podman("pod", "create", "--name", pod, "-p", f"127.0.0.1:{gateway_port}:{stack.ports['gateway']}")
        common = ["--pod", pod, "--read-only", "--tmpfs", "/tmp", "-d"]
        for service in services:
            podman("run", *common, "--name", f"{pod}-{service}", "-v", f"{data}:/data", "-e", "OMP_NUM_THREADS=1",
                   image(service))
        podman("run", *common, "--name", f"{pod}-envoy", "-v", f"{config}:/etc/envoy/envoy.yaml:ro", image("envoy"))
        gateway = f"127.0.0.1:{gateway_port}"
        while True:
            with Client(gateway) as client:
                states = client.status(timeout=3)
            if all(states[s] == "SERVING" for s in services):
                break
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"not SERVING after {timeout:.0f} s: {states}")
            time.sleep(2)
        ready = time.monotonic() - start
        with Client(gateway, timeout=600) as client:
            measured = client.measure(Ref("mask.nii.gz")).result.labels[0].voxel_count
            assert measured == 216, measured
            tumor = client.segment_tumor(Ref("case/portal.nii.gz"), inline=True)
            labels = {l.name: l.voxel_count for l in tumor.result.outputs[0].labels}
            assert labels.get("kidney", 0) > 0, labels
        print(f"images-test: SERVING through the containerised Envoy {ready:.0f} s after start; "
              f"Measure 216 voxels; SegmentTumor labels {labels}; total {time.monotonic() - start:.0f} s")
        return 0
    finally:
        for service in [*services, "envoy"]:
            logs = subprocess.run(["podman", "logs", "--tail", "5", f"{pod}-{service}"], env=PODMAN_ENV,
                                  capture_output=True, text=True)
            print(f"--- {service}: {(logs.stdout + logs.stderr).strip()[-600:]}")
        for _ in range(3):  # without systemd, removing the health-check timers can fail once
            if subprocess.run(["podman", "pod", "rm", "-f", pod], env=PODMAN_ENV, capture_output=True).returncode == 0:
                break


# --- k8s-smoke --------------------------------------------------------------------------------

SMOKE_NETWORK = "medseg-smoke"
# podman kube play has no Services: each headless Service becomes a network alias on the pods
# it selects (aardvark-dns then answers the name with every replica, as a headless Service does).
SMOKE_ALIASES = {"nnunet": ["nnunet", "nnunet-all"], "postprocess": ["postprocess"]}


def _volume_dir(name: str) -> Path:
    subprocess.run(["podman", "volume", "rm", "-f", name], env=PODMAN_ENV, capture_output=True)
    podman("volume", "create", name, capture_output=True)
    path = subprocess.run(["podman", "volume", "inspect", "--format", "{{.Mountpoint}}", name], env=PODMAN_ENV,
                          capture_output=True, text=True, check=True).stdout.strip()
    return Path(path)


def _ip(container: str) -> str:
    return subprocess.run(["podman", "inspect", "--format",
                           f"{{{{(index .NetworkSettings.Networks \"{SMOKE_NETWORK}\").IPAddress}}}}", container],
                          env=PODMAN_ENV, capture_output=True, text=True, check=True).stdout.strip()


def smoke(timeout: float = 900.0) -> int:
    """`podman kube play` of deploy/k8s (cpu overlay: Envoy, 2 postprocess and 2 nnunet
    replicas, the claims as named volumes holding the demo models and a test case), calls
    through Envoy's pod, each replica seen serving in Envoy's stats, then torn down."""
    import json
    import urllib.request

    import numpy as np
    import yaml

    from medseg.client import Client, Ref
    from medseg.phantom import make_phantom
    from medseg.volumes import Volume, write_volume
    sys.path.insert(0, str(REPO / "scripts"))
    import k8s

    docs = k8s.render(REPO / "deploy" / "k8s" / "overlays" / "cpu")
    keep = {("Deployment", "envoy"), ("Deployment", "postprocess"), ("Deployment", "nnunet"),
            ("ConfigMap", "medseg-envoy")}
    # The claims are made below as named volumes (kube play would refuse existing ones).
    played = []
    for doc in docs:
        if (doc["kind"], doc["metadata"]["name"]) not in keep:
            continue
        if doc["kind"] == "Deployment":
            doc["spec"]["replicas"] = 1 if doc["metadata"]["name"] == "envoy" else 2
            for container in doc["spec"]["template"]["spec"]["containers"]:
                # podman publishes every containerPort on the host (a cluster does not): two
                # replicas would collide. Pods are reached on their own addresses instead.
                container.pop("ports", None)
                limits = container.get("resources", {}).get("limits", {})
                if "cpu" in limits:  # this machine has fewer cores than a cluster node
                    limits["cpu"] = str(min(float(str(limits["cpu"]).rstrip("m")) / (1000 if str(limits["cpu"]).endswith("m") else 1), os.cpu_count() or 1))
        played.append(doc)
    folder = BUILD / "k8s-smoke"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    manifest = folder / "medseg.yaml"
    manifest.write_text(yaml.safe_dump_all(played, sort_keys=False))
    # The claims: named volumes, filled as a cluster's would be (weights, a case).
    models = _volume_dir("medseg-models")
    shutil.copytree(REPO / "models", models, dirs_exist_ok=True)
    data = _volume_dir("medseg-data")
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[3:9, 3:9, 3:9] = 1
    write_volume(Volume(mask, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), data / "mask.nii.gz")
    make_phantom(size=(48, 48, 32), seed=7).write(data / "case")
    for root in (models, data):
        for path in [root, *root.rglob("*")]:
            os.chown(path, 10001, 10001)
    subprocess.run(["podman", "network", "rm", "-f", SMOKE_NETWORK], env=PODMAN_ENV, capture_output=True)
    podman("network", "create", SMOKE_NETWORK)
    start = time.monotonic()
    try:
        podman("kube", "play", "--network", SMOKE_NETWORK, str(manifest))
        pods = json.loads(subprocess.run(["podman", "pod", "ps", "--format", "json"], env=PODMAN_ENV,
                                         capture_output=True, text=True, check=True).stdout)
        infra = {p["Name"]: p["InfraId"] for p in pods}
        for name, aliases in SMOKE_ALIASES.items():
            replicas = sorted(n for n in infra if n.startswith(f"{name}-pod-"))
            assert len(replicas) == 2, f"{name}: pods {replicas}"
            for pod in replicas:
                podman("network", "disconnect", SMOKE_NETWORK, infra[pod])
                podman("network", "connect", *[f"--alias={a}" for a in aliases], SMOKE_NETWORK, infra[pod])
        (envoy_pod,) = [n for n in infra if n.startswith("envoy-pod-")]
        gateway = f"{_ip(infra[envoy_pod])}:8080"
        while True:
            with Client(gateway) as client:
                states = client.status(timeout=3)
            if states["postprocess"] == "SERVING" and states["nnunet"] == "SERVING":
                break
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"not SERVING after {timeout:.0f} s: {states}")
            time.sleep(3)
        ready = time.monotonic() - start
        with Client(gateway, timeout=600) as client:
            for _ in range(8):
                assert client.measure(Ref("mask.nii.gz")).result.labels[0].voxel_count == 216
            for _ in range(4):
                tumor = client.segment_tumor(Ref("case/portal.nii.gz"), inline=True)
                assert {l.name for l in tumor.result.outputs[0].labels} >= {"kidney"}
        # Every replica served calls: each pod's own /metrics (gRPC port + 1000).
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        served = {}
        for name, method, port in (("postprocess", "Measure", 51053), ("nnunet", "SegmentTumor", 51051)):
            for pod in sorted(n for n in infra if n.startswith(f"{name}-pod-")):
                text = opener.open(f"http://{_ip(infra[pod])}:{port}/metrics", timeout=10).read().decode()
                served[pod] = sum(float(line.split()[-1]) for line in text.splitlines()
                                  if line.startswith("medseg_requests_total{") and f'method="{method}"' in line)
        assert all(count > 0 for count in served.values()), served
        print(f"k8s-smoke: podman kube play of deploy/k8s (cpu overlay): 2 postprocess + 2 nnunet pods behind "
              f"Envoy (STRICT_DNS on the aliases); SERVING {ready:.0f} s after play; 8 Measure + 4 SegmentTumor "
              f"through Envoy OK; calls per replica {served}; total {time.monotonic() - start:.0f} s")
        return 0
    finally:
        subprocess.run(["podman", "kube", "down", str(manifest)], env=PODMAN_ENV, capture_output=True)
        subprocess.run(["podman", "network", "rm", "-f", SMOKE_NETWORK], env=PODMAN_ENV, capture_output=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["smoke"]:
        return smoke()
    if argv[:1] == ["build"]:
        build(argv[1:])
        return 0
    if argv[:1] == ["test"]:
        return test()
    if argv[:1] == ["sizes"]:
        sizes(argv[1:])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
