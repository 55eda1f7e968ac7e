#!/bin/bash
# Build (or reuse) the BlueZ test-bed VM image: Debian bookworm, kernel 6.1 with hci_vhci, dbus,
# bluez, mosquitto, socat, python3.11, and the gateway's runtime dependencies as wheels.
#
#   tests/bluez/build-image.sh OUT_DIR "pkg==ver pkg==ver ..."
#
# OUT_DIR receives vmlinuz, initrd.img and root.img. The caller (tests/bluez/harness.py) keys
# OUT_DIR on a hash of this script, guest-init.sh and the package list, so an image is built once
# per set of inputs and reused after. The project itself is not in the image: each run mounts a
# freshly built copy through 9p, so code changes never need a rebuild.
# Needs root (debootstrap, chroot), Debian's archive and PyPI, ~1 GB disk, ~100 s on 2 cores.
set -euo pipefail
OUT=$1; PKGS=$2
HERE=$(cd "$(dirname "$0")" && pwd)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "$OUT.build.XXXXXX"); R=$WORK/rootfs
cleanup() { umount "$R/proc" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
t0=$(date +%s)
step() { echo "BUILD[$(( $(date +%s) - t0 ))s]: $*"; }

step "host tools"
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
  timeout 300 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null
fi

step "wheels for the guest's python3.11: $PKGS"
PLATFORMS=(--platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux1_x86_64
  --platform linux_x86_64)
# shellcheck disable=SC2086
timeout 300 python3 -m pip download -q -d "$WORK/wheels" --only-binary=:all: --python-version 3.11 \
  --implementation cp "${PLATFORMS[@]}" $PKGS 2>&1 | grep -v "^WARNING: Location" || true

step "debootstrap"
timeout 900 debootstrap --variant=minbase \
  --include=dbus,bluez,python3,kmod,procps,mosquitto,socat,coreutils,iproute2 \
  bookworm "$R" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; exit 1; }

step "kernel and initramfs (virtio_blk, ext4, 9p)"
mkdir -p "$R/etc/dpkg/dpkg.cfg.d" "$R/etc/initramfs-tools/conf.d"
printf 'path-exclude /usr/share/%s/*\n' doc man info locale > "$R/etc/dpkg/dpkg.cfg.d/01-nodoc"
echo 'MODULES=list' > "$R/etc/initramfs-tools/conf.d/modules-list"
echo 'COMPRESS=zstd' > "$R/etc/initramfs-tools/conf.d/compress"
printf '%s\n' virtio_pci virtio_blk ext4 9p 9pnet_virtio > "$R/etc/initramfs-tools/modules"
mount -t proc proc "$R/proc"
timeout 600 chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  --no-install-recommends linux-image-amd64 initramfs-tools zstd > "$WORK/kernel.log" 2>&1 \
  || { tail -20 "$WORK/kernel.log"; exit 1; }
umount "$R/proc"

step "python packages into the guest"
# shellcheck disable=SC2086
timeout 300 python3 -m pip install -q --no-index --find-links "$WORK/wheels" --no-compile \
  --only-binary=:all: --python-version 3.11 --implementation cp "${PLATFORMS[@]}" \
  --target "$R/usr/local/lib/python3.11/dist-packages" $PKGS 2>&1 | grep -v "^WARNING" || true
chroot "$R" python3 -m compileall -q -j 2 /usr/local/lib/python3.11/dist-packages >/dev/null || true
chroot "$R" python3 -c 'import bleak, bumble.controller, dbus_fast, paho.mqtt, cryptography'

step "trim, configure"
K=$(ls "$R/usr/lib/modules"); M=$R/usr/lib/modules/$K/kernel
for p in sound drivers/gpu drivers/net/wireless drivers/net/ethernet drivers/media \
         drivers/infiniband drivers/staging drivers/iio drivers/scsi drivers/usb drivers/hwmon \
         drivers/isdn drivers/mtd drivers/input drivers/hid drivers/md drivers/platform \
         drivers/net/can drivers/ata drivers/mmc drivers/nfc net/mac80211 net/wireless fs/ocfs2 \
         fs/xfs fs/btrfs fs/nfs fs/ceph fs/smb fs/f2fs fs/gfs2; do
  rm -rf "${M:?}/$p"; done
chroot "$R" depmod "$K"
chroot "$R" modprobe -S "$K" -D hci_vhci >/dev/null
rm -rf "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/*
chroot "$R" dbus-uuidgen --ensure=/etc/machine-id
echo sealgw-bluez > "$R/etc/hostname"
install -m 0755 "$HERE/guest-init.sh" "$R/sbin/sealgw-init"

step "disk image"
cp "$R"/boot/vmlinuz-* "$WORK/vmlinuz"; cp "$R"/boot/initrd.img-* "$WORK/initrd.img"
truncate -s 1G "$WORK/root.img"
mkfs.ext4 -q -F -L sealgwroot -d "$R" "$WORK/root.img"
mv "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/root.img" "$OUT/"
step "done: $(du -sh "$OUT/root.img" | cut -f1) allocated"
