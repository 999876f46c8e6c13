# csagent %post ($1: 1 install, 2+ upgrade). Idempotent. Enabled on a
# first install, never started while agent.toml is unconfigured.
install -d -m 0750 -o root -g root /etc/csagent /var/lib/csagent
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    systemctl enable csagent.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ] && /usr/bin/csagent config check --config /etc/csagent/agent.toml >/dev/null 2>&1; then
    if [ "$1" -ge 2 ]; then
        systemctl try-restart csagent.service >/dev/null 2>&1 || :
    else
        systemctl start csagent.service >/dev/null 2>&1 || :
    fi
else
    echo "csagent: not started: configure /etc/csagent/agent.toml, then 'systemctl start csagent'" >&2
fi
