# csagent %preun ($1: 0 erase, 1+ upgrade): stop and disable on erase only.
# Running VMs are never touched by a stop.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now csagent.service >/dev/null 2>&1 || :
fi
