"""The reconcile cycle shared by the command line and the daemon."""
