"""The fleet repo → the model. The only package that parses fleet YAML.

It reads `secretsync.yaml` (kind Fleet), then every YAML file under the clusters and secrets
folders (kinds Cluster and FleetSecret, several documents per file). Every problem becomes a
`ConfigError` naming the repo-relative file, the 1-based line of the offending key and the
field; all problems of one load are reported together and nothing is returned.

Only files inside the repo are read as fleet content: a symlink or `..` that leaves it is
refused, files are capped in size, and YAML alias expansion is capped in nodes.

One module per job: `files` (reading files safely), `yamlmarks` (YAML with line numbers and
the field reader), `schema` (names, headers, selectors, machine paths), `fleet`, `sources`,
`cluster`, `secret` (one per kind or section) and `repo` (the whole repo).
"""

from secretsync.fleet.load.files import FLEET_FILE, MAX_FILE_BYTES, MAX_FILES, read_fleet_file
from secretsync.fleet.load.repo import load_fleet, load_fleet_settings
from secretsync.fleet.load.schema import is_dns_label, is_dns_subdomain, secret_key_problem
from secretsync.fleet.load.yamlmarks import MAX_NODES

__all__ = [
    "FLEET_FILE",
    "MAX_FILES",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "is_dns_label",
    "is_dns_subdomain",
    "load_fleet",
    "load_fleet_settings",
    "read_fleet_file",
    "secret_key_problem",
]
