"""`python -m repro`: the command-line interface (see repro/cli.py)."""

import sys

from repro.cli import main

sys.exit(main())
