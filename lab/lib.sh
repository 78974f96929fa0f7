# Shared settings of lab/up.sh and lab/down.sh (sourced, not run).
# Every name and address can be overridden from the environment.
LAB_CACHE=${MESHCORE_LAB_CACHE:-/var/cache/meshcore-lab}     # debootstrap rootfs, kept between runs
LAB_STATE=${MESHCORE_LAB_STATE:-/var/lib/meshcore-lab}       # per-host trees, keys, inventory; removed by down.sh
LAB_NETNS=${MESHCORE_LAB_NETNS:-meshcore-lab}                # network namespace holding the bridge
LAB_BRIDGE=${MESHCORE_LAB_BRIDGE:-mlbr0}                     # bridge inside LAB_NETNS
LAB_VETH=${MESHCORE_LAB_VETH:-mlab0}                         # this machine's leg on the bridge
LAB_PREFIX=${MESHCORE_LAB_PREFIX:-10.213.0}                  # a /24: .1 is this machine, hosts from .11
# The two-datacenter lab (lab/up.sh NAME@dc2, NAME@dc1+wan): dc1 is the bridge and /24 above; dc2 a bridge of its
# own; wan a third bridge that only the hosts given +wan are on (gateways, Consul servers). Nothing routes between
# them and this machine does not forward, so a dc1 host reaches a dc2 host only through a host on both.
LAB_BRIDGE_DC2=${MESHCORE_LAB_BRIDGE_DC2:-mlbr1}
LAB_VETH_DC2=${MESHCORE_LAB_VETH_DC2:-mlab1}                 # this machine's leg on dc2 (ssh, tests)
LAB_PREFIX_DC2=${MESHCORE_LAB_PREFIX_DC2:-10.213.1}
LAB_BRIDGE_WAN=${MESHCORE_LAB_BRIDGE_WAN:-mlbr2}             # no leg of this machine: only hosts on it
LAB_PREFIX_WAN=${MESHCORE_LAB_PREFIX_WAN:-10.213.2}
LAB_SUITE=${MESHCORE_LAB_SUITE:-bookworm}
LAB_MIRROR=${MESHCORE_LAB_MIRROR:-http://deb.debian.org/debian}
LAB_PACKAGES=systemd,systemd-sysv,dbus,openssh-server,iproute2,python3,python3-venv,python3-apt,ca-certificates,curl,procps,sudo
LAB_ROOTFS=$LAB_CACHE/rootfs
LAB_MACHINES=$LAB_STATE/machines
LAB_RUN=$LAB_STATE/run
LAB_KEY=$LAB_STATE/ssh/id_ed25519
LAB_INVENTORY=$LAB_STATE/inventory.ini

lab_log() { printf 'lab: %s\n' "$*" >&2; }
lab_die() { printf 'lab: error: %s\n' "$*" >&2; exit "${2:-1}"; }

lab_require_root() {
    [ "$(id -u)" = 0 ] || lab_die "the lab needs root (network namespaces, bridges, systemd-nspawn); run it as root" 2
}

# pid of a process recorded in a pid file, if it still runs
lab_live_pid() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    kill -0 "$pid" 2>/dev/null || return 1
    printf '%s\n' "$pid"
}

# ssh to a lab host as root with the lab key (host keys change with every new lab: not recorded)
lab_ssh() {
    local addr=$1; shift
    ssh -i "$LAB_KEY" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o LogLevel=ERROR -o ConnectTimeout=3 "root@$addr" "$@"
}

# bridge, /24 prefix and this machine's veth (none for wan) of a lab network: dc1, dc2 or wan
lab_net() {
    case $1 in
        dc1) echo "$LAB_BRIDGE $LAB_PREFIX $LAB_VETH" ;;
        dc2) echo "$LAB_BRIDGE_DC2 $LAB_PREFIX_DC2 $LAB_VETH_DC2" ;;
        wan) echo "$LAB_BRIDGE_WAN $LAB_PREFIX_WAN -" ;;
        *) return 1 ;;
    esac
}

# the host side of a host's WAN link (veth names are at most 15 characters)
lab_wan_veth() { echo "vw-${1:0:12}"; }
