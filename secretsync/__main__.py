"""`python -m secretsync` runs the command line."""

from secretsync.cli.main import main

main()
