"""`python -m palimpsest.cli`: the `palimpsest` command."""

import sys

from palimpsest.cli import main

sys.exit(main())
