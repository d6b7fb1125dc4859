#!/usr/bin/env bash
# bench/plugin-quickstart.sh: times docs/plugin-quickstart.md's commands, as a plugin author
# runs them, from an empty directory to the rule's finding in a real validation: plugin new,
# the native tests, plugin build >> plugins.toml (the pin), plugin list, then a Validate of a
# source database holding a table the rule flags. Two throwaway PostgreSQL 15 clusters stand
# in for the page's source and target (not timed). Prints each step's seconds; the first
# compile of the project's dependencies (native, then wasm32) is shown on its own line, since
# the page's target (under 10 minutes) does not count it.
#
#   bash bench/plugin-quickstart.sh            (QUICKSTART_LANG=python for a Python rule)
#
# Uses target/release/pgferry (built when absent) as the installed pgferry. As root, the
# servers run as the postgres OS user.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
LANG_=${QUICKSTART_LANG:-rust}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PGFERRY=$REPO/target/release/pgferry
[ -x "$PGFERRY" ] || (cd "$REPO" && cargo build --release -p pgferry)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgferry-quickstart.XXXXXX")
chmod 755 "$WORK"
as_server() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cleanup() {
  for c in src tgt; do [ -f "$WORK/$c/data/postmaster.pid" ] && as_server "$PG_BIN/pg_ctl" -D "$WORK/$c/data" -m immediate -w stop >/dev/null 2>&1; done
  rm -rf "$WORK"
}
trap cleanup EXIT
start_cluster() { # $1 name $2 port
  mkdir -p "$WORK/$1"
  [ "$(id -u)" = 0 ] && chown postgres: "$WORK/$1"
  as_server "$PG_BIN/initdb" -D "$WORK/$1/data" -U postgres --auth=trust -E UTF8 >/dev/null
  as_server "$PG_BIN/pg_ctl" -D "$WORK/$1/data" -w -l "$WORK/$1/log" \
    -o "-c listen_addresses=127.0.0.1 -c port=$2 -c unix_socket_directories=$WORK/$1 -c fsync=off" start >/dev/null
}
SP=$(free_port); start_cluster src "$SP"
TP=$(free_port); start_cluster tgt "$TP"
psql -q -h 127.0.0.1 -p "$SP" -U postgres -c 'create database app'
psql -q -h 127.0.0.1 -p "$SP" -U postgres -d app -c 'create table public.tmp_import (line text)'

# The author's machine: a home of its own, pgferry on PATH.
export HOME=$WORK/home PATH="$REPO/target/release:$PATH"
mkdir -p "$HOME/.config/pgferry"
# The author's cargo and rustup stay where they are (the toolchain is installed already).
export CARGO_HOME=${CARGO_HOME:-/root/.cargo} RUSTUP_HOME=${RUSTUP_HOME:-/root/.rustup}
cd "$HOME"

declare -a STEPS=()
step() { # $1 label, then the command
  local label=$1 start end
  shift
  start=$(date +%s.%N)
  "$@" >"$WORK/step.log" 2>&1 || { cat "$WORK/step.log" >&2; echo "step failed: $label" >&2; exit 1; }
  end=$(date +%s.%N)
  STEPS+=("$(printf '%-46s %7.1f' "$label" "$(echo "$end - $start" | bc)")")
  echo "${STEPS[-1]}"
}

if [ "$LANG_" = python ]; then
  step "1. pgferry plugin new rule … --lang python" pgferry plugin new rule no-temp-tables --lang python
  cd no-temp-tables
  step "2. python3 -m unittest (first: bindings made)" python3 -m unittest discover -s tests
  step "2. python3 -m unittest" python3 -m unittest discover -s tests
else
  step "1. pgferry plugin new rule no-temp-tables" pgferry plugin new rule no-temp-tables
  cd no-temp-tables
  step "   first compile (native, not counted)" cargo test --no-run
  touch src/lib.rs # as after an edit: the plugin's own crate compiles again
  step "2. cargo test" cargo test
  step "   first compile (wasm32, not counted)" pgferry plugin build .
  touch src/lib.rs
fi
step "3. pgferry plugin build . >> plugins.toml" bash -c 'pgferry plugin build . >> ~/.config/pgferry/plugins.toml'
step "3. pgferry plugin list" pgferry plugin list
cat >p.json <<EOF
{"properties": {"SourceDBServerResourceId": "127.0.0.1:$SP@postgres", "DBsToMigrate": ["app"], "sourceType": "OnPremises", "sslMode": "Prefer"}}
EOF
validate() {
  local rc=0
  pgferry migration create --migration-name check-1 --properties p.json --target "127.0.0.1:$TP" --migration-option Validate > validate.out 2>&1 || rc=$?
  # Exit 4 (ValidationFailed) with the rule's finding is the expected end.
  [ "$rc" = 4 ] && grep -q "leftover-table" validate.out
}
step "4. pgferry migration create … Validate" validate
grep "no-temp-tables" validate.out | head -3

total=0
for s in "${STEPS[@]}"; do
  case $s in *"not counted"*) ;; *) total=$(echo "$total + ${s##* }" | bc) ;; esac
done
printf '%-46s %7.1f\n' "total, first compiles not counted (s)" "$total"
