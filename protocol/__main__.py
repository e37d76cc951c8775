"""``python -m protocol COMMAND ...`` is the ``lienwatch`` command."""

import sys

from protocol.cli import main

sys.exit(main())
