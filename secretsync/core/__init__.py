"""The pure kernel: the domain model, secret values, errors, selectors and templates. No I/O."""
