#!/usr/bin/env bash
# Multicast distribution benchmark (issue 6, Jump-Start §4 Fig. 4-5).
#
# A star of network namespaces: a repository/sender (h0) and up to 8
# receivers (h1..h8), each joined by a veth pair to a bridge in a namespace
# of its own (multicast snooping off). Every link is shaped to RATE_MBIT
# (200 Mbit/s) in both directions with tbf. In one run it delivers one
# SIZE_MB image to n = 1, 2, 4, 8 receivers, at 0 % and LOSS % loss, with
#   strato mcast   (send --endpoint from a strato serve in h0, recv --out)
#   strato chain   (propagate to chain-agents --out-dir)
#   udpcast        (udp-sender / udp-receiver)
#   uftp           (uftp / uftpd)
# and prints the median of REPS runs per cell, with ratios to uftp.
#
# Loss: this kernel has no netem, so LOSS % of the IPv4 packets entering
# each receiver (its eth0, netdev ingress hook) are dropped by nftables
# (`numgen random`): every tool, UDP or TCP, sees the same independent loss
# per receiver. strato's receivers verify every chunk (BLAKE3); every
# tool's copies are checked with md5sum after each run.
#
#   SIZE_MB=512 REPS=1 NS=1,2,4,8 LOSSES=0,1 benches/mcast_bench.sh
#   (TOOLS="mcast uftp" runs only those; RATE_ARG is strato's --rate)
#
# Data lives on a tmpfs mounted for the run. Needs root, iproute2, tc and
# nft; installs udpcast, uftp and nftables if missing. Everything it
# creates (namespaces, processes by PID, the tmpfs) is removed on exit.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SIZE_MB=${SIZE_MB:-512}
REPS=${REPS:-1}
RATE_MBIT=${RATE_MBIT:-200}
NS_LIST=${NS:-1,2,4,8}
LOSSES=${LOSSES:-0,1}
TOOLS=${TOOLS:-mcast chain udpcast uftp}
# strato paces link bits (Ethernet/IP/UDP headers included) just under the
# shaper so its queue never overflows.
RATE_ARG=${RATE_ARG:-$(( RATE_MBIT * 99 / 100 ))mbit}
P="smb$$"            # prefix of every namespace this run creates
NET=10.79.0          # addresses exist only inside our namespaces
GROUP=239.79.0.1:7500
PIDS=()

need_root
need_tools ip tc
need=()
command -v udp-sender >/dev/null || need+=(udpcast)
command -v uftp >/dev/null || need+=(uftp)
command -v nft >/dev/null || need+=(nftables)
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi
strato_bin

IFS=, read -r -a NS_ARR <<<"$NS_LIST"
IFS=, read -r -a LOSS_ARR <<<"$LOSSES"
MAXN=0
for n in "${NS_ARR[@]}"; do [ "$n" -gt "$MAXN" ] && MAXN=$n; done

T=$(mktemp -d /tmp/mcast-bench.XXXXXX)
cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  lan_down
  umount "$T/fs" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$T/fs"
# Image, repository store, a copy per receiver (+ temporaries).
mount -t tmpfs -o size=$(( SIZE_MB * (2 * MAXN + 4) + 512 ))m tmpfs "$T/fs"
D=$T/fs

# --- topology --------------------------------------------------------------
lan_up "$P" "$NET" "$MAXN" "$RATE_MBIT" mcast
# A loss rule per receiver, changed per run (0 = no drops).
for i in $(seq 1 "$MAXN"); do
  inns "$i" nft -f - <<EOF
table netdev loss {
  chain lossy {
    type filter hook ingress device eth0 priority 0;
  }
}
EOF
done
set_loss() { # permille of IPv4 packets each receiver drops
  local pm=$1
  for i in $(seq 1 "$MAXN"); do
    inns "$i" nft flush chain netdev loss lossy
    if [ "$pm" -gt 0 ]; then
      inns "$i" nft add rule netdev loss lossy meta protocol ip numgen random mod 1000 "<" "$pm" drop
    fi
  done
}

head -c $((SIZE_MB << 20)) /dev/urandom >"$D/img"
SUM=$(md5sum <"$D/img" | cut -d' ' -f1)

wait_pids() { # all PIDs, bounded; fails if one fails or times out
  local limit=$(( SIZE_MB + 300 )) start=$SECONDS rc=0
  for pid in "$@"; do
    while kill -0 "$pid" 2>/dev/null; do
      if (( SECONDS - start > limit )); then echo "timeout" >&2; kill -KILL "$pid"; rc=1; break; fi
      sleep 0.02
    done
    wait "$pid" || rc=1
  done
  return $rc
}
check() {
  local n=$1 f
  for i in $(seq 1 "$n"); do
    f=$D/n$i/img
    [ -f "$f" ] && [ "$(md5sum <"$f" | cut -d' ' -f1)" = "$SUM" ] || { echo "receiver $i: bad or missing copy" >&2; return 1; }
  done
}
fresh() { for i in $(seq 1 "$MAXN"); do rm -rf "$D/n$i"; mkdir -p "$D/n$i"; done; }

# strato: the repository is a strato serve in h0 (loopback), as in
# `strato mcast send s3://... --endpoint`.
export STRATO_ACCESS_KEY=BENCHACCESSKEY000001 STRATO_SECRET_KEY=bench-secret-key-0123456789abcdefghij
"$STRATO" --data-dir "$D/repo" mb bkt >/dev/null
"$STRATO" --data-dir "$D/repo" put "$D/img" bkt/img >/dev/null
# Agents off loopback accept only sessions signed by the repository's key.
TRUST_KEY=$("$STRATO" --data-dir "$D/repo" trust-key)
ip netns exec "${P}h0" "$STRATO" --data-dir "$D/repo" serve --listen 127.0.0.1:9000 >"$T/serve.log" 2>&1 &
PIDS+=($!); wait_listen 0 9000

m_mcast() {
  local n=$1 t0 pids=() spid
  fresh
  t0=$(now)
  ip netns exec "${P}h0" "$STRATO" --json mcast send s3://bkt/img --endpoint http://127.0.0.1:9000 \
    --group $GROUP --interface "$(addr 0)" --rate "$RATE_ARG" --expect "$n" >"$T/send.json" 2>"$T/send.log" &
  spid=$!; PIDS+=($spid); wait_listen 0 7401
  for i in $(seq 1 "$n"); do
    ip netns exec "${P}h$i" "$STRATO" --json mcast recv --group $GROUP --sender "$(addr 0)" \
      --trust-key "$TRUST_KEY" --out "$D/n$i/img" >"$T/recv$i.json" 2>"$T/recv$i.log" &
    pids+=($!); PIDS+=($!)
  done
  wait_pids "$spid" "${pids[@]}" || { cat "$T/send.log" >&2; return 1; }
  echo "$(now) - $t0" | bc
  check "$n"
}
m_chain() {
  local n=$1 t0 pids=() nodes="" i
  fresh
  for i in $(seq 1 "$n"); do
    ip netns exec "${P}h$i" "$STRATO" chain-agent --listen "$(addr "$i"):7400" --out-dir "$D/n$i" --trust-key "$TRUST_KEY" \
      >"$T/agent$i.log" 2>&1 &
    pids+=($!); PIDS+=($!); wait_listen "$i" 7400
    nodes="$nodes${nodes:+,}$(addr "$i"):7400"
  done
  t0=$(now)
  # From the running repository (its store is locked by strato serve).
  inns 0 "$STRATO" --json propagate s3://bkt/img --endpoint http://127.0.0.1:9000 --nodes "$nodes" \
    >"$T/chain.json" 2>"$T/chain.log" || { tail -5 "$T/chain.log" >&2; return 1; }
  echo "$(now) - $t0" | bc
  for pid in "${pids[@]}"; do kill -TERM "$pid"; done
  wait_pids "${pids[@]}" || true
  check "$n"
}
m_udpcast() {
  local n=$1 t0 pids=() spid
  fresh
  for i in $(seq 1 "$n"); do
    ip netns exec "${P}h$i" udp-receiver --file "$D/n$i/img" --interface eth0 --nokbd \
      >"$T/udpr$i.log" 2>&1 &
    pids+=($!); PIDS+=($!)
  done
  t0=$(now)
  ip netns exec "${P}h0" udp-sender --file "$D/img" --interface eth0 --min-receivers "$n" \
    --nokbd --max-bitrate "${UDPCAST_RATE:-$(( RATE_MBIT * 95 / 100 ))m}" >"$T/udps.log" 2>&1 &
  spid=$!; PIDS+=($spid)
  wait_pids "$spid" "${pids[@]}" || { tail -n 5 "$T/udps.log" "$T/udpr1.log" >&2; return 1; }
  echo "$(now) - $t0" | bc
  check "$n"
}
m_uftp() {
  local n=$1 t0 pids=() hosts="" i
  fresh
  for i in $(seq 1 "$n"); do
    ip netns exec "${P}h$i" uftpd -d -D "$D/n$i" -I eth0 >"$T/uftpd$i.log" 2>&1 &
    pids+=($!); PIDS+=($!)
    hosts="$hosts${hosts:+,}$(addr "$i")"
  done
  sleep 0.5
  t0=$(now)
  inns 0 uftp -I eth0 -R "${UFTP_RATE:-$(( RATE_MBIT * 1000 * 95 / 100 ))}" -b 1400 -B 8388608 \
    -H "$hosts" "$D/img" >"$T/uftp.log" 2>&1 || { tail -5 "$T/uftp.log" >&2; return 1; }
  echo "$(now) - $t0" | bc
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  wait_pids "${pids[@]}" || true
  check "$n"
}

IDEAL=$(echo "scale=3; $SIZE_MB * 1048576 * 8 / ($RATE_MBIT * 1000000)" | bc)
echo "image ${SIZE_MB} MiB, links ${RATE_MBIT} Mbit/s full duplex (tbf), median of $REPS; TCP ideal ${IDEAL} s"

declare -A RES
for loss in "${LOSS_ARR[@]}"; do
  set_loss $(( loss * 10 ))
  for m in $TOOLS; do
    for n in "${NS_ARR[@]}"; do
      : >"$T/times"
      for _ in $(seq 1 "$REPS"); do
        if ! "m_$m" "$n" >>"$T/times"; then echo "FAILED" >"$T/times"; break; fi
      done
      RES[$m,$n,$loss]=$(median <"$T/times")
      echo "  loss ${loss}% $m n=$n: ${RES[$m,$n,$loss]} s" >&2
      if [ "$m" = mcast ] && [ -s "$T/send.json" ]; then
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("    mcast rounds:", [(x["round"], x["pieces"], x["elapsed_ms"]) for x in r["rounds"]], "outcomes:", [x["outcome"] for x in r["receivers"]])' "$T/send.json" >&2 || true
      fi
    done
  done
done

num() { [[ $1 =~ ^[0-9.]+$ ]]; }
for loss in "${LOSS_ARR[@]}"; do
  echo
  echo "loss ${loss}%:"
  printf "%-16s" "tool \\ n"
  for n in "${NS_ARR[@]}"; do printf "%20s" "n=$n"; done; echo
  for m in $TOOLS; do
    printf "%-16s" "$m"
    for n in "${NS_ARR[@]}"; do
      v=${RES[$m,$n,$loss]}; u=${RES[uftp,$n,$loss]:-}
      if num "$v" && num "$u"; then
        printf "%10.2fs (%5.3fx)" "$v" "$(echo "$v / $u" | bc -l)"
      else
        printf "%20s" "$v"
      fi
    done
    echo
  done
done
echo "(ratios to uftp at the same n and loss)"
for n in "${NS_ARR[@]}"; do
  a=${RES[mcast,$n,0]:-}; b=${RES[mcast,$n,1]:-}
  if num "$a" && num "$b"; then
    printf "strato mcast n=%s: 1%% loss / 0%% loss = %.3f\n" "$n" "$(echo "$b / $a" | bc -l)"
  fi
done
