"""``python -m atzoo`` runs the CLI."""

from atzoo.cli import main

main()
