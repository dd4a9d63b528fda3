"""`python -m asyncd`: the same entry point as the `asyncd` console script.

Runs in: main process.
"""
import sys

from asyncd.cli import main

if __name__ == "__main__":
    sys.exit(main())
