# Sourced by ./test and ./demo: install what is missing, configure, build.
# Works on a fresh Debian 12 as root with only Debian's mirror reachable.

loomship_packages=(build-essential meson ninja-build pkg-config
  libcmocka-dev libcurl4-openssl-dev libmicrohttpd-dev libzstd-dev
  libxxhash-dev libjansson-dev curl openssl bc python3 python3-yaml
  clang libclang-rt-14-dev valgrind    # the fuzzing and sanitizer suites
  prometheus                           # promtool: the alert rules in deploy/
  libssl-dev                           # libcrypto: frame tags (HMAC-SHA256)
  etcd-server etcd-client              # the cluster tests start their own etcd
  swift-proxy swift-account swift-container swift-object memcached
                                       # the object-store tests: their own Swift
  chromium)                            # headless check of the status page

loomship_install() {
  local missing=()
  for p in "${loomship_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]} (run as root, or install them)" >&2
    return 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# loomship_build DIR [meson options...]: configure DIR (a new one with the
# options; an existing one has them applied), then build it.
loomship_build() {
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$@"
  elif [ $# -gt 0 ]; then
    meson configure "$dir" "$@" >/dev/null
  fi
  ninja -C "$dir"
}
