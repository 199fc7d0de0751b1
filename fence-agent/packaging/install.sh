#!/bin/sh
# fence-agent installer for hosts without dpkg (any systemd distribution, x86_64).
#
#   sudo ./install.sh              install or upgrade (a running agent is restarted;
#                                  its pinned programs enforce until the new one takes over)
#   sudo ./install.sh --uninstall  stop, lift enforcement, remove binary and unit
#   sudo ./install.sh --purge      as --uninstall, and remove the shipped configuration, the
#                                  state and the logs (policy files you added stay, as with
#                                  the .deb)
#
# The agent is not started on a fresh install: `systemctl enable --now fence-agent`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=/usr/local/bin/fence-agent
# /usr/local/lib/systemd/system: where systemd looks for units installed by the local
# administrator (the .deb's is /lib/systemd/system); /etc/systemd/system stays the admin's.
unit=/usr/local/lib/systemd/system/fence-agent.service
workloads_unit=/usr/local/lib/systemd/system/fence-workloads.service
tmpfiles=/usr/local/lib/tmpfiles.d/fence-agent.conf
# Where earlier versions put the unit; removed when it is ours (it would shadow the new one).
old_unit=/etc/systemd/system/fence-agent.service
ours() { [ -f "$1" ] && grep -q 'fence-agent run' "$1"; }

die() { echo "install.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
[ -d /run/systemd/system ] || die "systemd is not running on this host; run $here/fence-agent run by other means"

case "${1:-}" in
"")
    install -D -m 0755 "$here/fence-agent" "$bin"
    enabled=$(systemctl is-enabled fence-agent.service 2>/dev/null || true)
    if ours "$old_unit"; then
        systemctl disable fence-agent.service >/dev/null 2>&1 || true
        rm -f "$old_unit"
    fi
    install -D -m 0644 "$here/fence-agent.tmpfiles.conf" "$tmpfiles"
    install -d -m 0755 "$(dirname "$unit")"
    sed "s#/usr/bin/fence-agent#$bin#g" "$here/fence-agent.service" > "$unit.tmp"
    chmod 0644 "$unit.tmp"
    mv "$unit.tmp" "$unit"
    install -m 0644 "$here/fence-workloads.service" "$workloads_unit"
    install -d -m 0755 /etc/fence /etc/fence/policy.d /etc/fence/agent.d
    # Configuration is never overwritten; agent.toml is 0640 as in the .deb (it can carry
    # vault settings).
    [ -e /etc/fence/agent.toml ] || install -m 0640 "$here/etc/agent.toml" /etc/fence/agent.toml
    [ -e /etc/fence/policy.d/00-default.yaml ] || install -m 0644 "$here/etc/policy.d/00-default.yaml" /etc/fence/policy.d/
    install -d -m 0700 /var/lib/fence
    # Logs readable by the adm group, as the .deb does (setgid: new files are group adm).
    if getent group adm >/dev/null; then
        install -d -m 2750 -g adm /var/log/fence
        find /var/log/fence -maxdepth 1 -type f -exec chgrp adm {} + 2>/dev/null || true
    else
        install -d -m 0750 /var/log/fence
    fi
    systemctl daemon-reload
    # An agent that was enabled at the old unit path is enabled at the new one.
    if [ "$enabled" = enabled ]; then
        systemctl enable fence-agent.service >/dev/null 2>&1
    fi
    systemctl try-restart fence-agent.service
    echo "installed $bin and $unit; start it with: systemctl enable --now fence-agent"
    ;;
--uninstall|--purge)
    systemctl disable --now fence-agent.service 2>/dev/null || true
    if [ -x "$bin" ]; then
        # Like the .deb: the vault's last-known-good policy and rollback floor stay until --purge.
        "$bin" uninstall --keep-state --config /etc/fence/agent.toml \
            || echo "install.sh: uninstall left the items above in place" >&2
    fi
    # As the .deb: workloads started with `fence-agent exec` are not ended; while any runs,
    # fence-workloads.service stays.
    n=0
    cg=$(systemctl show -p ControlGroup --value fence-workloads.service 2>/dev/null || true)
    if [ -n "$cg" ] && [ -d "/sys/fs/cgroup$cg" ]; then
        n=$(find "/sys/fs/cgroup$cg" -mindepth 2 -name cgroup.procs -exec cat {} + 2>/dev/null | wc -l)
    fi
    if [ "$n" = 0 ]; then
        systemctl stop fence-workloads.service 2>/dev/null || true
    else
        echo "install.sh: $n process(es) started with fence-agent exec still run (unfenced now) in fence-workloads.service; 'systemctl stop fence-workloads.service' ends them" >&2
    fi
    rm -f "$bin" "$unit" "$workloads_unit" "$tmpfiles"
    if ours "$old_unit"; then
        rm -f "$old_unit"
    fi
    systemctl daemon-reload
    if [ "$1" = --purge ]; then
        if command -v chattr >/dev/null 2>&1 && [ -d /var/log/fence ]; then
            find /var/log/fence -type f -exec chattr -a {} + 2>/dev/null || true
        fi
        rm -rf /var/log/fence /var/lib/fence
        # The shipped configuration goes; policy files the administrator added stay.
        rm -f /etc/fence/agent.toml /etc/fence/policy.d/00-default.yaml
        rmdir /etc/fence/agent.d /etc/fence/policy.d /etc/fence 2>/dev/null || true
    fi
    echo "fence-agent removed"
    ;;
*)
    die "unknown option $1 (use no option, --uninstall or --purge)"
    ;;
esac
