# Shared settings of lab/up.sh and lab/down.sh (sourced, not run).
# Every name and address can be overridden from the environment.
LAB_CACHE=${MESHCORE_LAB_CACHE:-/var/cache/meshcore-lab}     # debootstrap rootfs, kept between runs
LAB_STATE=${MESHCORE_LAB_STATE:-/var/lib/meshcore-lab}       # per-host trees, keys, inventory; removed by down.sh
LAB_NETNS=${MESHCORE_LAB_NETNS:-meshcore-lab}                # network namespace holding the bridge
LAB_BRIDGE=${MESHCORE_LAB_BRIDGE:-mlbr0}                     # bridge inside LAB_NETNS
LAB_VETH=${MESHCORE_LAB_VETH:-mlab0}                         # this machine's leg on the bridge
LAB_PREFIX=${MESHCORE_LAB_PREFIX:-10.213.0}                  # a /24: .1 is this machine, hosts from .11
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
