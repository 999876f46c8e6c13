# csagent %postun ($1: 0 erase, 1+ upgrade). RPM has no purge: a modified
# agent.toml is kept as .rpmsave and /var/lib/csagent (host UUID) stays, so
# a reinstall keeps the host's identity; remove them by hand to forget it.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
