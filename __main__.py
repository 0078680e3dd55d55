"""``python -m crashsearch ...`` is the ``crashsearch`` command."""
import sys

from crashsearch.flows.cli import main

sys.exit(main())
