"""`python -m gateway` is `sealgw`."""

import sys

from gateway.cli import main

sys.exit(main())
