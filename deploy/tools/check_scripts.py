"""Runs the containerd hosts.toml writer (deploy/helm/image-preheat/files/hosts-toml.sh) with /bin/sh
in a temporary config_path and checks what it writes, keeps and refuses, and that the example node
files in deploy/containerd and deploy/docker match it."""
import filecmp
import json
import os
import subprocess
import tempfile
import tomllib

MARKER = "# managed by image-preheat"


def _run(script, config_path, **env):
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CONFIG_PATH": config_path,
            "MIRROR_URL": "http://127.0.0.1:5000"}
    full.update(env)
    return subprocess.run(["/bin/sh", script], env=full, capture_output=True, text=True, timeout=20)


def check_hosts_toml(root):
    errors = []
    script = os.path.join(root, "deploy/helm/image-preheat/files/hosts-toml.sh")
    copy = os.path.join(root, "deploy/kustomize/hosts-toml.sh")
    if not filecmp.cmp(script, copy, shallow=False):
        errors.append("deploy/kustomize/hosts-toml.sh differs from the chart's files/hosts-toml.sh")
    with tempfile.TemporaryDirectory() as d:
        foreign = os.path.join(d, "ghcr.io", "hosts.toml")
        os.makedirs(os.path.dirname(foreign))
        with open(foreign, "w") as f:
            f.write('server = "https://ghcr.io"\n')
        r = _run(script, d, REGISTRIES="_default,docker.io,reg.local:5000,ghcr.io",
                 CAPABILITIES="pull,resolve", INSECURE_REGISTRIES="reg.local:5000")
        if r.returncode != 0:
            return errors + ["hosts-toml.sh failed: %s" % r.stderr.strip()]
        want = {
            "_default": None,
            "docker.io": "https://registry-1.docker.io",
            "reg.local:5000": "http://reg.local:5000",
        }
        for reg, server in want.items():
            path = os.path.join(d, reg, "hosts.toml")
            try:
                text = open(path).read()
                doc = tomllib.loads(text)
            except (OSError, tomllib.TOMLDecodeError) as e:
                errors.append("hosts-toml.sh output for %s: %s" % (reg, e))
                continue
            host = doc.get("host", {}).get("http://127.0.0.1:5000", {})
            if doc.get("server") != server or host.get("capabilities") != ["pull", "resolve"]:
                errors.append("hosts-toml.sh output for %s is wrong: %r" % (reg, doc))
            if not text.startswith(MARKER):
                errors.append("hosts-toml.sh output for %s lacks the marker line" % reg)
        if open(foreign).read() != 'server = "https://ghcr.io"\n':
            errors.append("hosts-toml.sh replaced a hosts.toml it did not write")
        r = _run(script, d, REGISTRIES="ghcr.io", CAPABILITIES="pull", OVERWRITE="true")
        if r.returncode != 0 or tomllib.loads(open(foreign).read())["host"]["http://127.0.0.1:5000"]["capabilities"] != ["pull"]:
            errors.append("hosts-toml.sh with OVERWRITE=true did not replace the file")
        for bad in ({"REGISTRIES": "../etc"}, {"REGISTRIES": "a/b"}, {"CAPABILITIES": "push"}):
            r = _run(script, d, **bad)
            if r.returncode != 64:
                errors.append("hosts-toml.sh accepted %r (exit %d, want 64)" % (bad, r.returncode))
        if os.path.exists(os.path.join(os.path.dirname(d), "etc", "hosts.toml")):
            errors.append("hosts-toml.sh wrote outside CONFIG_PATH")
    # The example files in deploy/containerd are what the writer writes with the chart's defaults.
    examples = os.path.join(root, "deploy/containerd/certs.d")
    with tempfile.TemporaryDirectory() as d:
        regs = sorted(os.listdir(examples))
        r = _run(script, d, REGISTRIES=",".join(regs))
        for reg in regs:
            got = os.path.join(d, reg, "hosts.toml")
            if r.returncode != 0 or not filecmp.cmp(got, os.path.join(examples, reg, "hosts.toml"), shallow=False):
                errors.append("deploy/containerd/certs.d/%s/hosts.toml is not what hosts-toml.sh writes" % reg)
    daemon = json.load(open(os.path.join(root, "deploy/docker/daemon.json")))
    if daemon.get("registry-mirrors") != ["http://127.0.0.1:5000"]:
        errors.append("deploy/docker/daemon.json does not name the mirror http://127.0.0.1:5000")
    return errors
