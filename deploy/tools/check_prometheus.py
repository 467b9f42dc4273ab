"""Prometheus checks: promtool on the alert rules and the dashboard's queries, and every metric name
they use registered by the Rust sources."""
import json
import os
import re
import subprocess
import tempfile

import yaml

from common import CHART, ROOT, fail, run


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                "bool", "offset", "inf", "nan", "le"}


def metric_names(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    out = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word, rest = m.group(0), e[m.end():].lstrip()
        if word.lower() in PROMQL_WORDS or rest.startswith("(") or (m.start() > 0 and e[m.start() - 1].isdigit()):
            continue
        out.add(word)
    return out


def registered_metrics():
    names = set()
    pat = re.compile(r'register(_with_unit)?\(\s*"([a-z_:][a-z0-9_:]*)"\s*,\s*"(?:[^"\\]|\\.)*"\s*,\s*(Unit::(\w+))?')
    for top in ("core", "store", "swarm", "registry-proxy", "node"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top, "src")):
            for f in files:
                if f.endswith(".rs"):
                    for m in pat.finditer(open(os.path.join(dirpath, f)).read()):
                        unit = {"Seconds": "_seconds", "Bytes": "_bytes"}.get(m.group(4) or "", "")
                        names.add(m.group(2) + (unit if not m.group(2).endswith(unit) else ""))
    return names


def check_metric(label, name, known):
    for suffix in ("", "_total", "_bucket", "_sum", "_count", "_created"):
        if name.endswith(suffix) and name[:len(name) - len(suffix)] in known:
            return
    fail("%s uses metric %s, which no Rust source registers" % (label, name))


def promtool_rules(label, rules_doc, known=None):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(rules_doc, f)
    try:
        run(["promtool", "check", "rules", f.name])
    except subprocess.CalledProcessError as e:
        fail("%s: promtool check rules: %s" % (label, (e.stdout + e.stderr).strip()))
    finally:
        os.unlink(f.name)
    if known is not None:
        for g in rules_doc["groups"]:
            for r in g["rules"]:
                for n in metric_names(r["expr"]):
                    check_metric("%s rule %s" % (label, r.get("alert") or r.get("record")), n, known)


def check_monitoring(known):
    rules = yaml.safe_load(open(os.path.join(CHART, "files/alerts.rules.yaml")))
    promtool_rules("alerts.rules.yaml", rules, known)
    dash = json.load(open(os.path.join(ROOT, "deploy/monitoring/grafana-dashboard.json")))
    recs = []
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        fail("grafana-dashboard.json: duplicate panel ids")
    defined = {v["name"] for v in dash["templating"]["list"]} | {"__rate_interval", "__interval"}
    used = set(re.findall(r"\$\{?(\w+)\}?", json.dumps(dash["panels"])))
    for n in sorted(used - defined):
        fail("grafana-dashboard.json uses undefined variable $%s" % n)
    for p in dash["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "5m").replace("$__interval", "1m")
            expr = re.sub(r"\$\{?(\w+)\}?", "x", expr)
            recs.append({"record": "dashboard:panel%d:%s" % (p["id"], t["refId"]), "expr": expr})
    if not recs:
        fail("dashboard has no queries")
    promtool_rules("grafana-dashboard.json", {"groups": [{"name": "dashboard", "rules": recs}]}, known)
