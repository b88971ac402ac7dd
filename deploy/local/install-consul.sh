#!/usr/bin/env bash
# Prints the path of a Consul binary, installing one if needed.
#
# Order: $WEFT_CONSUL_BIN, a `consul` on PATH, the project's tools folder
# (.tools/consul/usr/bin/consul), and otherwise Debian's `consul` package from
# the bullseye suite (1.8.7), fetched with apt-get through a private sources
# list. The mirror URI is read from this machine's own apt configuration, so no
# host name is written anywhere; the package is unpacked with dpkg-deb into
# the git-ignored .tools/ folder, never installed system-wide.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
tools="$repo/.tools/consul"
bin="$tools/usr/bin/consul"

say() { echo "install-consul: $*" >&2; }

if [[ -n "${WEFT_CONSUL_BIN:-}" ]]; then
  [[ -x "$WEFT_CONSUL_BIN" ]] || { say "WEFT_CONSUL_BIN=$WEFT_CONSUL_BIN is not an executable"; exit 1; }
  echo "$WEFT_CONSUL_BIN"; exit 0
fi
if command -v consul >/dev/null 2>&1; then command -v consul; exit 0; fi
if [[ -x "$bin" ]]; then echo "$bin"; exit 0; fi

command -v apt-get >/dev/null || { say "no consul on PATH and no apt-get to fetch one; install Consul 1.8+ and set WEFT_CONSUL_BIN"; exit 1; }

# The first Debian archive URI this machine's apt uses (deb822 .sources files first, then sources.list).
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
  [[ -f "$f" ]] || continue
  mirror=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")
  [[ -n "$mirror" ]] && break
done
if [[ -z "$mirror" && -f /etc/apt/sources.list ]]; then
  mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($i !~ /security/) { print $i; exit } } }' /etc/apt/sources.list)
fi
[[ -n "$mirror" ]] || { say "could not read a Debian mirror URI from /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/etc/preferences.d" "$work/etc/sources.list.d"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
signed=""; [[ -f "$keyring" ]] && signed="[signed-by=$keyring] "
echo "deb ${signed}${mirror} bullseye main" > "$work/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$work/sources.list"
  -o "Dir::Etc::SourceParts=$work/etc/sources.list.d"
  -o "Dir::Etc::Preferences=$work/etc/preferences"
  -o "Dir::Etc::PreferencesParts=$work/etc/preferences.d"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache::Archives=$work/archives"
  -o "Dir::Cache::pkgcache=$work/pkgcache.bin"
  -o "Dir::Cache::srcpkgcache=$work/srcpkgcache.bin"
  -o "Acquire::Check-Valid-Until=false"
)
say "fetching Debian's consul package (bullseye) with apt-get"
apt-get "${apt_opts[@]}" update >"$work/update.log" 2>&1 || { cat "$work/update.log" >&2; say "apt-get update for the bullseye suite failed"; exit 1; }
(cd "$work" && apt-get "${apt_opts[@]}" download consul >"$work/download.log" 2>&1) || { cat "$work/download.log" >&2; say "apt-get download consul failed"; exit 1; }
deb=$(ls "$work"/consul_*.deb | head -n1)
mkdir -p "$tools"
dpkg-deb -x "$deb" "$tools"
[[ -x "$bin" ]] || { say "the package did not contain usr/bin/consul"; exit 1; }
say "installed $("$bin" version | head -n1) at $bin"
echo "$bin"
