#!/bin/sh
# Runs inside the BlueZ test-bed VM as root (from /sbin/sealgw-init); its output is the serial
# console. Starts D-Bus, bluetoothd and btmon, then the scenario named in /mnt/share/scenario:
# `locks` (guest_scenarios.py and every scenario module beside it: the gateway daemon on
# bluez:hci0 against the simulator's locks, see guest_bed.py), or `demo` (`sealgw demo --radio
# vhci`, by hand: slow under emulation). Logs go to the share, so the host can print them when
# something fails, even after a hung guest was killed.
up() { cut -d' ' -f1 /proc/uptime; }
log() { echo "GUEST[$(up)s]: $*"; }
SHARE=/mnt/share
export PYTHONPATH=$SHARE/site PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/root
cd /tmp
log "start"
modprobe hci_vhci || { log "modprobe hci_vhci failed"; exit 10; }
mkdir -p /run/dbus
dbus-daemon --system --fork --nopidfile || exit 11
# Stock flags, as a Pi runs it. A scenario may restart it (guest_bed.Bed.restart_bluetoothd).
/usr/libexec/bluetooth/bluetoothd -n > $SHARE/bluetoothd.log 2>&1 &
# Every HCI packet, undecoded, on the guest's tmpfs (each write to the 9p share costs a trip
# through QEMU); copied to the share at the end, decoded there when something failed, and read
# by the host for ATT round trips and LE link counts (tests/bluez/trace.py).
TRACE=/tmp/hci.btsnoop
btmon -w $TRACE > /dev/null 2>&1 &
log "bluetoothd and btmon started"
SCENARIO=$(cat $SHARE/scenario 2>/dev/null || echo locks)
DURATION=$(cat $SHARE/duration 2>/dev/null || echo 60)
PATIENCE=$(cat $SHARE/patience 2>/dev/null || echo 3)
# A handheld session over BLE (guest_handheld.py): its own sim and gateway after the locks'.
handheld() {
  log "handheld over BLE (guest_handheld.py)"
  PATIENCE=$PATIENCE timeout 420 python3 $SHARE/guest_handheld.py $SHARE/summary.json /tmp/hh \
    $SHARE/work /tmp/hci.btsnoop >> $SHARE/handheld.log 2>&1
}
rc=0
case $SCENARIO in
  locks)
    log "lock scenarios (guest_scenarios.py), patience $PATIENCE"
    # State on the guest's tmpfs (SQLite cannot lock on 9p); logs in the share.
    PATIENCE=$PATIENCE timeout 720 python3 $SHARE/guest_scenarios.py $SHARE/summary.json \
      /tmp/work $SHARE/work > $SHARE/scenarios.log 2>&1
    rc=$?
    handheld || rc=1
    ;;
  handheld)
    handheld; rc=$?
    ;;
  demo)
    log "sealgw demo --radio vhci --duration $DURATION --patience $PATIENCE"
    timeout 1200 python3 -m gateway demo --radio vhci --json --duration "$DURATION" \
      --patience "$PATIENCE" --work-dir /tmp/demo > $SHARE/summary.json 2> /tmp/demo.log
    rc=$?
    for f in /tmp/demo/*.log; do [ -f "$f" ] && cp "$f" "$SHARE/demo-$(basename "$f")"; done
    cp /tmp/demo.log $SHARE/ 2>/dev/null
    ;;
  *)
    log "unknown scenario $SCENARIO"; rc=99 ;;
esac
log "scenario rc=$rc"
for pid in $(pidof bluetoothd btmon); do kill "$pid"; done
sleep 0.5
cp $TRACE $SHARE/hci.btsnoop
if [ "$rc" != 0 ]; then
  btmon -r $TRACE > $SHARE/btmon.log 2>&1
  log "btmon.log decoded (btmon exit $?)"
fi
exit $rc
