#!/usr/bin/env bash
# lab/down.sh [--purge]: stop every lab host (a clean poweroff, then SIGKILL after 30 s), and remove
# the hosts' trees, the lab's ssh key and inventory, the veth, the bridge and the network namespace.
# The cached Debian rootfs stays for the next lab/up.sh unless --purge is given.
# Safe to run again, and when nothing is up.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
lab_require_root
purge=no
[ "${1:-}" = --purge ] && purge=yes

names=()
for f in "$LAB_RUN"/*.runner.pid "$LAB_MACHINES"/*.addr; do
    [ -e "$f" ] || continue
    n=$(basename "$f"); n=${n%.runner.pid}; n=${n%.addr}
    [[ " ${names[*]} " == *" $n "* ]] || names+=("$n")
done

# systemd-nspawn turns SIGTERM into a clean poweroff of the host's systemd
for n in "${names[@]}"; do
    touch "$LAB_RUN/$n.stop" 2>/dev/null || true
    if pid=$(lab_live_pid "$LAB_RUN/$n.nspawn.pid"); then
        lab_log "stopping host $n"
        kill -TERM "$pid" 2>/dev/null || true
    fi
done
for n in "${names[@]}"; do
    for _ in $(seq 1 30); do
        lab_live_pid "$LAB_RUN/$n.runner.pid" >/dev/null || break
        sleep 1
    done
    for which in nspawn runner; do
        if pid=$(lab_live_pid "$LAB_RUN/$n.$which.pid"); then
            lab_log "host $n did not stop in 30 s; killing its $which (pid $pid)"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "/run/systemd/nspawn/propagate/$n" "/run/systemd/nspawn/unix-export/$n"
done

# the hosts' cgroups (lab/run-host.sh made them); empty once the hosts are gone
for hierarchy in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do
    [ -d "$hierarchy/meshcore-lab" ] && find "$hierarchy/meshcore-lab" -depth -type d -exec rmdir {} + 2>/dev/null
done

for veth in "$LAB_VETH" "$LAB_VETH_DC2"; do
    if ip link show "$veth" >/dev/null 2>&1; then ip link del "$veth"; fi
done
if [ -e "/run/netns/$LAB_NETNS" ]; then ip netns del "$LAB_NETNS"; fi   # takes the bridge with it
rm -rf "$LAB_STATE"
[ "$purge" = yes ] && rm -rf "$LAB_CACHE"
lab_log "lab removed${names[*]:+ (hosts: ${names[*]})}$([ "$purge" = yes ] && echo '; rootfs cache purged')"
