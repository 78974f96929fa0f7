#!/usr/bin/env bash
# lab/up.sh [NAME[@NET[+wan]]...]: boot a lab of Debian hosts for meshcore (default: cp cp2 vm1 vm2 vm3).
#
# NET is the host's datacenter network, dc1 (the default) or dc2: a bridge and /24 each; +wan gives the host a
# second link (wan0) on the WAN bridge, which no other host and not this machine is on (mesh gateways, the
# datacenters' Consul servers). A host keeps the network it was created with.
#
# Each host is a systemd-nspawn container booted with systemd as PID 1 and sshd, in its own network
# namespace, on a bridge that lives in the network namespace $LAB_NETNS; this machine reaches the
# bridge through one veth ($LAB_VETH, $LAB_PREFIX.1). The hosts have no route anywhere else.
# The Debian tree (debootstrap) is built once and cached in $LAB_CACHE; hosts are copies of it.
# Safe to run again: what exists and runs is kept. The last line of stdout is one JSON object
# {"hosts": {name: address}, "inventory": path, "ssh_key": path, "netns": name, "nets": {name: dc1|dc2},
# "wan": {name: WAN address}}.
# lab/down.sh removes everything this made except the cached rootfs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

lab_require_root
specs=("$@")
[ ${#specs[@]} -gt 0 ] || specs=(cp cp2 vm1 vm2 vm3)
hosts=()
declare -A want_net want_wan
for spec in "${specs[@]}"; do
    [[ $spec =~ ^([a-z][a-z0-9-]{0,30})(@(dc1|dc2)(\+wan)?)?$ ]] \
        || lab_die "host '$spec': NAME[@dc1|@dc2[+wan]], NAME of lowercase letters, digits and '-'" 2
    name=${BASH_REMATCH[1]}
    hosts+=("$name")
    want_net[$name]=${BASH_REMATCH[3]:-dc1}
    want_wan[$name]=${BASH_REMATCH[4]:+yes}
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
nets=(dc1)
for name in "${hosts[@]}"; do
    net=$(cat "$LAB_MACHINES/$name.net" 2>/dev/null || echo "${want_net[$name]}")
    [[ " ${nets[*]} " == *" $net "* ]] || nets+=("$net")
    if [ -n "${want_wan[$name]}" ] || [ -s "$LAB_MACHINES/$name.wan" ]; then
        [[ " ${nets[*]} " == *" wan "* ]] || nets+=(wan)
    fi
done
for net in "${nets[@]}"; do
    read -r bridge prefix veth <<< "$(lab_net "$net")"
    if ! ip -n "$LAB_NETNS" link show "$bridge" >/dev/null 2>&1; then
        ip -n "$LAB_NETNS" link add "$bridge" type bridge
    fi
    ip -n "$LAB_NETNS" link set "$bridge" up
    [ "$veth" = - ] && continue   # the WAN: only hosts are on it
    if ! ip link show "$veth" >/dev/null 2>&1; then
        if ip -4 route show | grep -q "^$prefix\."; then
            lab_die "$prefix.0/24 ($net) is already routed on this machine; set MESHCORE_LAB_PREFIX (dc1), MESHCORE_LAB_PREFIX_DC2 or MESHCORE_LAB_PREFIX_WAN to a free /24" 2
        fi
        ip link add "$veth" type veth peer name "$veth-br"
        ip link set "$veth-br" netns "$LAB_NETNS"
        ip -n "$LAB_NETNS" link set "$veth-br" master "$bridge" up
        ip addr add "$prefix.1/24" dev "$veth"
    fi
    ip link set "$veth" up
done

# ---- 4. one tree per host, each with its own address, keys and machine id -------------------------
address_of() { cat "$LAB_MACHINES/$1.addr"; }
next_address() {  # next_address NET: the first free host address of that network
    local i prefix used
    read -r _ prefix _ <<< "$(lab_net "$1")"
    used=$(cat "$LAB_MACHINES"/*.addr "$LAB_MACHINES"/*.wan 2>/dev/null || true)
    for i in $(seq 11 250); do
        grep -qx "$prefix.$i" <<< "$used" || { echo "$prefix.$i"; return; }
    done
    lab_die "no free address left in $prefix.0/24 ($1)"
}
for name in "${hosts[@]}"; do
    dir=$LAB_MACHINES/$name
    [ -d "$dir" ] && [ -s "$dir.addr" ] && continue
    lab_log "creating host $name"
    rm -rf "$dir.tmp"
    cp -a --reflink=auto "$LAB_ROOTFS" "$dir.tmp"
    addr=$(next_address "${want_net[$name]}")
    echo "$name" > "$dir.tmp/etc/hostname"
    tr -d '-' < /proc/sys/kernel/random/uuid > "$dir.tmp/etc/machine-id"
    printf '[Match]\nName=host0\n\n[Network]\nAddress=%s/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' "$addr" \
        > "$dir.tmp/etc/systemd/network/10-host0.network"
    wan=""
    if [ -n "${want_wan[$name]}" ]; then
        wan=$(next_address wan)
        printf '[Match]\nName=wan0\n\n[Network]\nAddress=%s/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' "$wan" \
            > "$dir.tmp/etc/systemd/network/20-wan0.network"
    fi
    ssh-keygen -q -A -f "$dir.tmp" >/dev/null
    install -m 600 "$LAB_KEY.pub" "$dir.tmp/root/.ssh/authorized_keys"
    mv "$dir.tmp" "$dir"
    echo "${want_net[$name]}" > "$dir.net"
    [ -z "$wan" ] || echo "$wan" > "$dir.wan"
    echo "$addr" > "$dir.addr"
done

# every host knows every other by name (the trees are plain directories: running hosts see it too)
all=()
for f in "$LAB_MACHINES"/*.addr; do [ -e "$f" ] && all+=("$(basename "$f" .addr)"); done
hosts_file=$(printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
             for n in "${all[@]}"; do printf '%s\t%s\n' "$(address_of "$n")" "$n"; done
             for n in "${all[@]}"; do
                 if [ -s "$LAB_MACHINES/$n.wan" ]; then printf '%s\t%s-wan\n' "$(cat "$LAB_MACHINES/$n.wan")" "$n"; fi
             done)
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
json_hosts="" json_nets="" json_wan=""
for n in "${all[@]}"; do
    json_hosts+="${json_hosts:+, }\"$n\": \"$(address_of "$n")\""
    json_nets+="${json_nets:+, }\"$n\": \"$(cat "$LAB_MACHINES/$n.net" 2>/dev/null || echo dc1)\""
    if [ -s "$LAB_MACHINES/$n.wan" ]; then json_wan+="${json_wan:+, }\"$n\": \"$(cat "$LAB_MACHINES/$n.wan")\""; fi
done
printf '{"hosts": {%s}, "inventory": "%s", "ssh_key": "%s", "netns": "%s", "nets": {%s}, "wan": {%s}}\n' \
    "$json_hosts" "$LAB_INVENTORY" "$LAB_KEY" "$LAB_NETNS" "$json_nets" "$json_wan"
