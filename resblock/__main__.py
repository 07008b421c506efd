"""``python -m resblock`` is the ``resblock`` command."""

from resblock.cli import main

main()
