"""Process set-up shared by the command line and the daemon: logging and runtime tuning."""
