# Shared helpers of the shell benches; source it:  . "$(dirname "$0")/lib.sh"
# Sets ROOT (the repository). Nothing here runs on its own.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# strato_bin [wanem]: STRATO = the release binary (STRATO_BIN if set, else
# built here). With "wanem", also WANEM = strato-wanem beside it (a separate
# workspace member, built too).
strato_bin() {
  STRATO=${STRATO_BIN:-$ROOT/target/release/strato}
  if [ -z "${STRATO_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -q --bin strato >&2)
    if [ "${1:-}" = wanem ]; then
      (cd "$ROOT" && cargo build --release -q -p strato-wanem >&2)
    fi
  fi
  WANEM=$(dirname "$STRATO")/strato-wanem
  if [ "${1:-}" = wanem ] && [ ! -x "$WANEM" ]; then
    echo "$WANEM missing (cargo build --release -p strato-wanem)" >&2
    exit 1
  fi
}

# need_tools TOOL...: fail (never skip) when a tool is missing.
need_tools() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "$t missing (scripts/test.sh installs it)" >&2; exit 1; }
  done
}

need_root() {
  [ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
}

# time_of CMD... -> prints "seconds maxrss_kb" (GNU time); fails the bench if CMD fails.
time_of() {
  local t
  t=$(mktemp)
  /usr/bin/time -f "%e %M" -o "$t" "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; rm -f "$t"; exit 1; }
  cat "$t"
  rm -f "$t"
}

# median: of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

now() { date +%s.%N; }

# --- a LAN of namespaces ----------------------------------------------------
# lan_up PREFIX NET MAXN RATE_MBIT [mcast]: hosts PREFIXh0..PREFIXhMAXN, each
# with eth0 = NET.(i+1)/24 on a bridge in namespace PREFIXbr. Every link is
# shaped both ways (what a host sends on eth0, what it receives on the
# bridge side) with tbf at RATE_MBIT. "mcast": no multicast snooping, a
# broadcast address and a 224/4 route on every host.
lan_up() {
  local p=$1 net=$2 maxn=$3 rate=$4 mcast=${5:-} i ns
  LAN_PREFIX=$p LAN_NET=$net LAN_MAXN=$maxn
  ip netns add "${p}br"
  ip -n "${p}br" link add br0 type bridge
  [ -n "$mcast" ] && ip -n "${p}br" link set br0 type bridge mcast_snooping 0
  ip -n "${p}br" link set br0 up
  for i in $(seq 0 "$maxn"); do
    ns="${p}h$i"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add eth0 type veth peer name p$i netns "${p}br"
    ip -n "${p}br" link set p$i master br0
    ip -n "${p}br" link set p$i up
    if [ -n "$mcast" ]; then
      # brd +: udpcast receivers find the sender by broadcast.
      ip -n "$ns" addr add "$net.$((i + 1))/24" brd + dev eth0
    else
      ip -n "$ns" addr add "$net.$((i + 1))/24" dev eth0
    fi
    ip -n "$ns" link set eth0 up
    [ -n "$mcast" ] && ip -n "$ns" route add 224.0.0.0/4 dev eth0
    ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "${rate}mbit" burst 256kb latency 50ms
    ip netns exec "${p}br" tc qdisc add dev p$i root tbf rate "${rate}mbit" burst 256kb latency 50ms
  done
}

# lan_down: remove what lan_up made (safe to call twice or before lan_up).
lan_down() {
  local i
  [ -n "${LAN_PREFIX:-}" ] || return 0
  for i in $(seq 0 "$LAN_MAXN"); do ip netns del "${LAN_PREFIX}h$i" 2>/dev/null; done
  ip netns del "${LAN_PREFIX}br" 2>/dev/null
  return 0
}

# addr I: host I's address on the LAN.
addr() { echo "$LAN_NET.$(($1 + 1))"; }

# inns I CMD...: run CMD in host I's namespace (foreground only: a function
# run with & is a subshell whose PID is not the process's, so background
# processes use `ip netns exec` directly, which execs).
inns() { local i=$1; shift; ip netns exec "${LAN_PREFIX}h$i" "$@"; }

# wait_listen I PORT: wait (bounded, 10 s) until something listens on PORT in host I.
wait_listen() {
  local i=$1 port=$2
  for _ in $(seq 1 200); do
    inns "$i" ss -ltn "sport = :$port" 2>/dev/null | grep -q LISTEN && return 0
    sleep 0.05
  done
  echo "nothing listening on $(addr "$i"):$port" >&2
  return 1
}

# kill_pids PID...: SIGKILL each (and its process group) and reap it.
kill_pids() {
  local pid
  for pid in "$@"; do kill -KILL -- "-$pid" "$pid" 2>/dev/null; done
  for pid in "$@"; do wait "$pid" 2>/dev/null; done
  return 0
}
