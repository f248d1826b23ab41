# netns-nodes.sh - sourced by start-local-cluster.sh and stop-local-cluster.sh: the network of
# the extra compute nodes (LOCAL_SLURM_NS_NODES=N). Each node rlnode<i> lives in its own network
# namespace rlslurm-n<i>, reached through a veth pair whose host end sits on the bridge
# rlslurm0 (10.199.77.1/24, the controller's address for the nodes) and whose node end is
# `eth0` with 10.199.77.<10+i>. Nothing leaves this machine: no route, no NAT, only these
# addresses. munge's socket and the file system are shared (one mount namespace), as on a
# cluster with a shared file system.

NS_BRIDGE=rlslurm0
NS_PREFIX=10.199.77
NS_CTL_ADDR=$NS_PREFIX.1
NS_RECORD=/run/local-slurm/netns   # what netns_up created, for netns_down

ns_name() { echo "rlslurm-n$1"; }
ns_node() { echo "rlnode$1"; }
ns_addr() { echo "$NS_PREFIX.$((10 + $1))"; }

# netns_up N: the bridge and N namespaces with their veth pairs (idempotent).
netns_up() {
    local n=$1 i ns veth
    mkdir -p "$(dirname "$NS_RECORD")"
    touch "$NS_RECORD"
    if ! ip link show "$NS_BRIDGE" >/dev/null 2>&1; then
        ip link add "$NS_BRIDGE" type bridge
        ip addr add "$NS_CTL_ADDR/24" dev "$NS_BRIDGE"
        echo "bridge $NS_BRIDGE" >>"$NS_RECORD"
    fi
    ip link set "$NS_BRIDGE" up
    for ((i = 1; i <= n; i++)); do
        ns=$(ns_name "$i") veth=rlsn$i
        if ! ip netns list | grep -qw "$ns"; then
            ip netns add "$ns"
            echo "netns $ns" >>"$NS_RECORD"
        fi
        if ! ip link show "$veth" >/dev/null 2>&1; then
            ip link add "$veth" type veth peer name eth0 netns "$ns"
            ip link set "$veth" master "$NS_BRIDGE"
            ip -n "$ns" addr add "$(ns_addr "$i")/24" dev eth0
        fi
        ip link set "$veth" up
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 up
    done
}

# netns_down: remove the namespaces and the bridge that netns_up created (their veths go too).
netns_down() {
    local kind name
    [ -f "$NS_RECORD" ] || return 0
    while read -r kind name; do
        case "$kind" in
        netns) ip netns delete "$name" 2>/dev/null || true ;;
        bridge) ip link delete "$name" 2>/dev/null || true ;;
        esac
    done <"$NS_RECORD"
    rm -f "$NS_RECORD"
}

# ns_slurmd I: start node I's slurmd inside its namespace, with its own host name (UTS namespace).
# nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup mounts slurmd needs.
ns_slurmd() {
    local i=$1
    nsenter --net="/run/netns/$(ns_name "$i")" unshare --uts sh -c \
        "hostname $(ns_node "$i") && exec /usr/sbin/slurmd -N $(ns_node "$i")" </dev/null >/dev/null 2>&1
}
