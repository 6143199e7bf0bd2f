"""``python -m peftbench`` is the ``peftbench`` command."""

from peftbench.cli import console_main

if __name__ == "__main__":
    console_main()
