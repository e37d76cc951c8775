"""``python -m collector ...``: the same commands as ``lienwatch collector ...``."""

import sys

from collector.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
