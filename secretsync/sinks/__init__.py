"""Sinks: where delivered objects go (`git` folder tree, `kube` API)."""
