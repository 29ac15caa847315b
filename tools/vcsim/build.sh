#!/bin/sh
# Build the vcsim binary from Debian's govmomi (golang-github-vmware-govmomi-dev) into
# .cache/vcsim/ (or $VCSIM_CACHE). Idempotent: a build whose inputs are unchanged returns at once.
#
# Why an overlay GOPATH: govmomi 0.24.2's PropertyCollector.Fetch indexes an empty MissingSet when
# a property is unset (vm.snapshot with no snapshots) and the server drops the connection; pyVmomi 8+
# reads properties through Fetch. We copy simulator/ into an overlay, patch it (fetch-fix.py), and
# symlink the rest of govmomi beside it, so the system package stays untouched.
#
# Prints the binary's path on the last line of stdout.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${VCSIM_CACHE:-$repo/.cache/vcsim}
gocode=/usr/share/gocode
govmomi=$gocode/src/github.com/vmware/govmomi
bin=$cache/vcsim

if [ ! -d "$govmomi/simulator" ] || ! command -v go >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing golang-go golang-github-vmware-govmomi-dev" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go golang-github-vmware-govmomi-dev >&2 || {
            apt-get update -q >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go golang-github-vmware-govmomi-dev >&2
        }
    else
        echo "vcsim build needs: apt-get install golang-go golang-github-vmware-govmomi-dev" >&2
        exit 1
    fi
fi

# The stamp covers everything the binary depends on: our sources, the govmomi and Go versions.
stamp=$(cat "$here/main.go" "$here/fetch-fix.py" "$here/build.sh" \
        /var/lib/dpkg/info/golang-github-vmware-govmomi-dev.md5sums 2>/dev/null | md5sum | cut -d' ' -f1)
stamp="$stamp $(go version)"
if [ -x "$bin" ] && [ -f "$cache/stamp" ] && [ "$(cat "$cache/stamp")" = "$stamp" ]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache"
overlay=$cache/gopath
rm -rf "$overlay"
dst=$overlay/src/github.com/vmware/govmomi
mkdir -p "$dst"
for entry in "$govmomi"/*; do
    name=$(basename "$entry")
    [ "$name" = simulator ] && continue
    ln -s "$entry" "$dst/$name"
done
cp -r "$govmomi/simulator" "$dst/simulator"
python3 "$here/fetch-fix.py" "$dst/simulator/property_collector.go"

mkdir -p "$overlay/src/pacsinfra-vcsim"
cp "$here/main.go" "$overlay/src/pacsinfra-vcsim/main.go"
(
    cd "$overlay/src/pacsinfra-vcsim"
    GOPATH="$overlay:$gocode" GO111MODULE=off GOFLAGS= GOCACHE="$cache/gocache" \
        go build -o "$bin.tmp" .
)
mv "$bin.tmp" "$bin"
echo "$stamp" > "$cache/stamp"
echo "$bin"
