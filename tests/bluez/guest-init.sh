#!/bin/sh
# PID 1 of the BlueZ test-bed VM: mount, run /mnt/share/guest.sh from the host's 9p share, power
# off. The share's result.rc carries the scenario's exit code back to the host.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -o remount,rw /
hostname sealgw-bluez
ip link set lo up
echo "VM: init at uptime $(cut -d' ' -f1 /proc/uptime)s"
modprobe 9pnet_virtio; modprobe 9p
mkdir -p /mnt/share
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /mnt/share; then
  if [ -x /mnt/share/guest.sh ]; then /mnt/share/guest.sh; rc=$?; else echo "VM: no guest.sh"; rc=98; fi
  echo $rc > /mnt/share/result.rc
else
  echo "VM: 9p mount failed"; rc=97
fi
sync
echo "VM: done rc=$rc uptime $(cut -d' ' -f1 /proc/uptime)s"
echo o > /proc/sysrq-trigger
sleep 10
