"""``python -m postage``: the ``postage`` command line."""

from postage._cli import main

raise SystemExit(main())
