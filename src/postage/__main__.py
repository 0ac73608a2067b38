"""``python -m postage``: the ``postage`` command line."""

from postage._tooling.cli import main

raise SystemExit(main())
