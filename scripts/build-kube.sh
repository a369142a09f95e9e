#!/usr/bin/env bash
# Build kube-apiserver and kube-controller-manager v1.20.2 for secretsync's tests.
#
# The binaries are built offline from Debian bookworm's `kubernetes` source package and
# cached outside the repository:
#
#     ${SECRETSYNC_CACHE:-$HOME/.cache/secretsync}/kube/v1.20.2/kube-apiserver
#     ${SECRETSYNC_CACHE:-$HOME/.cache/secretsync}/kube/v1.20.2/kube-controller-manager
#
# etcd comes from Debian's etcd-server package (/usr/bin/etcd).
#
# Idempotent: when the binaries are cached (or supplied by the user) nothing is built.
#
# Environment:
#   SECRETSYNC_CACHE                    cache root (default: $HOME/.cache/secretsync)
#   SECRETSYNC_KUBE_APISERVER           use this kube-apiserver; build nothing
#   SECRETSYNC_KUBE_CONTROLLER_MANAGER  use this kube-controller-manager
#   SECRETSYNC_ETCD                     use this etcd; etcd-server is not installed
#   SECRETSYNC_KUBE_ASSETS              folder holding kube-apiserver / etcd /
#                                       kube-controller-manager (e.g. an envtest folder,
#                                       `setup-envtest use -p path`); build nothing
#   SECRETSYNC_DEBIAN_MIRROR            Debian mirror URI (default: read from apt's sources)
#   SECRETSYNC_BUILD_JOBS               go build parallelism (default: 2)
#   SECRETSYNC_BUILD_TMP                parent folder of the temporary build tree
#                                       (default: ${TMPDIR:-/var/tmp})
#   SECRETSYNC_KEEP_BUILD=1             keep the build tree (for debugging)
#
# Binary lookup (tests/support/kubecluster.py follows the same rules), for each binary:
#   explicit variable  >  $SECRETSYNC_KUBE_ASSETS/<name>  >  cache (kube) or /usr/bin/etcd.
# When the apiserver is supplied by the user, the controller manager is never built: it is
# taken from the user's variables or is absent (clusters then run without it).
set -euo pipefail

readonly KUBE_VERSION=v1.20.2
readonly DEB_SOURCE_VERSION=1.20.5+really1.20.2-1.1+deb12u1
readonly REFLECT2_PACKAGE=golang-github-modern-go-reflect2-dev
readonly REFLECT2_VERSION=1.0.2

CACHE_ROOT=${SECRETSYNC_CACHE:-$HOME/.cache/secretsync}
KUBE_CACHE=$CACHE_ROOT/kube/$KUBE_VERSION
JOBS=${SECRETSYNC_BUILD_JOBS:-2}

T_START=$(date +%s)
log() { printf '[build-kube %4ds] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi

# --- apt packages -------------------------------------------------------------------------

APT_UPDATED=0
apt_install() {
    # Install the Debian packages given, running `apt-get update` once when needed.
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        "${SUDO[@]}" apt-get update -qq
        APT_UPDATED=1
    fi
    log "apt-get install ${missing[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- which binaries are wanted --------------------------------------------------------------

is_exe() { [[ -f $1 && -x $1 ]]; }

ASSETS=${SECRETSYNC_KUBE_ASSETS:-}
if [[ -n $ASSETS && ! -d $ASSETS ]]; then
    die "SECRETSYNC_KUBE_ASSETS=$ASSETS is not a folder"
fi

USER_APISERVER=${SECRETSYNC_KUBE_APISERVER:-}
if [[ -z $USER_APISERVER && -n $ASSETS ]]; then
    is_exe "$ASSETS/kube-apiserver" || die "no kube-apiserver in SECRETSYNC_KUBE_ASSETS=$ASSETS"
    USER_APISERVER=$ASSETS/kube-apiserver
fi

ETCD_BIN=${SECRETSYNC_ETCD:-}
if [[ -z $ETCD_BIN && -n $ASSETS ]] && is_exe "$ASSETS/etcd"; then
    ETCD_BIN=$ASSETS/etcd
fi
if [[ -n $ETCD_BIN ]]; then
    is_exe "$ETCD_BIN" || die "etcd binary $ETCD_BIN is not an executable file"
else
    apt_install etcd-server
    ETCD_BIN=/usr/bin/etcd
fi
log "etcd: $ETCD_BIN ($("$ETCD_BIN" --version 2>/dev/null | head -n1))"

if [[ -n $USER_APISERVER ]]; then
    is_exe "$USER_APISERVER" || die "kube-apiserver $USER_APISERVER is not an executable file"
    log "kube-apiserver (user supplied): $USER_APISERVER ($("$USER_APISERVER" --version))"
    CM=${SECRETSYNC_KUBE_CONTROLLER_MANAGER:-}
    if [[ -z $CM && -n $ASSETS ]] && is_exe "$ASSETS/kube-controller-manager"; then
        CM=$ASSETS/kube-controller-manager
    fi
    if [[ -n $CM ]]; then
        is_exe "$CM" || die "kube-controller-manager $CM is not an executable file"
        log "kube-controller-manager (user supplied): $CM"
    else
        log "no kube-controller-manager supplied: clusters run without one"
    fi
    log "nothing to build"
    exit 0
fi

cached_ok() {
    is_exe "$KUBE_CACHE/kube-apiserver" && is_exe "$KUBE_CACHE/kube-controller-manager" &&
        "$KUBE_CACHE/kube-apiserver" --version 2>/dev/null | grep -qx "Kubernetes $KUBE_VERSION" &&
        "$KUBE_CACHE/kube-controller-manager" --version 2>/dev/null | grep -qx "Kubernetes $KUBE_VERSION"
}

if cached_ok; then
    log "cached: $KUBE_CACHE (kube-apiserver, kube-controller-manager $KUBE_VERSION); nothing to build"
    exit 0
fi

# One build at a time per cache (several jobs may run this script at once).
mkdir -p "$KUBE_CACHE"
exec 9>"$CACHE_ROOT/kube/.build.lock"
if ! flock -n 9; then
    log "another build holds $CACHE_ROOT/kube/.build.lock; waiting"
    flock 9
fi
if cached_ok; then
    log "built meanwhile by another process: $KUBE_CACHE"
    exit 0
fi

# --- build --------------------------------------------------------------------------------

apt_install golang-go rsync jq make ca-certificates

# Debian's Go (1.19) regardless of other Go installations on PATH.
GO_ROOT_BIN=/usr/lib/go/bin
is_exe "$GO_ROOT_BIN/go" || die "Debian's Go not found at $GO_ROOT_BIN/go"
export PATH="$GO_ROOT_BIN:$PATH"
log "$(go version)"

BUILD_PARENT=${SECRETSYNC_BUILD_TMP:-${TMPDIR:-/var/tmp}}
mkdir -p "$BUILD_PARENT"
BUILD=$(mktemp -d "$BUILD_PARENT/secretsync-kube-build.XXXXXX")
cleanup() {
    local rc=$?
    if [[ ${SECRETSYNC_KEEP_BUILD:-0} == 1 ]]; then
        log "build tree kept at $BUILD"
    else
        chmod -R u+w "$BUILD" 2>/dev/null || true # Go's module cache is read-only
        rm -rf "$BUILD"
    fi
    exit "$rc"
}
trap cleanup EXIT
log "build tree: $BUILD"

# Debian mirror: read from the machine's apt sources (never a fixed host).
mirror=${SECRETSYNC_DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
    # shellcheck disable=SC2016 # $(REPO_URI) is apt's own template syntax
    mirror=$(apt-get indextargets --format '$(REPO_URI)' \
        'Release: bookworm' 'Component: main' 'Target-Of: deb' 2>/dev/null | head -n1 || true)
fi
[[ -n $mirror ]] || die "no Debian bookworm main source found in apt's sources; set SECRETSYNC_DEBIAN_MIRROR"
mirror=${mirror%/}
log "Debian mirror: $mirror"

# Private apt state: the machine's own sources, lists and caches are left alone.
APT_DIR=$BUILD/apt
mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/download"
signed_by=""
if [[ -r /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
    signed_by="[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
fi
cat >"$APT_DIR/sources.list" <<EOF
deb ${signed_by}$mirror bookworm main
deb-src ${signed_by}$mirror bookworm main
EOF
APT_OPTS=(
    -o "Dir::Etc::sourcelist=$APT_DIR/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$APT_DIR/lists"
    -o "Dir::Cache=$APT_DIR/cache"
    -o "Dir::Cache::archives=$APT_DIR/cache/archives"
    -o "Debug::NoLocking=1"
    -o "APT::Get::List-Cleanup=0"
)
if [[ $(id -u) -eq 0 ]]; then
    # The private folders are not reachable by the _apt sandbox user.
    APT_OPTS+=(-o "APT::Sandbox::User=root")
fi

t0=$(date +%s)
log "fetching source package kubernetes=$DEB_SOURCE_VERSION and $REFLECT2_PACKAGE"
apt-get "${APT_OPTS[@]}" update -qq
(
    cd "$APT_DIR/download"
    apt-get "${APT_OPTS[@]}" source --download-only -qq "kubernetes=$DEB_SOURCE_VERSION"
    apt-get "${APT_OPTS[@]}" download -qq "$REFLECT2_PACKAGE"
)
T_FETCH=$(($(date +%s) - t0))
log "fetched in ${T_FETCH}s: $(find "$APT_DIR/download" -maxdepth 1 -type f -printf '%f ')"

t0=$(date +%s)
orig=$(find "$APT_DIR/download" -maxdepth 1 -name 'kubernetes_*.orig.tar.*' | head -n1)
[[ -n $orig ]] || die "no .orig tarball among the downloaded files"
reflect2_deb=$(find "$APT_DIR/download" -maxdepth 1 -name "${REFLECT2_PACKAGE}_*.deb" | head -n1)
[[ -n $reflect2_deb ]] || die "$REFLECT2_PACKAGE .deb not downloaded"

export GOPATH=$BUILD/gopath
SRC=$GOPATH/src/k8s.io/kubernetes
mkdir -p "$SRC"
tar -xf "$orig" -C "$SRC" --strip-components=1
rm -rf "$APT_DIR"/lists "$orig"
[[ -d $SRC/vendor/github.com/modern-go/reflect2 ]] || die "unexpected source layout: no vendored reflect2"

# Debian's reflect2 1.0.2 replaces the vendored 1.0.1 (which breaks under Go >= 1.18).
dpkg-deb -x "$reflect2_deb" "$BUILD/reflect2"
reflect2_src=$BUILD/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2
[[ -f $reflect2_src/reflect2.go ]] || die "reflect2 sources not found in $reflect2_deb"
rsync -a --delete --exclude '*_test.go' --exclude 'test*/' \
    "$reflect2_src/" "$SRC/vendor/github.com/modern-go/reflect2/"
log "unpacked in $(($(date +%s) - t0))s; reflect2 replaced with $REFLECT2_VERSION ($(basename "$reflect2_deb"))"

export GOCACHE=$BUILD/gocache
export GOPROXY=off
export GOFLAGS=
export CGO_ENABLED=0
export GOTOOLCHAIN=local
export KUBE_GIT_VERSION=$KUBE_VERSION
export KUBE_GIT_TREE_STATE=clean
unset GOROOT GOBIN GO111MODULE

t0=$(date +%s)
log "make gen_openapi"
make -C "$SRC" gen_openapi >"$BUILD/gen_openapi.log" 2>&1 || {
    tail -n 40 "$BUILD/gen_openapi.log" >&2
    die "make gen_openapi failed"
}
T_GEN=$(($(date +%s) - t0))
log "gen_openapi done in ${T_GEN}s"

major=${KUBE_VERSION#v}
major=${major%%.*}
minor=${KUBE_VERSION#v*.}
minor=${minor%%.*}
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    for path in "k8s.io/kubernetes/vendor/$pkg" "$pkg"; do
        ldflags+=" -X $path.gitVersion=$KUBE_VERSION -X $path.gitMajor=$major"
        ldflags+=" -X $path.gitMinor=$minor -X $path.gitTreeState=clean"
        ldflags+=" -X $path.buildDate=$build_date"
    done
done

OUT=$BUILD/out
mkdir -p "$OUT"
T_BUILD=0
for cmd in kube-apiserver kube-controller-manager; do
    t0=$(date +%s)
    log "go build $cmd (-p $JOBS)"
    (cd "$SRC" && GO111MODULE=off go build -p "$JOBS" -trimpath -ldflags "$ldflags" \
        -o "$OUT/$cmd" "k8s.io/kubernetes/cmd/$cmd")
    version=$("$OUT/$cmd" --version)
    [[ $version == "Kubernetes $KUBE_VERSION" ]] || die "$cmd reports '$version'"
    T_BUILD=$((T_BUILD + $(date +%s) - t0))
    log "$cmd built in $(($(date +%s) - t0))s ($version, $(du -h "$OUT/$cmd" | cut -f1))"
done

for cmd in kube-apiserver kube-controller-manager; do
    install -m 0755 "$OUT/$cmd" "$KUBE_CACHE/.$cmd.tmp"
    mv -f "$KUBE_CACHE/.$cmd.tmp" "$KUBE_CACHE/$cmd"
done
cat >"$KUBE_CACHE/BUILD-INFO" <<EOF
version: $KUBE_VERSION
source: Debian kubernetes $DEB_SOURCE_VERSION (reflect2 $REFLECT2_VERSION from $(basename "$reflect2_deb"))
go: $(go version)
built: $build_date
EOF
cached_ok || die "cached binaries failed their check"

log "timing: fetch ${T_FETCH}s, gen_openapi ${T_GEN}s, go build ${T_BUILD}s, total $(($(date +%s) - T_START))s"
log "cached in $KUBE_CACHE ($(du -sh "$KUBE_CACHE" | cut -f1))"
