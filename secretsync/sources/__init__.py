"""Value sources: one module per backend, each a class satisfying `resolve.Source`.

`sops.SopsSource` decrypts SOPS files of the fleet repo with the sops binary. A source reads one
`model.Location` per `fetch` and raises only `errors.ResolveError` subclasses, whose messages
name the location and never a value.
"""
