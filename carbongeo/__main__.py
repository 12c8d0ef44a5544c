"""``python -m carbongeo``: the command line (also what ``torchrun -m carbongeo`` runs)."""

from carbongeo.cli.app import main

main()
