#!/usr/bin/env bash
# A real Kubernetes control plane for the tests, without containers or nodes: etcd (Debian's etcd-server),
# kube-apiserver and kube-controller-manager built from Debian's `kubernetes` source package (1.20.2; Debian
# ships no server binaries and installing its kubernetes-client would conflict with the machine's kubectl).
# The build (about 7 min cold on 2 cores, 16 s with the warm Go cache) goes to a cache outside the
# repository, so `uv sync` or a fresh checkout never throws it away.
# The tree's vendored github.com/modern-go/reflect2 v1.0.1 breaks under Go >= 1.18 (modern-go/reflect2#26:
# the apiserver dies with SIGSEGV decoding the first custom object), so the build replaces it with v1.0.2 from
# Debian's golang-github-modern-go-reflect2-dev. $K8S/build.stamp names what the binaries were built from:
# `build` is a no-op only when it matches BUILD_ID, so a cache built before a change here is rebuilt.
#
#   scripts/k8s.sh build       install etcd-server + golang-go (as root, when missing), fetch the source and
#                              reflect2 v1.0.2, build $AWO_CACHE_DIR/k8s/bin/{kube-apiserver,kube-controller-manager}
#   scripts/k8s.sh check       exit 0 when etcd and both binaries are there (prints what is missing otherwise)
#   scripts/k8s.sh start DIR   start etcd + kube-apiserver + kube-controller-manager on free 127.0.0.1 ports,
#                              state and logs in DIR; prints DIR/kubeconfig once /readyz answers
#                              (with AWO_K8S_OWNER_PID=PID, also once that process exits)
#   scripts/k8s.sh stop DIR    stop what `start DIR` started
set -euo pipefail

CACHE_DIR="${AWO_CACHE_DIR:-$HOME/.cache/awo}"
K8S="$CACHE_DIR/k8s"
BIN="$K8S/bin"
SRC_PACKAGE=kubernetes
SUITE="${AWO_K8S_SUITE:-bookworm}"
MIRROR="${AWO_K8S_MIRROR:-http://deb.debian.org/debian}"
GOPATH_DIR="$K8S/gopath"
KPATH="$GOPATH_DIR/src/k8s.io/kubernetes"
ETCD="${AWO_K8S_ETCD:-$(command -v etcd || echo /usr/bin/etcd)}"
READY_TIMEOUT_S="${AWO_K8S_READY_TIMEOUT_S:-90}"
REFLECT2_PACKAGE=golang-github-modern-go-reflect2-dev
REFLECT2_MIN=1.0.2
# What the binaries in $BIN are built from; change it whenever the build changes, so caches get rebuilt.
BUILD_ID="kubernetes 1.20.2 (Debian source), reflect2 >= v$REFLECT2_MIN (Debian $REFLECT2_PACKAGE)"
STAMP="$K8S/build.stamp"

log() { echo "k8s.sh: $*" >&2; }
say() { echo "k8s.sh: $*"; }
elapsed() { echo "$((SECONDS - $1)) s"; }

install_packages() {
  local missing=()
  [ -x "$ETCD" ] || missing+=(etcd-server)
  command -v go >/dev/null 2>&1 || missing+=(golang-go)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v dpkg-source >/dev/null 2>&1 || missing+=(dpkg-dev)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    log "missing: ${missing[*]}; install them as root (apt-get install -y --no-install-recommends ${missing[*]})"
    exit 1
  fi
  local t=$SECONDS
  say "installing ${missing[*]} ..."
  # Never kubernetes-client: it conflicts with the kubectl already on the machine.
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
  ETCD="$(command -v etcd)"
  say "packages installed ($(elapsed $t))"
}

# Debian's packages, fetched through a private deb + deb-src list: the system's apt configuration, lists and
# caches are left as they are. Sets APT_OPTS; updates the private lists when they lack the binary index (a
# cache from before reflect2 was fetched has only Sources).
APT_OPTS=()
private_apt() {
  local apt="$K8S/apt" keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
  printf 'deb [signed-by=%s] %s %s main\ndeb-src [signed-by=%s] %s %s main\n' \
    "$keyring" "$MIRROR" "$SUITE" "$keyring" "$MIRROR" "$SUITE" >"$apt/sources.list"
  APT_OPTS=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root)
  if ! compgen -G "$apt/lists/*_Packages*" >/dev/null || ! compgen -G "$apt/lists/*_Sources*" >/dev/null; then
    apt-get "${APT_OPTS[@]}" update -qq
  fi
}

fetch_source() {
  local dl="$K8S/download"
  if compgen -G "$dl/${SRC_PACKAGE}_*.dsc" >/dev/null; then return 0; fi
  local t=$SECONDS
  mkdir -p "$dl"
  say "fetching the $SRC_PACKAGE source package ($SUITE) ..."
  private_apt
  (cd "$dl" && apt-get "${APT_OPTS[@]}" source --download-only "$SRC_PACKAGE" >/dev/null)
  say "source downloaded ($(elapsed $t))"
}

# reflect2 >= v1.0.2 (Go >= 1.18 support), unpacked from Debian's binary package into $K8S/reflect2; sets
# REFLECT2_DIR (its Go files) and REFLECT2_VERSION (the upstream version, v1.0.2).
REFLECT2_DIR= REFLECT2_VERSION=
fetch_reflect2() {
  local dl="$K8S/download" deb out="$K8S/reflect2" version
  deb="$(compgen -G "$dl/${REFLECT2_PACKAGE}_*.deb" | head -n1 || true)"
  if [ -z "$deb" ]; then
    local t=$SECONDS
    mkdir -p "$dl"
    say "fetching $REFLECT2_PACKAGE ($SUITE) ..."
    private_apt
    (cd "$dl" && apt-get "${APT_OPTS[@]}" download "$REFLECT2_PACKAGE" >/dev/null)
    deb="$(compgen -G "$dl/${REFLECT2_PACKAGE}_*.deb" | head -n1)"
    say "$(basename "$deb") downloaded ($(elapsed $t))"
  fi
  version="$(dpkg-deb -f "$deb" Version)"
  if ! dpkg --compare-versions "$version" ge "$REFLECT2_MIN"; then
    log "$deb is reflect2 $version; v$REFLECT2_MIN or later is needed (AWO_K8S_SUITE=bookworm or newer)"
    exit 1
  fi
  rm -rf "$out"; mkdir -p "$out"
  dpkg-deb -x "$deb" "$out"
  REFLECT2_DIR="$out/usr/share/gocode/src/github.com/modern-go/reflect2"
  REFLECT2_VERSION="v${version%%-*}"
}

# Replace the tree's vendored reflect2 with the package's Go files (GOPATH mode reads vendor/ only, not
# modules.txt or go.mod). vendor/modules.txt is updated by record_build, once binaries built from it exist.
vendor_reflect2() {
  local from="$REFLECT2_DIR" to="$KPATH/vendor/github.com/modern-go/reflect2"
  [ -f "$from/reflect2.go" ] || { log "no reflect2.go in $from"; exit 1; }
  rm -rf "$to"; mkdir -p "$to"
  cp "$from"/*.go "$from"/*.s "$to"/
}

# After both binaries are built: vendor/modules.txt names the reflect2 version they contain
# (tests/k8s_cluster.py's custom_resource_defect() reads it to skip custom-object tests on a cache still
# holding v1.0.1 binaries), and the stamp makes later builds no-ops.
record_build() {
  sed -i -E "s,(github\.com/modern-go/reflect2) v[0-9][^ ]*,\1 $REFLECT2_VERSION,g" "$KPATH/vendor/modules.txt"
  echo "$BUILD_ID" >"$STAMP.tmp" && mv -f "$STAMP.tmp" "$STAMP"
}

unpack_source() {
  local dl="$K8S/download" dsc tree
  dsc="$(compgen -G "$dl/${SRC_PACKAGE}_*.dsc" | head -n1)"
  tree="$K8S/src/$(basename "$dsc" .dsc)"
  if [ ! -f "$tree/cmd/kube-apiserver/apiserver.go" ]; then
    local t=$SECONDS
    rm -rf "$tree"; mkdir -p "$K8S/src"
    dpkg-source --no-check -x "$dsc" "$tree" >/dev/null
    say "source unpacked in $tree ($(elapsed $t))"
  fi
  mkdir -p "$(dirname "$KPATH")"
  ln -sfn "$tree" "$KPATH"
}

go_env() {
  export GOPATH="$GOPATH_DIR" GO111MODULE=off CGO_ENABLED=0 GOFLAGS= GOCACHE="$K8S/gocache"
  export GOMAXPROCS="${GOMAXPROCS:-$(nproc)}"
}

# The OpenAPI definitions are generated code that is not in the tarball.
generate_openapi() {
  local out="$KPATH/pkg/generated/openapi/zz_generated.openapi.go"
  [ -s "$out" ] && return 0
  local t=$SECONDS dirs
  cd "$KPATH"
  go build -o "$K8S/openapi-gen" k8s.io/kubernetes/vendor/k8s.io/kube-openapi/cmd/openapi-gen
  # Package paths as the generated code must import them: vendored packages without the vendor/ prefix.
  dirs="$(find -L pkg vendor/k8s.io cmd plugin -name '*.go' -print0 \
    | xargs -0 grep -l --color=never '+k8s:openapi-gen=' \
    | xargs -n1 dirname | sort -u \
    | sed -e 's,^vendor/,,' -e '/^k8s\.io\//!s,^,k8s.io/kubernetes/,' | paste -sd, -)"
  "$K8S/openapi-gen" --input-dirs "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
    -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt --report-filename "$K8S/openapi-violations.txt"
  [ -s "$out" ] || { log "openapi-gen wrote no $out"; exit 1; }
  say "OpenAPI definitions generated ($(elapsed $t))"
}

build_binary() {
  local name="$1" t=$SECONDS
  cd "$KPATH"
  go build -ldflags '-s -w' -o "$BIN/$name.tmp" "k8s.io/kubernetes/cmd/$name"
  mv -f "$BIN/$name.tmp" "$BIN/$name"
  say "$name built ($(elapsed $t))"
}

build() {
  local t=$SECONDS
  install_packages
  if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && [ -z "${AWO_K8S_REBUILD:-}" ]; then
    if [ "$(cat "$STAMP" 2>/dev/null)" = "$BUILD_ID" ]; then
      say "already built: $BIN ($(elapsed $t)); AWO_K8S_REBUILD=1 to build again"
      return 0
    fi
    say "$BIN predates this build ($BUILD_ID): building again"
  fi
  mkdir -p "$BIN"
  fetch_source
  unpack_source
  fetch_reflect2
  vendor_reflect2
  go_env
  generate_openapi
  build_binary kube-apiserver
  build_binary kube-controller-manager
  record_build
  say "ready in $BIN ($(elapsed $t)): $(ls "$BIN" | paste -sd" " -)"
}

check() {
  local ok=0
  [ -x "$ETCD" ] || { echo "no etcd (apt-get install etcd-server)" >&2; ok=1; }
  for b in kube-apiserver kube-controller-manager; do
    [ -x "$BIN/$b" ] || { echo "no $BIN/$b" >&2; ok=1; }
  done
  command -v openssl >/dev/null 2>&1 || { echo "no openssl" >&2; ok=1; }
  return $ok
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Runs "$@" in the background with its output in DIR/NAME.log and its pid in DIR/NAME.pid.
spawn() {
  local dir="$1" name="$2"; shift 2
  setsid "$@" >"$dir/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
}

wait_for() {
  local what="$1" dir="$2" name="$3"; shift 3
  local deadline=$((SECONDS + READY_TIMEOUT_S))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      log "$what did not come up; the end of $dir/$name.log:"
      tail -n 30 "$dir/$name.log" >&2
      stop "$dir"
      exit 1
    fi
    sleep 0.2
  done
}

start() {
  local dir="${1:?usage: scripts/k8s.sh start DIR}" t=$SECONDS
  check || { echo "run: scripts/k8s.sh build" >&2; exit 1; }
  mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
  local eport epeer aport token
  eport="$(free_port)"; epeer="$(free_port)"; aport="$(free_port)"
  token="$(openssl rand -hex 16)"
  mkdir -p "$dir/certs"
  [ -f "$dir/sa.key" ] || openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  echo "$token,awo-admin,awo-admin,system:masters" >"$dir/tokens.csv"
  chmod 600 "$dir/tokens.csv" "$dir/sa.key"

  rm -rf "$dir/etcd"
  spawn "$dir" etcd "$ETCD" --name awo --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$eport" --advertise-client-urls "http://127.0.0.1:$eport" \
    --listen-peer-urls "http://127.0.0.1:$epeer" --initial-advertise-peer-urls "http://127.0.0.1:$epeer" \
    --initial-cluster "awo=http://127.0.0.1:$epeer"
  wait_for etcd "$dir" etcd curl -sf "http://127.0.0.1:$eport/health"

  spawn "$dir" kube-apiserver "$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$eport" \
    --secure-port="$aport" --bind-address=127.0.0.1 --cert-dir="$dir/certs" --token-auth-file="$dir/tokens.csv" \
    --authorization-mode=RBAC --service-account-key-file="$dir/sa.key" \
    --service-account-signing-key-file="$dir/sa.key" --service-account-issuer=https://kubernetes.default.svc \
    --service-cluster-ip-range=10.0.0.0/24 --disable-admission-plugins=ServiceAccount \
    --enable-priority-and-fairness=false
  wait_for kube-apiserver "$dir" kube-apiserver \
    curl -skf -H "Authorization: Bearer $token" "https://127.0.0.1:$aport/readyz"
  # The apiserver's self-signed certificate (written to DIR/certs with its CA) names 127.0.0.1: verify TLS
  # with it; skip verification only if it does not check out.
  local tls="    insecure-skip-tls-verify: true"
  if curl -sf --cacert "$dir/certs/apiserver.crt" -H "Authorization: Bearer $token" \
       "https://127.0.0.1:$aport/readyz" >/dev/null 2>&1; then
    tls="    certificate-authority: $dir/certs/apiserver.crt"
  fi
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: awo
  cluster:
    server: https://127.0.0.1:$aport
$tls
users:
- name: awo-admin
  user:
    token: $token
contexts:
- name: awo
  context:
    cluster: awo
    user: awo-admin
current-context: awo
EOF
  chmod 600 "$dir/kubeconfig"

  spawn "$dir" kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$dir/kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --port=0 \
    --service-account-private-key-file="$dir/sa.key" \
    --controllers='*,-nodeipam,-nodelifecycle,-attachdetach,-persistentvolume-binder,-persistentvolume-expander,-cloud-node-lifecycle,-service,-route'
  sleep 0.5
  kill -0 "$(cat "$dir/kube-controller-manager.pid")" 2>/dev/null || {
    log "kube-controller-manager exited:"; tail -n 30 "$dir/kube-controller-manager.log" >&2; stop "$dir"; exit 1; }
  # With AWO_K8S_OWNER_PID (the test process), a watcher stops the cluster once that process is gone, so a
  # killed test run leaves nothing behind.
  if [ -n "${AWO_K8S_OWNER_PID:-}" ]; then
    spawn "$dir" watcher bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" stop "$3"' \
      watcher "$AWO_K8S_OWNER_PID" "$(realpath "$0")" "$dir"
  fi
  log "cluster up in $(elapsed $t): https://127.0.0.1:$aport (logs in $dir)"
  echo "$dir/kubeconfig"
}

# TERM everything at once and KILL what is left after AWO_K8S_STOP_GRACE_S (1.5 s): the apiserver alone takes
# 3 s to stop gracefully, and nothing here is worth keeping (start begins with an empty etcd).
terminate() {
  local dir="$1" name pid pids=()
  shift
  for name in "$@"; do
    [ -f "$dir/$name.pid" ] || continue
    pid="$(cat "$dir/$name.pid")"
    rm -f "$dir/$name.pid"
    [ "$pid" = "$$" ] && continue  # the watcher itself runs this stop
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
  done
  for _ in $(seq "$(awk -v s="${AWO_K8S_STOP_GRACE_S:-1.5}" 'BEGIN { print int(s * 10) }')"); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}

stop() {
  local dir="${1:?usage: scripts/k8s.sh stop DIR}"
  terminate "$dir" kube-controller-manager kube-apiserver etcd watcher
}

case "${1:-}" in
  build) build ;;
  check) check ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: scripts/k8s.sh {build|check|start DIR|stop DIR}" >&2; exit 2 ;;
esac
