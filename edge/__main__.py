"""``python -m edge agent|gnss|can|replay ...`` (the edge's ``lienwatch`` subcommands)."""

import sys

from edge.cli import main

sys.exit(main())
