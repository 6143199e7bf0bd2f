"""``python -m peftbench`` is the ``peftbench`` command."""

import sys

from peftbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
