"""`python -m secretsync` runs the command line."""

from secretsync.cli import main

main()
