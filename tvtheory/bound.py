"""``python -m tvtheory.bound``: the theorem checks' command line (:mod:`tvtheory.cli`) under the name users script
against. The mathematics of the bounds is in :mod:`tvtheory.bounds`.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
