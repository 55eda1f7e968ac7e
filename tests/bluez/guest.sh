#!/bin/sh
# Runs inside the BlueZ test-bed VM as root (from /sbin/sealgw-init); its output is the serial
# console. Starts D-Bus, bluetoothd and btmon, then the scenario named in /mnt/share/scenario:
# `locks` (guest_scenarios.py: `sealgw sim --radio vhci` puts the simulator's locks on a bumble
# LocalLink whose gateway-side controller is /dev/vhci, and `sealgw run` drives hci0 through
# bleak's BlueZ backend), or `demo` (`sealgw demo --radio vhci`, slow under emulation). Logs
# are copied back to the share for the host to print when something fails.
up() { cut -d' ' -f1 /proc/uptime; }
log() { echo "GUEST[$(up)s]: $*"; }
SHARE=/mnt/share
export PYTHONPATH=$SHARE/site PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/root
cd /tmp
log "start"
modprobe hci_vhci || { log "modprobe hci_vhci failed"; exit 10; }
mkdir -p /run/dbus
dbus-daemon --system --fork --nopidfile || exit 11
# -E: experimental interfaces off is the Pi default; keep the stock daemon as a Pi runs it.
/usr/libexec/bluetooth/bluetoothd -n > $SHARE/bluetoothd.log 2>&1 &
BTD=$!
stdbuf -oL btmon -T > $SHARE/btmon.log 2>&1 &
BTMON=$!
log "bluetoothd pid $BTD, btmon pid $BTMON"
SCENARIO=$(cat $SHARE/scenario 2>/dev/null || echo locks)
DURATION=$(cat $SHARE/duration 2>/dev/null || echo 60)
PATIENCE=$(cat $SHARE/patience 2>/dev/null || echo 3)
# A handheld session over BLE (guest_handheld.py): its own sim and gateway after the locks'.
handheld() {
  log "handheld over BLE (guest_handheld.py)"
  PATIENCE=$PATIENCE timeout 420 python3 $SHARE/guest_handheld.py $SHARE/summary.json /tmp/hh \
    $SHARE/work $SHARE/btmon.log >> $SHARE/handheld.log 2>&1
}
rc=0
case $SCENARIO in
  locks)
    log "lock scenarios (guest_scenarios.py), patience $PATIENCE"
    # State on the guest's tmpfs (SQLite cannot lock on 9p); logs in the share, so they survive
    # a hung guest.
    PATIENCE=$PATIENCE timeout 780 python3 $SHARE/guest_scenarios.py $SHARE/summary.json /tmp/work \
      $SHARE/work \
      > $SHARE/scenarios.log 2>&1
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
    ;;
  *)
    log "unknown scenario $SCENARIO"; rc=99 ;;
esac
log "scenario rc=$rc"
kill $BTD $BTMON 2>/dev/null; sleep 0.5
cp /tmp/demo.log $SHARE/ 2>/dev/null
exit $rc
