#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need
# (Debian packages, a Python venv with s3cmd and boto3), then runs every test.
# A missing tool fails the tests that need it; nothing is skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)
command -v qemu-img >/dev/null || need_apt+=(qemu-utils)
command -v qemu-io >/dev/null || need_apt+=(qemu-utils)
# tests/migrate_disk.rs exports a destination disk with qemu-nbd.
command -v qemu-nbd >/dev/null || need_apt+=(qemu-utils)
# s3-compat's suite PUTs a chunked body with curl --aws-sigv4.
command -v curl >/dev/null || need_apt+=(curl)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v tc >/dev/null || need_apt+=(iproute2)
# Multicast tests make link loss with nftables (this kernel has no netem).
command -v nft >/dev/null || need_apt+=(nftables)
# The migration tests' guest (scripts/build-guest.sh): a static busybox for
# its initramfs, cpio to pack it. tests/wanem.rs pings with that busybox and
# runs its TCP/UDP ends with python3.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need_apt+=(busybox-static)
command -v cpio >/dev/null || need_apt+=(cpio)
command -v zstd >/dev/null || need_apt+=(zstd)
# tests/fileview.rs: `strato mount` (fuser) mounts with mount(2) as root and
# falls back to fusermount3 where that is refused; it compares with cmp.
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
command -v cmp >/dev/null || need_apt+=(diffutils)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# The web console's browser test (tests/console_browser.rs): headless Chromium
# driven by playwright-core from npm.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v npm >/dev/null || need_apt+=(npm)
# The PostgreSQL metadata engine and S3 segment backend tests (issue 20) run
# a throwaway PostgreSQL 15 and Ceph 16 cluster (testbed/).
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql)
for c in ceph-mon:ceph-mon ceph-osd:ceph-osd radosgw:radosgw radosgw-admin:radosgw ceph:ceph-common monmaptool:ceph-common; do
  command -v "${c%%:*}" >/dev/null || need_apt+=("${c#*:}")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# Debian backports, from the mirror this machine is already configured with
# (added once). QEMU 10 comes from there.
. /etc/os-release
backports="${VERSION_CODENAME}-backports"
ensure_backports() {
  grep -rqs -- "-backports" /etc/apt/sources.list /etc/apt/sources.list.d/ && return 0
  local mirror
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || { echo "no Debian mirror configured in apt sources" >&2; exit 1; }
  echo "deb $mirror $backports main" > /etc/apt/sources.list.d/strato-backports.list
}
installed_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

# qemu-system-x86 for the migration tests, which need QEMU >= 9 (mapped-ram
# for `strato vm save`): the version of qemu-utils from backports. A plain
# install would pull 7.2 and remove qemu-utils 10; seabios must come from
# backports too.
qv=$(installed_version qemu-utils)
if ! command -v qemu-system-x86_64 >/dev/null || [[ "$qv" != *bpo* ]] ||
  [ "$(installed_version qemu-system-x86)" != "$qv" ]; then
  echo "== installing qemu-system-x86 from $backports"
  export DEBIAN_FRONTEND=noninteractive
  ensure_backports
  apt-get update -qq
  if [[ "$qv" != *bpo* ]]; then
    qv=$(apt-cache madison qemu-utils | awk -v s="$backports" '$0 ~ s {print $3; exit}')
    [ -n "$qv" ] || { echo "no qemu-utils in $backports" >&2; exit 1; }
  fi
  apt-get install -y -qq --no-install-recommends -t "$backports" \
    "qemu-utils=$qv" "qemu-system-x86=$qv" "qemu-system-common=$qv" "qemu-system-data=$qv" seabios ipxe-qemu
fi

# QEMU's curl block driver (tests/overlay.rs uses a presigned URL as a backing
# file). It must be the same version as qemu-utils: with qemu-utils from
# bookworm-backports, a plain install would pull 7.2 and remove qemu-utils 10.
if ! ls /usr/lib/*/qemu/block-curl.so >/dev/null 2>&1; then
  echo "== installing qemu-block-extra (QEMU curl driver)"
  export DEBIAN_FRONTEND=noninteractive
  qv=$(installed_version qemu-utils)
  [[ "$qv" == *bpo* ]] && ensure_backports
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "qemu-block-extra${qv:+=$qv}"
fi

if [ ! -x .venv/bin/s3cmd ] || ! .venv/bin/python -c 'import boto3' 2>/dev/null; then
  echo "== creating .venv with s3cmd and boto3"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check 's3cmd==2.4.0' 'boto3>=1.36,<2'
fi
export PATH="$PWD/.venv/bin:$PATH"
# playwright-core at the version tests/console/package-lock.json pins.
if [ ! -d tests/console/node_modules ] || [ tests/console/package-lock.json -nt tests/console/node_modules ]; then
  echo "== npm ci in tests/console (playwright-core)"
  npm ci --prefix tests/console --no-audit --no-fund
  touch tests/console/node_modules
fi
export STRATO_TEST_PYTHON="$PWD/.venv/bin/python"

echo "== tools: $(qemu-img --version | head -1); $(qemu-system-x86_64 --version | head -1); $(s3cmd --version); boto3 $(python -c 'import boto3; print(boto3.__version__)')"
# Benchmarks run once each on small inputs (criterion's test mode), so they
# keep working; their harness takes no --test-threads.
cargo test --workspace --benches
# Then every test. Two test threads: the machine has two cores and several
# tests move hundreds of MiB or run child processes.
cargo test --workspace --lib --bins --tests --examples -- --test-threads=2
