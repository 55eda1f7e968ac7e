"""`python -m bench NAME [--json]`: run one benchmark; each prints one JSON object.

Run it from the checkout (bench is not installed). SIGTERM, SIGHUP and SIGINT end a bench
through its cleanup, so no broker, gateway or simulator it started is left running
(firmware_sim/children.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from firmware_sim.children import exit_on_signals

BENCHES = {
    "authz": "bench.authz",
    "commands": "bench.commands",
    "faults": "bench.faults",
    "pipeline": "bench.pipeline",
    "footprint": "bench.footprint",
    "master": "bench.master",
    "modbus": "bench.modbus",
    "seal": "bench.seal",
    "uplink": "bench.uplink",
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("name", choices=sorted(BENCHES))
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for smoke tests")
    args = parser.parse_args()
    exit_on_signals()
    module = importlib.import_module(BENCHES[args.name])
    result = module.run(quick=args.quick, verbose=not args.json)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
