"""Self-measurement: `sealgw probe NAME` times this box's own components (docs/probe.md).

Each probe builds the real component (the buffer, the uplink, the policy, the lock service,
the Modbus read planner) on this machine, runs it against synthetic work or a device the
caller names, and returns one JSON object of figures. A field engineer runs them on a Pi to
measure that box; the bench (`python -m bench NAME`) runs them as subprocesses and adds its
side-by-side baselines, so the bench itself needs nothing of the gateway but its protocol.
Probes never touch a gateway's state: they work in a scratch directory of their own.
"""
