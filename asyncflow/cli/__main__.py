"""`python -m asyncflow.cli`."""

import sys

from asyncflow.cli import main

if __name__ == "__main__":
    sys.exit(main())
