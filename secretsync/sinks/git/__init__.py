"""The Git sink: rendered manifests in `<out>/<cluster>/<namespace>/<name>.yaml` (`sink`), the files
it reads back (`manifests`), its confined file work (`files`, `tree`)."""
