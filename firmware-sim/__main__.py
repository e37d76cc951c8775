"""``python -m firmware_sim run|load|list|show ...`` (same as ``lienwatch sim``)."""

import sys

from ._cli import main

sys.exit(main(sys.argv[1:]))
