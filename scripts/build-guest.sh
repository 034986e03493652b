#!/usr/bin/env bash
# Builds a small guest for the migration tests and benchmarks: Debian's
# kernel and a busybox initramfs, booted with
#   qemu-system-x86_64 -accel tcg -kernel DIR/vmlinuz -initrd DIR/initramfs.cpio \
#     -append "console=ttyS0 strato.seed=N"
# The guest gives a root shell on ttyS0 (prompt "strato-guest# ") and at boot
# fills RAM with data the migration has to move:
#   /shared/pool  4 MiB of random bytes made here, identical in every guest
#                 (something for dedup across guests to find);
#   /tmp/data     strato.data_mib MiB (default 8, a multiple of 4) derived from
#                 the pool through byte permutations seeded by strato.seed, so
#                 guests with different seeds share no data page, and the same
#                 seed gives the same content.
# The virtio-blk and ext4 modules are loaded at boot, so a disk given as
# -drive if=virtio shows up as /dev/vda and can carry ext4.
#
# Usage: scripts/build-guest.sh [DIR]   (DIR defaults to $STRATO_GUEST_DIR,
# else target/guest). Prints DIR. Idempotent (rebuilds only when this script
# changes) and safe to run concurrently (flock).
# Needs: apt-get (to download, never install, the kernel package), dpkg-deb,
# busybox-static, cpio, flock. Never installs a kernel on this machine.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-${STRATO_GUEST_DIR:-$repo/target/guest}}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

for tool in apt-get apt-cache dpkg-deb cpio flock sha256sum; do
  command -v "$tool" >/dev/null || { echo "build-guest: $tool is missing" >&2; exit 1; }
done
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || { echo "build-guest: busybox (busybox-static) is missing" >&2; exit 1; }
# The guest has no libc: a dynamically linked busybox names its loader.
if grep -qa '/lib64/ld-linux' "$busybox"; then
  echo "build-guest: $busybox is dynamically linked; install busybox-static" >&2
  exit 1
fi

# The stamp names this script's content: a changed script rebuilds the guest.
stamp="$(sha256sum "$0" | cut -d' ' -f1)"

exec 9>"$dir/.lock"
flock 9
if [ -f "$dir/stamp" ] && [ "$(cat "$dir/stamp")" = "$stamp" ] &&
  [ -f "$dir/vmlinuz" ] && [ -f "$dir/initramfs.cpio" ]; then
  echo "$dir"
  exit 0
fi

work="$(mktemp -d "$dir/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# --- kernel: Debian's current amd64 kernel package, downloaded and unpacked
kpkg="${STRATO_GUEST_KERNEL_PKG:-}"
if [ -z "$kpkg" ]; then
  resolve() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'; }
  kpkg=$(resolve)
  if [ -z "$kpkg" ]; then
    apt-get update -qq >&2
    kpkg=$(resolve)
  fi
  [ -n "$kpkg" ] || { echo "build-guest: apt knows no linux-image-amd64" >&2; exit 1; }
fi
case "$kpkg" in
  linux-image-*-amd64) ;;
  *) echo "build-guest: unexpected kernel package name: $kpkg" >&2; exit 1 ;;
esac
download() { (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg" >&2); }
# Stale package lists name versions the mirror no longer has: refresh once.
download || { apt-get update -qq >&2 && download; }
dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/kernel"
kver="${kpkg#linux-image-}"
moddir="$work/kernel/lib/modules/$kver/kernel"
[ -f "$work/kernel/boot/vmlinuz-$kver" ] && [ -d "$moddir" ] ||
  { echo "build-guest: $kpkg has no vmlinuz-$kver or modules" >&2; exit 1; }

# --- modules, in dependency order. The package carries no modules.dep (depmod
# makes it at install time), so the order comes from each module's own
# "depends=" field, which is what depmod reads too.
root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,mnt,shared,etc,lib/modules}
declare -A seen=()
order=()
modpath() { find "$moddir" -name "$1.ko" -o -name "$1.ko.xz" -o -name "$1.ko.zst" | head -1; }
add_module() {
  local name="$1" path deps dep
  [ -n "${seen[$name]:-}" ] && return 0
  seen[$name]=1
  path=$(modpath "$name")
  if [ -z "$path" ]; then
    # Built into this kernel: nothing to load.
    grep -q "/$name.ko" "$work/kernel/lib/modules/$kver/modules.builtin" 2>/dev/null && return 0
    echo "build-guest: module $name is neither in $kpkg nor built in" >&2
    exit 1
  fi
  # busybox insmod takes plain modules: newer kernels ship them compressed.
  case "$path" in
    *.ko) cp "$path" "$work/$name.ko" ;;
    *.ko.xz) xz -dc "$path" >"$work/$name.ko" ;;
    *.ko.zst) zstd -qdc "$path" >"$work/$name.ko" ;;
  esac
  deps=$(tr '\0' '\n' <"$work/$name.ko" | grep -a '^depends=' | head -1 | cut -d= -f2 | tr ',' ' ')
  for dep in $deps; do add_module "$dep"; done
  mv "$work/$name.ko" "$root/lib/modules/$name.ko"
  order+=("$name")
}
# crc32c_generic first: ext4 and jbd2 ask the crypto API for crc32c, which
# would need a working modprobe to load on demand.
for m in crc32c_generic virtio_pci virtio_blk ext4; do add_module "$m"; done
printf '%s\n' "${order[@]}" >"$root/etc/modules.order"

# --- busybox and its applets
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

# --- data identical across guests
head -c $((4 << 20)) /dev/urandom >"$root/shared/pool"

cat >"$root/init" <<'EOF'
#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs -o size=90% tmp /tmp
# Kernel messages would interleave with the shell's output on the console.
echo 1 >/proc/sys/kernel/printk
for m in $(cat /etc/modules.order); do
  insmod "/lib/modules/$m.ko" || echo "strato-guest: insmod $m failed"
done

seed=0
data_mib=8
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    strato.seed=*) seed="${arg#strato.seed=}" ;;
    strato.data_mib=*) data_mib="${arg#strato.data_mib=}" ;;
  esac
done
case "$seed" in ''|*[!0-9]*) seed=0 ;; esac
case "$data_mib" in ''|*[!0-9]*) data_mib=8 ;; esac

# A byte permutation from (seed, segment), printed as tr's octal escapes.
perm() {
  awk -v s="$1" 'BEGIN {
    srand(s)
    for (i = 0; i < 256; i++) p[i] = i
    for (i = 255; i > 0; i--) { j = int(rand() * (i + 1)); t = p[i]; p[i] = p[j]; p[j] = t }
    for (i = 0; i < 256; i++) printf "\\%03o", p[i]
  }'
}
: >/tmp/data
segment=0
while [ $((segment * 4)) -lt "$data_mib" ]; do
  tr '\000-\377' "$(perm $((seed * 65536 + segment + 1)))" </shared/pool >>/tmp/data
  segment=$((segment + 1))
done
sync
echo "strato-guest: seed=$seed data_mib=$data_mib ready"

export PS1='strato-guest# '
export HOME=/tmp
while true; do
  setsid cttyhack sh -i
  sleep 1
done
EOF
chmod +x "$root/init"

(cd "$root" && find . | cpio -o -H newc --quiet) >"$work/initramfs.cpio"
cp "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"
echo "$kpkg" >"$work/kernel.package"
# Replace the previous build in one step per file; readers holding the old
# files keep them (rename does not touch open files).
mv -f "$work/vmlinuz" "$dir/vmlinuz"
mv -f "$work/initramfs.cpio" "$dir/initramfs.cpio"
mv -f "$work/kernel.package" "$dir/kernel.package"
echo "$stamp" >"$dir/stamp"
echo "$dir"
