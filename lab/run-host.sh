#!/usr/bin/env bash
# lab/run-host.sh NAME: keeps one lab host booted; started in the background by lab/up.sh.
# systemd-nspawn exits with 133 when the host reboots (`systemctl reboot` inside it): boot it again.
# Any other exit, or the stop file lab/down.sh leaves, ends the loop.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
name=$1
dir=$LAB_MACHINES/$name
stop=$LAB_RUN/$name.stop
read -r bridge _ _ <<< "$(lab_net "$(cat "$LAB_MACHINES/$name.net" 2>/dev/null || echo dc1)")"
extra=()
wan_veth=""
if [ -s "$LAB_MACHINES/$name.wan" ]; then   # a second link, wan0, put on the WAN bridge once nspawn made it
    wan_veth=$(lab_wan_veth "$name")
    extra=(--network-veth-extra="$wan_veth:wan0")
fi
echo $$ > "$LAB_RUN/$name.runner.pid"
# Each host needs a cgroup of its own: this machine's PID 1 is not systemd, so nspawn (--keep-unit)
# would otherwise put every host's systemd into the same tree (/payload), where they fight over it
# (units failing with 219/CGROUP, `systemctl kill` on one host reaching another's processes).
for hierarchy in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do
    if [ -e "$hierarchy/cgroup.procs" ]; then
        mkdir -p "$hierarchy/meshcore-lab/$name"
        echo $$ > "$hierarchy/meshcore-lab/$name/cgroup.procs"
    fi
done
while [ ! -e "$stop" ]; do
    echo "lab: booting $name $(date -Is)"
    # nsenter --net only: `ip netns exec` remounts /sys, and nspawn then cannot see the cgroup hierarchy.
    # --register=no --keep-unit: this machine's PID 1 is not systemd, so there is no machined to register with.
    nsenter --net="/run/netns/$LAB_NETNS" systemd-nspawn --quiet --directory="$dir" --machine="$name" --boot \
        --register=no --keep-unit --console=passive --link-journal=no --resolv-conf=off --timezone=off \
        --network-bridge="$bridge" "${extra[@]}" </dev/null &
    echo $! > "$LAB_RUN/$name.nspawn.pid"
    if [ -n "$wan_veth" ]; then   # made anew at every boot
        for _ in $(seq 1 100); do
            ip -n "$LAB_NETNS" link set "$wan_veth" master "$LAB_BRIDGE_WAN" up 2>/dev/null && break
            sleep 0.1
        done
    fi
    wait $!
    rc=$?
    echo "lab: $name stopped rc=$rc $(date -Is)"
    [ "$rc" = 133 ] || break
done
rm -f "$LAB_RUN/$name.nspawn.pid" "$LAB_RUN/$name.runner.pid"
