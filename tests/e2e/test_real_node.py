"""Real containers on the dev cluster's real node: images, Services, DNS, logs, exec."""

from __future__ import annotations

import os
import signal
import time

import pytest
from kubernetes import client

from modelsmith.devcluster import images, imagestore
from modelsmith.devcluster.cluster import DevCluster
from modelsmith.devcluster.processes import du_bytes, is_alive
from tests.e2e.conftest import pod_on_node, wait_phase

pytestmark = pytest.mark.integration

TORCH_IMAGES = ("trainer", "quantizer", "server")


@pytest.mark.parametrize(
    ("image", "args", "expect"),
    [
        ("operator", ["--help"], "usage: modelsmith"),
        ("data", ["--help"], "usage: modelsmith-runtime"),
        # The torch images: ~7 GB each, sharing one 5.6 GB torch layer.
        *[(name, ["--help"], "usage: modelsmith-runtime") for name in TORCH_IMAGES],
    ],
)
def test_image_starts_non_root_on_a_read_only_root(  # noqa: PLR0917 (fixtures)
    core: client.CoreV1Api,
    dev_cluster: DevCluster,
    namespace: str,
    pushed: dict[str, str],
    image: str,
    args: list[str],
    expect: str,
) -> None:
    pod, logs = _run_on_node(core, dev_cluster, namespace, pushed[image], args)
    assert pod.status.phase == "Succeeded", logs
    assert expect in logs
    state = pod.status.container_statuses[0].state.terminated
    assert state.exit_code == 0
    assert pod.spec.node_name == "modelsmith-node"


def _run_on_node(
    core: client.CoreV1Api, dev_cluster: DevCluster, namespace: str, image: str, args: list[str]
) -> tuple[client.V1Pod, str]:
    name = f"run-{image.rsplit('/', 1)[1].split(':', maxsplit=1)[0]}"
    core.create_namespaced_pod(namespace, pod_on_node(name, image, args))
    # A torch image's first pull moves ~3 GB through the registry and unpacks ~6 GB.
    pod = wait_phase(core, namespace, name, {"Succeeded", "Failed"}, timeout=900)
    return pod, dev_cluster.kubectl("logs", "-n", namespace, name)


DISK_CEILING = 20e9
"""The issue's aim for the images' three copies (build store, registry, node). Measured on
2026-12-02: 19.4 GB (build store 8.0, registry 3.4, node 8.0; the images' own layers
in the store: 7.8), once the workload images share their dependency layers (the
runtime's own, torch, then transformers); 24.0 GB before, when each torch image
carried its own copy of the common ones."""


def test_all_images_fit_the_disk_budget(
    core: client.CoreV1Api, dev_cluster: DevCluster, namespace: str, pushed: dict[str, str]
) -> None:
    """Measured once every image has run on the node: each is then in the build store,
    the registry and the node's containerd. The build store counts these images' layers:
    the rest of it is the cache of earlier builds, which depends on the machine's history
    (a warm CI machine, a developer's) and which `dev images --prune` reclaims."""
    names = ("operator", "data", *TORCH_IMAGES)
    for name in names:  # a no-op after the test above
        pod, logs = _run_on_node(core, dev_cluster, namespace, pushed[name], ["--help"])
        assert pod.status.phase == "Succeeded", logs
    usage = dev_cluster.disk_usage()
    whole_store = usage["build store"]
    local = [images.ImageRef(n, pushed[n].rsplit(":", 1)[1]).reference for n in names]
    usage["build store"] = imagestore.layer_bytes(local)
    assert usage["build store"] <= whole_store * 1.05, "the layers are in the store"
    total = sum(usage.values())
    report = ", ".join(f"{where} {size / 1e9:.1f} GB" for where, size in usage.items())
    print(f"images on disk: {report}, total {total / 1e9:.1f} GB")
    print(f"(the whole build store, with older builds: {whole_store / 1e9:.1f} GB)")
    assert all(usage.values()), report
    # One 5.6 GB torch layer for three images: stored once, compressed, in the registry.
    assert usage["registry"] < 4e9, report
    # containerd drops a layer's compressed blob once it is unpacked.
    content = dev_cluster.node.paths.containerd_root / "io.containerd.content.v1.content"
    assert du_bytes(content) < 100e6, du_bytes(content)
    assert total < DISK_CEILING, report


def test_identity_and_root_filesystem_are_enforced(
    core: client.CoreV1Api, namespace: str, pushed: dict[str, str]
) -> None:
    """The kernel, not the manifest, says who runs and what it may write."""
    probe = (
        "import os, json, pathlib\n"
        "try:\n"
        "    pathlib.Path('/etc/probe').write_text('x'); rootfs = 'writable'\n"
        "except OSError as e:\n"
        "    rootfs = e.strerror\n"
        "caps = [l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1]\n"
        "print(json.dumps({'uid': os.getuid(), 'rootfs': rootfs, 'caps': caps}))\n"
    )
    name = "identity"
    pod = pod_on_node(name, pushed["python-base"], ["-c", probe], command=["python3"])
    core.create_namespaced_pod(namespace, pod)
    done = wait_phase(core, namespace, name, {"Succeeded", "Failed"})
    out = core.read_namespaced_pod_log(name, namespace)
    assert done.status.phase == "Succeeded", out
    assert '"uid": 10001' in out
    assert "Read-only file system" in out
    assert '"caps": "0000000000000000"' in out


SERVER = (
    "import http.server, socketserver\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = b'hello from the real node'\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "socketserver.TCPServer.allow_reuse_address = True\n"
    "http.server.HTTPServer(('', 8080), H).serve_forever()\n"
)

CLIENT = (
    "import socket, ssl, sys, urllib.request\n"
    "name = sys.argv[1]\n"
    "ip = socket.gethostbyname(name)\n"
    "body = urllib.request.urlopen(f'http://{name}:80/', timeout=10).read().decode()\n"
    "api = socket.gethostbyname('kubernetes.default.svc.cluster.local')\n"
    "sa = '/var/run/secrets/kubernetes.io/serviceaccount/'\n"
    "ctx = ssl.create_default_context(cafile=sa + 'ca.crt')\n"
    "token = open(sa + 'token').read()\n"
    "req = urllib.request.Request('https://kubernetes.default.svc/version',\n"
    "                             headers={'Authorization': 'Bearer ' + token})\n"
    "version = urllib.request.urlopen(req, context=ctx, timeout=10).read().decode()\n"
    "print('resolved', ip, 'got', body, 'api', api, 'gitVersion' in version)\n"
)


def test_service_dns_logs_and_exec(
    core: client.CoreV1Api, dev_cluster: DevCluster, namespace: str, pushed: dict[str, str]
) -> None:
    base = pushed["python-base"]
    server = pod_on_node("web", base, ["-c", SERVER], command=["python3"])
    server["spec"]["restartPolicy"] = "Always"
    server["spec"]["containers"][0]["readinessProbe"] = {
        "tcpSocket": {"port": 8080},
        "periodSeconds": 1,
    }
    core.create_namespaced_pod(namespace, server)
    core.create_namespaced_service(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    wait_phase(core, namespace, "web", {"Running"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod("web", namespace)
        if pod.status.container_statuses and pod.status.container_statuses[0].ready:
            break
        time.sleep(0.5)

    fqdn = f"web.{namespace}.svc.cluster.local"
    client_pod = pod_on_node("client", base, ["-c", CLIENT, fqdn], command=["python3"])
    core.create_namespaced_pod(namespace, client_pod)
    done = wait_phase(core, namespace, "client", {"Succeeded", "Failed"})
    logs = dev_cluster.kubectl("logs", "-n", namespace, "client")
    assert done.status.phase == "Succeeded", logs
    cluster_ip = core.read_namespaced_service("web", namespace).spec.cluster_ip
    assert f"resolved {cluster_ip} got hello from the real node api 10.96.0.1 True" in logs

    exec_out = dev_cluster.kubectl(
        "exec", "-n", namespace, "web", "--", "python3", "-c", "import os; print(os.getuid())"
    )
    assert exec_out.strip() == "10001"


def test_a_crashed_kubelet_comes_back_and_its_pod_runs_on(
    core: client.CoreV1Api, dev_cluster: DevCluster, namespace: str, pushed: dict[str, str]
) -> None:
    """SIGKILL the kubelet mid-run: `up` restarts only the kubelet, which adopts the
    running container (no restart) and reports its completion."""
    script = "import time\nfor i in range(20):\n    print(i, flush=True); time.sleep(1)\n"
    pod = pod_on_node("long", pushed["python-base"], ["-c", script], command=["python3"])
    core.create_namespaced_pod(namespace, pod)
    running = wait_phase(core, namespace, "long", {"Running"})
    container_id = running.status.container_statuses[0].container_id
    before = {r.name: r.pid for r, _alive in dev_cluster.node.running()}
    kubelet = next(r for r, _alive in dev_cluster.node.running() if r.name == "kubelet")
    os.kill(kubelet.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while is_alive(kubelet):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    assert dev_cluster.up(log=lambda _m: None) is True
    after = {r.name: r.pid for r, _alive in dev_cluster.node.running()}
    assert {n for n in before if before[n] != after[n]} == {"kubelet"}
    done = wait_phase(core, namespace, "long", {"Succeeded", "Failed"}, timeout=120)
    status = done.status.container_statuses[0]
    assert done.status.phase == "Succeeded"
    assert status.container_id == container_id
    assert status.restart_count == 0
    assert "19" in core.read_namespaced_pod_log("long", namespace)
