#!/bin/bash
# dlaas worker bootstrap, rendered by `dlaas aws user-data`. EC2 runs it once, as root,
# at first boot. It installs dlaas in a virtualenv and runs `dlaas worker` under systemd.
# When the worker exits on its own (idle, or drained by the controller) the instance
# leaves its Auto Scaling group, if any, and powers off; launched with
# InstanceInitiatedShutdownBehavior=terminate, that ends it and its bill.
# To keep an instance for debugging: touch /etc/dlaas/keep-instance
set -euo pipefail
exec > >(tee -a /var/log/dlaas-bootstrap.log) 2>&1
echo "dlaas bootstrap starting at $(date -Is)"

PACKAGE_SPEC={{PACKAGE_SPEC}}
PIP_ARGS=({{PIP_ARGS}})
POWEROFF_ON_EXIT={{POWEROFF_ON_EXIT}}
PREFIX=/opt/dlaas
DATA_DIR=/var/lib/dlaas

on_error() {
    echo "dlaas bootstrap failed at line $1"
    if [ "$POWEROFF_ON_EXIT" = yes ] && [ ! -e /etc/dlaas/keep-instance ]; then
        # A few minutes to read the log (EC2 console: Get system log) before it goes.
        echo "powering off in 5 minutes; to keep it: touch /etc/dlaas/keep-instance; shutdown -c"
        shutdown -h +5 "dlaas bootstrap failed"
    fi
}
trap 'on_error $LINENO' ERR

imds() {
    local token
    token=$(curl -fsS -X PUT "http://169.254.169.254/latest/api/token" \
        -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
    curl -fsS -H "X-aws-ec2-metadata-token: $token" \
        "http://169.254.169.254/latest/meta-data/$1"
}

find_python() {
    local candidate
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

install_python() {
    if command -v dnf >/dev/null 2>&1; then
        dnf install -y python3.11 python3.11-pip || dnf install -y python3 python3-pip
    elif command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -y
        apt-get install -y python3 python3-venv python3-pip
    else
        echo "no dnf or apt-get: use an AMI with Python >= 3.11"
        return 1
    fi
}

INSTANCE_ID=$(imds instance-id)
REGION=$(imds placement/region)
echo "instance $INSTANCE_ID in $REGION"

PYTHON=$(find_python || true)
if [ -z "$PYTHON" ]; then
    install_python
    PYTHON=$(find_python)
fi
echo "using $PYTHON ($("$PYTHON" --version))"

id dlaas >/dev/null 2>&1 || useradd --system --home-dir "$DATA_DIR" --shell /usr/sbin/nologin dlaas
install -d -o dlaas -g dlaas -m 0750 "$DATA_DIR"
install -d -m 0755 "$PREFIX" "$PREFIX/bin" /etc/dlaas
"$PYTHON" -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install --quiet --upgrade pip
"$PREFIX/venv/bin/pip" install "${PIP_ARGS[@]}" "$PACKAGE_SPEC"

# The worker's settings: DLAAS_* variables, as for every dlaas command.
cat > /etc/dlaas/worker.env <<'DLAAS_ENV'
{{ENV_LINES}}
DLAAS_ENV
{
    echo "DLAAS_WORKER_ID=$INSTANCE_ID"
    grep -q '^DLAAS_AWS_REGION=' /etc/dlaas/worker.env || echo "DLAAS_AWS_REGION=$REGION"
    echo "AWS_DEFAULT_REGION=$REGION"
} >> /etc/dlaas/worker.env
chown root:dlaas /etc/dlaas/worker.env
chmod 0640 /etc/dlaas/worker.env
[ "$POWEROFF_ON_EXIT" = yes ] || touch /etc/dlaas/keep-instance

# Build the model now, so a broken install shows here rather than in a crash loop.
runuser -u dlaas -- env DLAAS_DATA_DIR="$DATA_DIR" "$PREFIX/venv/bin/dlaas" model build

cat > "$PREFIX/bin/worker-exited" <<'DLAAS_HOOK'
#!/bin/bash
# Runs after dlaas-worker.service stops ("failed": after it gave up restarting).
# A clean exit means idle or drained: leave the group (if any) and power off.
[ -e /etc/dlaas/keep-instance ] && exit 0
if [ "${1:-}" != failed ]; then
    [ "${SERVICE_RESULT:-success}" = success ] || exit 0 # a crash: systemd restarts it
fi
[ "$(systemctl is-system-running 2>/dev/null || true)" = stopping ] && exit 0
set -a
. /etc/dlaas/worker.env
set +a
status=0
/opt/dlaas/venv/bin/python -m dlaas.aws.instance retire || status=$?
if [ "$status" -eq 3 ] && [ "${1:-}" != failed ]; then
    # The Auto Scaling group is at its minimum size and keeps this instance: work on.
    systemctl start --no-block dlaas-worker.service
    exit 0
fi
systemctl poweroff --no-block
DLAAS_HOOK
chmod 0755 "$PREFIX/bin/worker-exited"

cat > /etc/systemd/system/dlaas-worker.service <<'DLAAS_UNIT'
[Unit]
Description=dlaas worker
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=600
StartLimitBurst=5
OnFailure=dlaas-worker-failed.service

[Service]
Type=simple
User=dlaas
Group=dlaas
EnvironmentFile=/etc/dlaas/worker.env
ExecStart=/opt/dlaas/venv/bin/dlaas worker
ExecStopPost=+/opt/dlaas/bin/worker-exited
Restart=on-failure
RestartSec=5
# SIGTERM: the worker finishes the batch in hand, then exits.
KillSignal=SIGTERM
TimeoutStopSec=300
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths=/var/lib/dlaas

[Install]
WantedBy=multi-user.target
DLAAS_UNIT

cat > /etc/systemd/system/dlaas-worker-failed.service <<'DLAAS_UNIT'
[Unit]
Description=dlaas worker gave up: retire the instance

[Service]
Type=oneshot
ExecStart=/opt/dlaas/bin/worker-exited failed
DLAAS_UNIT

systemctl daemon-reload
systemctl enable --now dlaas-worker.service
trap - ERR
echo "dlaas bootstrap done at $(date -Is)"
