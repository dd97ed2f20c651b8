#!/bin/sh
# strata demo: make a busybox base image offline, import it, tag it, list it, show its
# history and disk usage, save it as an OCI layout, read it back with skopeo and umoci,
# round-trip it through a docker-archive into a second store, then serve it from strata's
# embedded registry: push, pull into a third store, and read it back with skopeo.
set -eu
cd "$(dirname "$0")/.."
STRATA="$PWD/.venv/bin/strata"
DEMO="$PWD/.demo"
ROOT="$DEMO/root"
rm -rf "$DEMO"
mkdir -p "$DEMO"
export STRATA_ROOT="$ROOT"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "making a busybox rootfs from the host's static /bin/busybox"
RF="$DEMO/rootfs"
mkdir -p "$RF/bin" "$RF/etc" "$RF/tmp" "$RF/root" "$RF/proc" "$RF/sys" "$RF/dev" "$RF/home"
cp /bin/busybox "$RF/bin/busybox"
for applet in $("$RF/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$RF/bin/$applet"
done
chmod 1777 "$RF/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' > "$RF/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$RF/etc/group"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$RF" -cf "$DEMO/busybox.tar" .
echo "rootfs: $(find "$RF" | wc -l) entries, $(du -sh "$DEMO/busybox.tar" | cut -f1) tar"

step "strata import busybox.tar localhost/busybox:latest"
"$STRATA" import --change 'CMD ["sh"]' -m "busybox from the host" "$DEMO/busybox.tar" localhost/busybox:latest

step "strata tag localhost/busybox:latest demo/busybox:1.0"
"$STRATA" tag localhost/busybox:latest demo/busybox:1.0

step "strata images"
"$STRATA" images

step "strata history localhost/busybox"
"$STRATA" history localhost/busybox

step "strata system df -v"
"$STRATA" system df -v

step "strata save --format oci -o .demo/layout localhost/busybox"
"$STRATA" save --format oci -o "$DEMO/layout" localhost/busybox
ls "$DEMO/layout" "$DEMO/layout/blobs/sha256"

step "skopeo inspect oci:.demo/layout:latest"
skopeo inspect "oci:$DEMO/layout:latest" | head -20

step "skopeo copy into a second layout, umoci unpack, compare with strata unpack"
skopeo copy -q "oci:$DEMO/layout:latest" "oci:$DEMO/copy:latest"
umoci unpack --image "$DEMO/copy:latest" "$DEMO/umoci" >/dev/null
"$STRATA" unpack localhost/busybox "$DEMO/unpacked"
if diff -r --no-dereference "$DEMO/umoci/rootfs" "$DEMO/unpacked" >/dev/null; then
    echo "umoci's rootfs and strata's unpack are identical"
else
    echo "umoci's rootfs and strata's unpack DIFFER" >&2
    exit 1
fi

step "strata save (docker-archive) | strata load into a second store"
"$STRATA" save -o "$DEMO/busybox-docker.tar" demo/busybox:1.0
STRATA_ROOT="$DEMO/root2" "$STRATA" load -i "$DEMO/busybox-docker.tar"
STRATA_ROOT="$DEMO/root2" "$STRATA" images

step "strata registry serve (the embedded registry, filesystem storage under .demo/registry)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REG="127.0.0.1:$PORT"
"$STRATA" registry serve --listen "$REG" --root "$DEMO/registry" --access-log "$DEMO/registry-access.log" \
    2>"$DEMO/registry.log" &
REG_PID=$!
trap 'kill $REG_PID 2>/dev/null || true' EXIT
i=0
until curl -fsS "http://$REG/v2/" >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 100 ] || { cat "$DEMO/registry.log" >&2; exit 1; }
    sleep 0.1
done
echo "listening on $REG"

step "strata push $REG/demo/busybox:1.0"
"$STRATA" tag demo/busybox:1.0 "$REG/demo/busybox:1.0"
"$STRATA" push "$REG/demo/busybox:1.0"

step "strata push again: nothing is sent twice"
"$STRATA" push "$REG/demo/busybox:1.0"

step "skopeo inspect docker://$REG/demo/busybox:1.0"
skopeo inspect --tls-verify=false "docker://$REG/demo/busybox:1.0" | head -12

step "strata pull $REG/demo/busybox:1.0 into a third store, and unpack it"
STRATA_ROOT="$DEMO/root3" "$STRATA" pull "$REG/demo/busybox:1.0"
STRATA_ROOT="$DEMO/root3" "$STRATA" unpack "$REG/demo/busybox:1.0" "$DEMO/pulled"
if diff -r --no-dereference "$DEMO/umoci/rootfs" "$DEMO/pulled" >/dev/null; then
    echo "the pulled image unpacks to umoci's rootfs"
else
    echo "the pulled image's rootfs DIFFERS from umoci's" >&2
    exit 1
fi

step "strata system fsck"
"$STRATA" system fsck
STRATA_ROOT="$DEMO/root3" "$STRATA" system fsck

printf '\n\033[1mdemo finished\033[0m\n'
