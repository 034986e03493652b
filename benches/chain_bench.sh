#!/usr/bin/env bash
# Broadcast-chain benchmark (issue 5, thesis §3.5.1 / Table 3.1).
#
# Builds a star of network namespaces: a repository (h0) and up to 8 nodes
# (h1..h8), each joined by a veth pair to a bridge in a namespace of its own.
# Every link is shaped to RATE (200 Mbit/s) in both directions with tbf, so
# the links and not the 2 CPUs are the bottleneck. Then, in one run, it
# delivers one SIZE_MB image to n = 1, 2, 4, 8 nodes by
#   (a) sequential unicast copies (socat),  (b) parallel unicast (socat),
#   (c) a socat | tee relay chain,           (d) TakTuk (if feasible),
#   (e) strato's chain (chain-agent --store on each node, verifying and
#       storing every chunk),
# and prints the median of REPS runs and its ratio to the TCP ideal
# (size / RATE) and to one measured TCP copy.
#
# Data lives on a tmpfs mounted for the run: with 8 receivers the disk would
# otherwise become the bottleneck. Needs root, iproute2 and tc; installs
# socat (and taktuk + openssh-server for (d)) if missing.
#
#   SIZE_MB=512 REPS=3 NS=1,2,4,8 benches/chain_bench.sh
#   (TAKTUK=0 skips TakTuk; ONLY=strato runs only strato's chain)
#
# Everything it creates (namespaces, processes by PID, the tmpfs) is removed
# on exit, whatever happens.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE_MB=${SIZE_MB:-512}
REPS=${REPS:-3}
RATE_MBIT=${RATE_MBIT:-200}
NS_LIST=${NS:-1,2,4,8}
TAKTUK=${TAKTUK:-1}
P="scb$$"            # prefix of every namespace this run creates
NET=10.78.0          # addresses exist only inside our namespaces
PORT=5001
PIDS=()

need_root
need_tools ip tc
if ! command -v socat >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q socat >/dev/null
fi
strato_bin

IFS=, read -r -a NS_ARR <<<"$NS_LIST"
MAXN=0
for n in "${NS_ARR[@]}"; do [ "$n" -gt "$MAXN" ] && MAXN=$n; done

T=$(mktemp -d /tmp/chain-bench.XXXXXX)
cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  lan_down
  umount "$T/fs" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT INT TERM

mkdir -p "$T/fs"
# Image, repository store, and per node a store plus the copy read back.
mount -t tmpfs -o size=$(( SIZE_MB * (2 * MAXN + 4) + 512 ))m tmpfs "$T/fs"
D=$T/fs

# --- topology --------------------------------------------------------------
lan_up "$P" "$NET" "$MAXN" "$RATE_MBIT"

head -c $((SIZE_MB << 20)) /dev/urandom >"$D/img"
SUM=$(md5sum <"$D/img" | cut -d' ' -f1)

# Waits for the given PIDs, failing if any takes longer than the limit.
wait_pids() {
  local limit=$(( SIZE_MB * 2 + 120 )) start=$SECONDS
  for pid in "$@"; do
    while kill -0 "$pid" 2>/dev/null; do
      if (( SECONDS - start > limit )); then echo "timeout" >&2; kill -KILL "$pid"; return 1; fi
      sleep 0.02
    done
    wait "$pid" || return 1
  done
}
check() { # every node's copy is intact
  local n=$1 f
  for i in $(seq 1 "$n"); do
    f=$D/n$i/img
    [ "$(md5sum <"$f" | cut -d' ' -f1)" = "$SUM" ] || { echo "node $i: bad copy" >&2; return 1; }
  done
}
fresh() { for i in $(seq 1 "$MAXN"); do rm -rf "$D/n$i"; mkdir -p "$D/n$i"; done; }
receiver() { # unicast receiver on node i; its PID in RPID
  ip netns exec "${P}h$1" socat -u TCP-LISTEN:$PORT,reuseaddr "OPEN:$D/n$1/img,creat,trunc" </dev/null >/dev/null &
  RPID=$!; PIDS+=("$RPID")
  wait_listen "$1" $PORT
}

# --- methods: each prints elapsed seconds ------------------------------------
m_seq() {
  local n=$1 t0 pid
  fresh; t0=$(now)
  for i in $(seq 1 "$n"); do
    receiver "$i"
    inns 0 socat -u "FILE:$D/img" TCP:$(addr "$i"):$PORT
    wait_pids "$RPID"
  done
  echo "$(now) - $t0" | bc; check "$n"
}
m_par() {
  local n=$1 t0 pids=() senders=()
  fresh
  for i in $(seq 1 "$n"); do receiver "$i"; pids+=("$RPID"); done
  t0=$(now)
  for i in $(seq 1 "$n"); do ip netns exec "${P}h0" socat -u "FILE:$D/img" TCP:$(addr "$i"):$PORT & senders+=($!); done
  wait_pids "${senders[@]}" "${pids[@]}"
  echo "$(now) - $t0" | bc; check "$n"
}
m_tee() {
  local n=$1 t0 pids=() i
  fresh
  # From the tail up, so each relay's successor already listens.
  receiver "$n"; pids+=("$RPID")
  for i in $(seq $((n - 1)) -1 1); do
    # Its own process group (setsid execs in place here, keeping $!), so
    # the cleanup can kill the whole pipeline.
    setsid ip netns exec "${P}h$i" sh -c "socat -u TCP-LISTEN:$PORT,reuseaddr STDOUT | tee $D/n$i/img | socat -u STDIN TCP:$(addr $((i + 1))):$PORT" &
    pids+=($!); PIDS+=($!); wait_listen "$i" $PORT
  done
  t0=$(now)
  inns 0 socat -u "FILE:$D/img" TCP:$(addr 1):$PORT
  wait_pids "${pids[@]}"
  echo "$(now) - $t0" | bc; check "$n"
}

# strato: the repository store in h0's view of the tmpfs, agents with
# --store on each node, fresh node stores every run.
"$STRATO" --data-dir "$D/repo" mb bkt >/dev/null
"$STRATO" --data-dir "$D/repo" put "$D/img" bkt/img >/dev/null
# Agents off loopback accept only sessions signed by the repository's key.
TRUST_KEY=$("$STRATO" --data-dir "$D/repo" trust-key)
m_strato() {
  local n=$1 t0 pids=() nodes="" i line
  fresh
  for i in $(seq 1 "$n"); do
    ip netns exec "${P}h$i" "$STRATO" chain-agent --listen "$(addr "$i"):7400" --store "$D/n$i/store" --trust-key "$TRUST_KEY" \
      >"$D/agent$i.log" 2>&1 &
    pids+=($!); PIDS+=($!); wait_listen "$i" 7400
    nodes="$nodes${nodes:+,}$(addr "$i"):7400"
  done
  t0=$(now)
  inns 0 "$STRATO" --data-dir "$D/repo" --json propagate bkt/img --nodes "$nodes" >"$D/report.json"
  echo "$(now) - $t0" | bc
  # Graceful stop releases the store lock for `strato get`.
  for pid in "${pids[@]}"; do kill -TERM "$pid"; done
  wait_pids "${pids[@]}"
  for i in $(seq 1 "$n"); do
    "$STRATO" --data-dir "$D/n$i/store" get bkt/img "$D/n$i/img" >/dev/null
  done
  check "$n"
}

# TakTuk over an sshd in each node's namespace; data enters the tree from
# h0 through ssh over the shaped links (the connector is ssh, not
# `ip netns exec`, which would bypass them).
TK_REASON=""
tk_setup() {
  if ! command -v taktuk >/dev/null || ! [ -x /usr/sbin/sshd ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q taktuk openssh-server >/dev/null 2>&1 ||
      { TK_REASON="apt-get install taktuk openssh-server failed"; return 1; }
  fi
  mkdir -p "$T/ssh" /run/sshd
  ssh-keygen -q -t ed25519 -N "" -f "$T/ssh/id" >/dev/null
  cp "$T/ssh/id.pub" "$T/ssh/authorized_keys"
  [ -f /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -A >/dev/null
  cat >"$T/ssh/sshd_config" <<EOF
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
AuthorizedKeysFile $T/ssh/authorized_keys
StrictModes no
UsePAM no
PidFile none
EOF
  for i in $(seq 1 "$MAXN"); do
    ip netns exec "${P}h$i" /usr/sbin/sshd -D -f "$T/ssh/sshd_config" -o ListenAddress="$(addr "$i")" &
    PIDS+=($!)
    wait_listen "$i" 22 || { TK_REASON="sshd did not start in the namespaces"; return 1; }
  done
  TK_SSH="ssh -i $T/ssh/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
  if ! timeout 60 ip netns exec "${P}h0" taktuk -c "$TK_SSH" -m "$(addr 1)" broadcast exec [ true ] >/dev/null 2>"$T/tk.err"; then
    TK_REASON="taktuk could not deploy over ssh: $(head -c 200 "$T/tk.err")"
    return 1
  fi
}
m_taktuk() {
  local n=$1 t0 hosts=()
  fresh
  for i in $(seq 1 "$n"); do hosts+=(-m "$(addr "$i")"); done
  t0=$(now)
  # Each node's shell writes the broadcast input to its own directory.
  timeout $(( SIZE_MB * 2 + 120 )) ip netns exec "${P}h0" taktuk -c "$TK_SSH" "${hosts[@]}" \
    broadcast exec [ "cat > $D/n\$TAKTUK_RANK/img" ] \; \
    broadcast input file [ "$D/img" ] \; broadcast input close >/dev/null
  echo "$(now) - $t0" | bc
  # TakTuk ranks are 1..n but not in -m order; every rank is one node.
  check "$n"
}

IDEAL=$(echo "scale=3; $SIZE_MB * 1048576 * 8 / ($RATE_MBIT * 1000000)" | bc)

echo "image ${SIZE_MB} MiB, links ${RATE_MBIT} Mbit/s full duplex (tbf), median of $REPS"
echo "TCP ideal (size / rate): ${IDEAL} s"
# Runs method $1 for n=$2 REPS times in this shell (so every PID stays
# known to the cleanup) and leaves the median in RESULT.
run() {
  : >"$T/times"
  for _ in $(seq 1 "$REPS"); do "m_$1" "$2" >>"$T/times"; done
  RESULT=$(median <"$T/times")
}
run seq 1; ONE=$RESULT
echo "one TCP copy (socat, measured): ${ONE} s"
echo

METHODS="seq par tee"
if [ -n "${ONLY:-}" ]; then
  METHODS=""; TAKTUK=0   # e.g. ONLY=strato: just strato's chain (and the one-copy baseline)
fi
if [ "$TAKTUK" = 1 ]; then
  if tk_setup; then METHODS="$METHODS taktuk"; else echo "(d) TakTuk skipped: $TK_REASON"; fi
else
  echo "(d) TakTuk skipped: TAKTUK=0"
fi
METHODS="$METHODS strato"

declare -A RES
for m in $METHODS; do
  for n in "${NS_ARR[@]}"; do
    run "$m" "$n"; RES[$m,$n]=$RESULT
    echo "  $m n=$n: $RESULT s" >&2
  done
done

printf "%-28s" "method \\ n"
for n in "${NS_ARR[@]}"; do printf "%22s" "n=$n"; done; echo
for m in $METHODS; do
  case $m in
    seq) label="(a) unicast, sequential" ;; par) label="(b) unicast, parallel" ;;
    tee) label="(c) socat|tee chain" ;; taktuk) label="(d) TakTuk" ;; strato) label="(e) strato chain" ;;
  esac
  printf "%-28s" "$label"
  for n in "${NS_ARR[@]}"; do
    v=${RES[$m,$n]}
    printf "%8.2fs (%4.2fx/%4.2fx)" "$v" "$(echo "$v / $IDEAL" | bc -l)" "$(echo "$v / $ONE" | bc -l)"
  done
  echo
done
echo "(ratios: to the TCP ideal / to one measured TCP copy)"
