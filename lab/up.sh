#!/usr/bin/env bash
# lab/up.sh [NAME...]: boot a lab of Debian hosts for meshcore (default: cp vm1 vm2 vm3).
#
# Each host is a systemd-nspawn container booted with systemd as PID 1 and sshd, in its own network
# namespace, on a bridge that lives in the network namespace $LAB_NETNS; this machine reaches the
# bridge through one veth ($LAB_VETH, $LAB_PREFIX.1). The hosts have no route anywhere else.
# The Debian tree (debootstrap) is built once and cached in $LAB_CACHE; hosts are copies of it.
# Safe to run again: what exists and runs is kept. The last line of stdout is one JSON object
# {"hosts": {name: address}, "inventory": path, "ssh_key": path, "netns": name}.
# lab/down.sh removes everything this made except the cached rootfs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

lab_require_root
hosts=("$@")
[ ${#hosts[@]} -gt 0 ] || hosts=(cp vm1 vm2 vm3)
for name in "${hosts[@]}"; do
    [[ $name =~ ^[a-z][a-z0-9-]{0,30}$ ]] || lab_die "host name '$name': use lowercase letters, digits and '-'" 2
done
missing=()
for cmd in debootstrap systemd-nspawn nsenter ip ssh ssh-keygen; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
done
[ ${#missing[@]} = 0 ] || lab_die "missing ${missing[*]}: apt-get install -y debootstrap systemd-container iproute2 openssh-client util-linux" 2

# ---- 1. the cached Debian tree -----------------------------------------------------------------
stamp="$LAB_SUITE $LAB_PACKAGES"
if [ "$(cat "$LAB_ROOTFS/.meshcore-lab" 2>/dev/null)" != "$stamp" ]; then
    lab_log "building the Debian $LAB_SUITE tree in $LAB_ROOTFS (debootstrap, about a minute)"
    rm -rf "$LAB_ROOTFS.tmp" && mkdir -p "$LAB_CACHE"
    debootstrap --variant=minbase --include="$LAB_PACKAGES" "$LAB_SUITE" "$LAB_ROOTFS.tmp" "$LAB_MIRROR" \
        > "$LAB_CACHE/debootstrap.log" 2>&1 || lab_die "debootstrap failed; see $LAB_CACHE/debootstrap.log"
    r=$LAB_ROOTFS.tmp
    # static address on host0 (written per host), from systemd-networkd
    ln -sf /lib/systemd/system/systemd-networkd.service "$r/etc/systemd/system/multi-user.target.wants/"
    mkdir -p "$r/etc/systemd/network" "$r/etc/ssh/sshd_config.d" "$r/root/.ssh"
    printf 'PasswordAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\n' \
        > "$r/etc/ssh/sshd_config.d/meshcore-lab.conf"
    rm -f "$r"/etc/ssh/ssh_host_*       # every host gets its own keys
    : > "$r/etc/machine-id"             # and its own machine id
    chmod 700 "$r/root/.ssh"
    echo "$stamp" > "$r/.meshcore-lab"
    rm -rf "$LAB_ROOTFS" && mv "$r" "$LAB_ROOTFS"
    lab_log "rootfs ready ($(du -sh "$LAB_ROOTFS" | cut -f1))"
else
    lab_log "reusing the cached rootfs $LAB_ROOTFS"
fi

# ---- 2. the lab's ssh key -----------------------------------------------------------------------
mkdir -p "$LAB_MACHINES" "$LAB_RUN" "$(dirname "$LAB_KEY")"
chmod 700 "$LAB_STATE" "$(dirname "$LAB_KEY")"
[ -f "$LAB_KEY" ] || ssh-keygen -q -t ed25519 -N '' -C meshcore-lab -f "$LAB_KEY"

# ---- 3. network namespace, bridge, this machine's leg --------------------------------------------
if [ ! -e "/run/netns/$LAB_NETNS" ]; then
    ip netns add "$LAB_NETNS"
fi
ip -n "$LAB_NETNS" link set lo up
if ! ip -n "$LAB_NETNS" link show "$LAB_BRIDGE" >/dev/null 2>&1; then
    ip -n "$LAB_NETNS" link add "$LAB_BRIDGE" type bridge
fi
ip -n "$LAB_NETNS" link set "$LAB_BRIDGE" up
if ! ip link show "$LAB_VETH" >/dev/null 2>&1; then
    if ip -4 route show | grep -q "^$LAB_PREFIX\."; then
        lab_die "$LAB_PREFIX.0/24 is already routed on this machine; set MESHCORE_LAB_PREFIX to a free /24" 2
    fi
    ip link add "$LAB_VETH" type veth peer name "$LAB_VETH-br"
    ip link set "$LAB_VETH-br" netns "$LAB_NETNS"
    ip -n "$LAB_NETNS" link set "$LAB_VETH-br" master "$LAB_BRIDGE" up
    ip addr add "$LAB_PREFIX.1/24" dev "$LAB_VETH"
fi
ip link set "$LAB_VETH" up

# ---- 4. one tree per host, each with its own address, keys and machine id -------------------------
address_of() { cat "$LAB_MACHINES/$1.addr"; }
next_address() {
    local i
    for i in $(seq 11 250); do
        grep -qx "$LAB_PREFIX.$i" "$LAB_MACHINES"/*.addr 2>/dev/null || { echo "$LAB_PREFIX.$i"; return; }
    done
    lab_die "no free address left in $LAB_PREFIX.0/24"
}
for name in "${hosts[@]}"; do
    dir=$LAB_MACHINES/$name
    [ -d "$dir" ] && [ -s "$dir.addr" ] && continue
    lab_log "creating host $name"
    rm -rf "$dir.tmp"
    cp -a --reflink=auto "$LAB_ROOTFS" "$dir.tmp"
    addr=$(next_address)
    echo "$name" > "$dir.tmp/etc/hostname"
    tr -d '-' < /proc/sys/kernel/random/uuid > "$dir.tmp/etc/machine-id"
    printf '[Match]\nName=host0\n\n[Network]\nAddress=%s/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' "$addr" \
        > "$dir.tmp/etc/systemd/network/10-host0.network"
    ssh-keygen -q -A -f "$dir.tmp" >/dev/null
    install -m 600 "$LAB_KEY.pub" "$dir.tmp/root/.ssh/authorized_keys"
    mv "$dir.tmp" "$dir"
    echo "$addr" > "$dir.addr"
done

# every host knows every other by name (the trees are plain directories: running hosts see it too)
all=()
for f in "$LAB_MACHINES"/*.addr; do [ -e "$f" ] && all+=("$(basename "$f" .addr)"); done
hosts_file=$(printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
             for n in "${all[@]}"; do printf '%s\t%s\n' "$(address_of "$n")" "$n"; done)
for n in "${all[@]}"; do
    printf '%s\n127.0.1.1\t%s\n' "$hosts_file" "$n" > "$LAB_MACHINES/$n/etc/hosts"
done

# ---- 5. boot ------------------------------------------------------------------------------------
for name in "${hosts[@]}"; do
    if lab_live_pid "$LAB_RUN/$name.runner.pid" >/dev/null; then
        lab_log "host $name is running"
        continue
    fi
    rm -f "$LAB_RUN/$name.stop"
    lab_log "booting host $name at $(address_of "$name")"
    setsid "$here/run-host.sh" "$name" >> "$LAB_STATE/$name.console.log" 2>&1 < /dev/null &
done

# ---- 6. wait until systemd has finished booting and sshd answers ---------------------------------
for name in "${hosts[@]}"; do
    addr=$(address_of "$name")
    state=""
    for i in $(seq 1 120); do
        state=$(lab_ssh "$addr" systemctl is-system-running --wait 2>/dev/null || true)
        case $state in running|degraded) break ;; esac
        if [ "$i" -gt 5 ] && ! lab_live_pid "$LAB_RUN/$name.runner.pid" >/dev/null; then
            lab_die "host $name stopped while booting; see $LAB_STATE/$name.console.log"
        fi
        sleep 1
    done
    case $state in
        running) lab_log "host $name is up ($addr)" ;;
        degraded) lab_log "host $name is up ($addr) but degraded: $(lab_ssh "$addr" systemctl --failed --plain --no-legend | tr '\n' ' ')" ;;
        *) lab_die "host $name did not come up within 120 s (state '${state:-unreachable}'); see $LAB_STATE/$name.console.log" ;;
    esac
done

# ---- 7. inventory and summary -------------------------------------------------------------------
{
    echo "# written by lab/up.sh; lab/down.sh removes it"
    echo "[lab]"
    for n in "${all[@]}"; do echo "$n ansible_host=$(address_of "$n")"; done
    echo
    echo "[lab:vars]"
    echo "ansible_user=root"
    echo "ansible_python_interpreter=/usr/bin/python3"
    echo "ansible_ssh_private_key_file=$LAB_KEY"
    echo "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'"
} > "$LAB_INVENTORY"
json_hosts=""
for n in "${all[@]}"; do json_hosts+="${json_hosts:+, }\"$n\": \"$(address_of "$n")\""; done
printf '{"hosts": {%s}, "inventory": "%s", "ssh_key": "%s", "netns": "%s"}\n' \
    "$json_hosts" "$LAB_INVENTORY" "$LAB_KEY" "$LAB_NETNS"
