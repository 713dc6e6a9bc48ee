"""``python -m tvtheory.bound``: the theorem checks' command line (:mod:`tvtheory.cli`) under the name users script
against. The mathematics of the bounds is in :mod:`tvtheory.bounds`.
"""

from .cli import main
from .io import exit_process

if __name__ == "__main__":
    exit_process(main())
