#!/bin/sh
# strata demo: make a busybox base image offline, import it, tag it, list it, show its
# history and disk usage, save it as an OCI layout, read it back with skopeo and umoci,
# round-trip it through a docker-archive into a second store, then serve it from strata's
# embedded registry: push, pull into a third store, and read it back with skopeo; build a
# web image from a Dockerfile on that base, run it detached with a published port, read
# its page and logs, exec into it, stop it, and look at its changes.
set -eu
cd "$(dirname "$0")/.."
STRATA="$PWD/.venv/bin/strata"
DEMO="$PWD/.demo"
ROOT="$DEMO/root"
if [ -d "$ROOT" ]; then  # a previous demo's containers (and their mounts) go first
    ids=$("$STRATA" --root "$ROOT" ps -aq 2>/dev/null || true)
    [ -z "$ids" ] || "$STRATA" --root "$ROOT" rm -f $ids >/dev/null 2>&1 || true
fi
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

step "strata build -t demo/web:1 (a Dockerfile on the busybox image)"
CTX="$DEMO/web"
mkdir -p "$CTX"
echo "greetings from a strata build" > "$CTX/greeting.txt"
echo "notes.txt" > "$CTX/.dockerignore"
echo "ignored" > "$CTX/notes.txt"
cat > "$CTX/Dockerfile" <<'EOF'
FROM localhost/busybox:latest
ARG PAGE="hello from strata"
RUN mkdir -p /www && echo "$PAGE" > /www/index.html
COPY greeting.txt /www/
WORKDIR /www
EXPOSE 8080
CMD ["httpd", "-f", "-v", "-p", "8080", "-h", "/www"]
EOF
"$STRATA" build -t demo/web:1 "$CTX"

step "strata build again: every step is CACHED"
"$STRATA" build -t demo/web:1 "$CTX"
"$STRATA" history demo/web:1

step "strata run -d -p HOST:8080 demo/web:1, then curl it"
WEB_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
trap 'kill $REG_PID 2>/dev/null || true; "$STRATA" rm -f demo-web >/dev/null 2>&1 || true' EXIT
"$STRATA" run -d --name demo-web -p "127.0.0.1:$WEB_PORT:8080" demo/web:1
i=0
until curl -fsS "http://127.0.0.1:$WEB_PORT/" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 100 ] || { "$STRATA" logs demo-web >&2; exit 1; }
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$WEB_PORT/greeting.txt"
"$STRATA" ps

step "strata exec demo-web: write a file; strata logs; strata stop; strata diff"
"$STRATA" exec demo-web sh -c 'echo written at run time > /www/run.txt; ls /www; hostname'
"$STRATA" logs --tail 2 demo-web
"$STRATA" stop -t 2 demo-web
"$STRATA" diff demo-web
"$STRATA" rm demo-web

step "strata run --rm: the built image's config and files"
"$STRATA" run --rm --network none demo/web:1 sh -c 'pwd; cat greeting.txt; ls -a /www'

step "strata system fsck"
"$STRATA" system fsck
STRATA_ROOT="$DEMO/root3" "$STRATA" system fsck

printf '\n\033[1mdemo finished\033[0m\n'
