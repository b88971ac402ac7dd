# Sourced by the callgrind bench scripts: fails loudly, with the install
# command, when a tool or a release binary is missing; sets nginx_bin.
#
#   require_callgrind_tools RELEASE_DIR

require_callgrind_tools() {
  local rel=$1 tool bin
  for tool in valgrind callgrind_control callgrind_annotate oha curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y valgrind nginx curl; cargo install oha --locked" >&2; exit 2; }
  done
  for bin in weft-sidecar weft-discovery; do
    [[ -x $rel/$bin ]] || { echo "missing $rel/$bin: cargo build --release -p weft-sidecar -p weft-discovery" >&2; exit 2; }
  done
  nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
  [[ -x $nginx_bin ]] || { echo "missing nginx: apt-get install -y nginx" >&2; exit 2; }
}
