"""``python -m firmware_sim run|record|load|list|show ...`` (same as ``lienwatch sim``)."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
