"""The manifests against the agent binary: the env names it accepts (`agent --help`) and the env
values it accepts (started with each render's values on loopback and temporary paths)."""
import os
import re
import subprocess
import sys
import tempfile

from common import fail, pod_spec, run


def agent_env_names(objs):
    names = set()
    for o in objs:
        if o["kind"] == "DaemonSet":
            for c in pod_spec(o)["containers"]:
                names |= {e["name"] for e in c.get("env", [])}
    return names


# Variables the manifests set ahead of the agent, each with the reason: reported, not failed. Once
# the agent accepts one, the check fails until it is removed from here.
PENDING_ENV = {}


def check_env(binary, names):
    """Every env variable the manifests give the agent must be one `image-preheat agent` reads."""
    help_text = run([binary, "agent", "--help"])
    accepted = set(re.findall(r"\[env: ([A-Z0-9_]+)=", help_text))
    if not accepted:
        fail("`%s agent --help` lists no env variables" % binary)
        return
    for n in sorted(names - accepted):
        if n in PENDING_ENV:
            print("WARN manifests set %s ahead of the agent (%s)" % (n, PENDING_ENV[n]), file=sys.stderr)
        else:
            fail("manifests set %s, which `image-preheat agent` does not accept" % n)
    for n in sorted(set(PENDING_ENV) & accepted):
        fail("%s is accepted by the agent now: remove it from PENDING_ENV in %s" % (n, __file__))


# Env values the check replaces so the agent touches nothing of this machine's: addresses go to
# loopback port 0, paths to a temporary directory, Downward API values get stand-ins.
def local_env(tmp):
    for d in ("store", "mount", "docker"):
        os.makedirs(os.path.join(tmp, d), exist_ok=True)
    with open(os.path.join(tmp, "images.list"), "w") as f:
        f.write("# none\n")
    with open(os.path.join(tmp, "docker", "config.json"), "w") as f:
        f.write("{}\n")
    return {
        "NODE_NAME": "check-node", "POD_IP": "127.0.0.1", "K8S_NAMESPACE": "check",
        "HTTP_ADDR": "127.0.0.1:0", "SWARM_ADDR": "127.0.0.1:0", "MIRROR_ADDR": "127.0.0.1:0",
        "STORE_DIR": os.path.join(tmp, "store"), "MOUNT_DIR": os.path.join(tmp, "mount"),
        "IMAGE_LIST_PATH": os.path.join(tmp, "images.list"), "DOCKER_CONFIG": os.path.join(tmp, "docker"),
        "CONTAINERD_ADDRESS": os.path.join(tmp, "no-containerd.sock"),
        "DOCKER_HOST": "unix://" + os.path.join(tmp, "no-docker.sock"),
        # No DNS query and no API server leaves the machine: the name resolves from /etc/hosts,
        # and the Lease client finds no kubeconfig.
        "PEERS_DNS": "localhost", "HOME": tmp, "KUBECONFIG": os.path.join(tmp, "no-kubeconfig"),
    }


# The agent logs its configuration once it has parsed and checked it (STYLE: "log the effective
# configuration once"); what fails after that (no runtime socket, no API server) is not the manifests'.
CONFIG_LOGGED = re.compile(r"(agent|effective) configuration")


def check_env_values(binary, label, objs):
    """Starts the agent with the manifests' literal env values: it must not reject any of them
    (exit 64 = bad configuration, 2 = bad CLI input) before it logs its configuration."""
    for o in objs:
        if o["kind"] != "DaemonSet":
            continue
        env = {}
        for c in pod_spec(o)["containers"]:
            env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
        dns = env.get("PEERS_DNS", "")
        if dns and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?", dns):
            fail("%s: PEERS_DNS %r is not a DNS name" % (label, dns))
        with tempfile.TemporaryDirectory() as tmp:
            env.update(local_env(tmp))
            env = {k: v for k, v in env.items() if k not in PENDING_ENV}
            env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
            p = subprocess.Popen([binary, "agent"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
            err = ""
            try:
                for line in p.stderr:
                    err += line
                    if CONFIG_LOGGED.search(line):
                        break
            finally:
                if p.poll() is None:
                    p.send_signal(15)
                try:
                    code = p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    code = p.wait()
            if code in (2, 64) and not CONFIG_LOGGED.search(err):
                fail("%s: the agent rejects the manifests' env (exit %d): %s" % (label, code, err.strip()[-400:]))
