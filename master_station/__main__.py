"""`python -m master_station ...`: the master station commands on their own."""

import sys

from master_station.cli import main

sys.exit(main())
