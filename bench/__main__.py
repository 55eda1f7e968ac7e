"""`python -m bench NAME [--json]`: run one benchmark; each prints one JSON object."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

BENCHES = {
    "authz": "bench.authz",
    "pipeline": "bench.pipeline",
    "footprint": "bench.footprint",
    "modbus": "bench.modbus",
    "seal": "bench.seal",
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("name", choices=sorted(BENCHES))
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for smoke tests")
    args = parser.parse_args()
    module = importlib.import_module(BENCHES[args.name])
    result = module.run(quick=args.quick, verbose=not args.json)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
