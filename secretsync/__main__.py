"""`python -m secretsync` runs the command line."""

from secretsync import cli

cli.main()
