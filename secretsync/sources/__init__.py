"""Value sources: one module per backend, each with a class satisfying `resolve.Source`.

A source reads one `model.Location` per `fetch` (a Vault secret, a SOPS file of the fleet repo)
and raises only `errors.ResolveError` subclasses, whose messages name the location and never a
value. `sops.SopsSource` decrypts SOPS files with the sops binary.
"""
