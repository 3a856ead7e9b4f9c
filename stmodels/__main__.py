"""``python -m stmodels``: the ``stmodels`` command line (see :mod:`stmodels.cli`)."""

from stmodels.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
