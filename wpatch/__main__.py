"""`python -m wpatch`: the `wpatch` command."""

from wpatch.cli import main

main()
