#!/usr/bin/env bash
# bench/scale.sh: pgferry at scale (issue 12's "Scale" targets), two scenarios.
#
# BENCH_SCENARIO=many (default): many small tables. The source gets a database many_N for
# every N in BENCH_TABLES (default 10000): N tables in the schemas core (the parents, N/100
# of them, at most 100, at least 1) and app1..app4 (the children), each with a serial primary
# key (so a sequence), one secondary index, BENCH_ROWS rows (default 10); every child has a
# foreign key to a parent; every tenth table a comment, every tenth (others) a grant to the
# role bench_reader (created on both clusters, as a migration's roles would be). Generated
# server-side by one DO block. In one interleaved run of BENCH_ROUNDS rounds, it times on
# every database:
#   pgferry   pgferry migration create --migration-option Migrate --jobs N (with its verification)
#   dump      pg_dump -Fc | pg_restore                                (one stream)
#   dumpdir   pg_dump -Fd -j N -f DIR; pg_restore -j N DIR            (both timed)
# and prints per table count and method: median wall time, ms per table, CPU seconds
# (client process tree plus both servers), peak RSS, the ratio to pg_dump | pg_restore;
# pgferry's phases per table count, and how much each phase grew from the smallest to the
# largest count against the table count (a phase growing faster shows a per-object cost that
# is not linear). Verdict: pgferry <= 1.0x pg_dump | pg_restore at every table count.
#
# BENCH_SCENARIO=size: the ~1 GB database of bench/offline.sh (pgbench -i, the TOASTed table
# `wide`, secondary indexes) at scale S (BENCH_SCALE, default 40) and at 10 S (400, ~12 GB),
# both in the source cluster, on disk by default. pgferry alone, each size once per round,
# interleaved. Prints wall, CPU, RSS, throughput and phases per size, and the verdict:
# wall(10 S) within ±15 % of 10 × wall(S), and RSS flat: pgferry's peak RSS at 10 S at most
# 1.2 × (or + 20 MB over) that at S. Refuses to start when the clusters' file system has
# less free space than 3 × the estimated size of the 10 S database.
#
# Every target is checked against the source: many: the numbers of tables, indexes,
# constraints by type, sequences, comments and grants, a hash of the sequences' values and
# of the grants, the sum of the rows and a hash of every row; size: as offline.sh.
#
# Usage: bash bench/scale.sh                                  (10,000 tables, 2 rounds)
#        BENCH_TABLES=1000,10000 bash bench/scale.sh          (the growth between the two)
#        BENCH_TABLES=300 BENCH_ROUNDS=1 bash bench/scale.sh  (a quick check)
#        BENCH_SCENARIO=size bash bench/scale.sh              (scales 40 and 400, ~13 GB on disk)
#        BENCH_SCENARIO=size BENCH_SCALE=1 BENCH_ROUNDS=1 bash bench/scale.sh   (quick)
# Environment:
#   BENCH_SCENARIO many or size (default many)
#   BENCH_TABLES   many: the table counts, comma- or space-separated (default 10000; >= 2)
#   BENCH_ROWS     many: rows per table (default 10)
#   BENCH_SCALE    size: the pgbench scale S of the small database (default 40); the large
#                  one is 10 S
#   BENCH_ROUNDS   rounds of the interleaved run (default 2); medians over them
#   BENCH_METHODS  many: the methods, comma- or space-separated (default pgferry,dump,dumpdir);
#                  size: pgferry only
#   BENCH_JOBS     workers for pgferry --jobs and every -j (default: nproc)
#   BENCH_PG_BIN   PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#   BENCH_TMPDIR   where the clusters go (many: default /dev/shm when it has > 4 GiB free,
#                  else $TMPDIR or /tmp; size: default $TMPDIR or /tmp, so both sizes are
#                  on the same (disk) file system)
#   BENCH_KEEP=1   keep the work directory (clusters, logs, pgferry events) at the end
#   BENCH_STRICT=1 exit 3 when a target of the verdict is missed or could not be measured
#   BENCH_SKIP_BUILD=1  use the pgferry binary already built
# Exit codes: 0 done, 1 a run failed or a target differs from its source, 3 (BENCH_STRICT)
# a target of the verdict missed.
# As root, the server programs run as the OS user `postgres` (PostgreSQL refuses root);
# the clients (psql, pgbench, pg_dump, pg_restore, pgferry) run as the invoking user.
set -euo pipefail

SCENARIO=${BENCH_SCENARIO:-many}
JOBS=${BENCH_JOBS:-$(nproc)}
ROUNDS=${BENCH_ROUNDS:-2}
PG_BIN=${BENCH_PG_BIN:-/usr/lib/postgresql/15/bin}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
PGFERRY=$TARGET_DIR/release/pgferry
BENCH_NAME=scale.sh
DB=
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "BENCH_JOBS must be a positive integer (got '$JOBS')"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer (got '$ROUNDS')"
case $SCENARIO in
  many)
    METHODS=$(echo "${BENCH_METHODS:-pgferry,dump,dumpdir}" | tr ',' ' ' | xargs)
    [ -n "$METHODS" ] || die "BENCH_METHODS is empty"
    for m in $METHODS; do
      case $m in pgferry | dump | dumpdir) ;; *) die "unknown method '$m' in BENCH_METHODS (pgferry, dump, dumpdir)" ;; esac
    done
    read -r -a COUNTS <<<"$(echo "${BENCH_TABLES:-10000}" | tr ',' ' ')"
    [ ${#COUNTS[@]} -gt 0 ] || die "BENCH_TABLES is empty"
    for n in "${COUNTS[@]}"; do
      if ! [[ $n =~ ^[1-9][0-9]*$ ]] || [ "$n" -lt 2 ] || [ "$n" -gt 99999 ]; then
        die "BENCH_TABLES must be table counts from 2 to 99999 (got '$n')"
      fi
    done
    mapfile -t COUNTS < <(printf '%s\n' "${COUNTS[@]}" | sort -nu)
    ROWS=${BENCH_ROWS:-10}
    [[ $ROWS =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROWS must be a positive integer (got '$ROWS')"
    ;;
  size)
    [ -z "${BENCH_METHODS:-}" ] || [ "$(echo "$BENCH_METHODS" | tr ',' ' ' | xargs)" = pgferry ] ||
      die "BENCH_SCENARIO=size times pgferry only (BENCH_METHODS='$BENCH_METHODS')"
    METHODS=pgferry
    S1=${BENCH_SCALE:-40}
    [[ $S1 =~ ^[1-9][0-9]*$ ]] || die "BENCH_SCALE must be a positive integer (got '$S1')"
    S10=$((S1 * 10))
    ;;
  *) die "BENCH_SCENARIO must be many or size (got '$SCENARIO')" ;;
esac
require_tools
setup_environment
if has_method pgferry; then build_pgferry; fi

# ---------------------------------------------------------------------------------------
if [ "$SCENARIO" = many ]; then
  make_workdir shm
  # Some transactions lock every table: pg_dump's (1 lock per table), the check below's (4:
  # the table and its indexes) and pgferry's single-transaction pre-data restore (8: table,
  # sequence, TOAST table and index…; 8110 in pg_locks for 1000 tables). The shared lock
  # table (this × max_connections entries) must hold them, as on any server with this many.
  max_n=${COUNTS[-1]}
  start_clusters "max_locks_per_transaction = $((64 + max_n / 10))"
else
  make_workdir
  # Estimated from scale 40: 1215 MB, i.e. ~31 MB per scale unit.
  need_kb=$((3 * S10 * 31 * 1024))
  free_kb=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
  if [ "$free_kb" -lt "$need_kb" ]; then
    die "$WORK_PARENT has $((free_kb / 1024 / 1024)) GB free; scale $S10 (~$((S10 * 31 / 1024)) GB) needs 3 × its size, $((need_kb / 1024 / 1024)) GB (set BENCH_TMPDIR to a larger file system, or a smaller BENCH_SCALE)"
  fi
  # shellcheck disable=SC2119 # no settings beyond the common ones
  start_clusters
fi

# ---------------------------------------------------------------------------------------
# many: the database many_N.
parents_of() { local p=$(($1 / 100)); [ "$p" -gt 100 ] && p=100; [ "$p" -lt 1 ] && p=1; echo "$p"; }
load_many_db() { # N
  local n=$1 db=many_$1 p start=$EPOCHREALTIME width=${#COUNTS[-1]}
  p=$(parents_of "$n")
  say "loading the source database $db: $n tables ($p parents in core, $((n - p)) children in app1..app4), $ROWS rows each"
  sq "$SP" postgres -c "create database $db"
  sq "$SP" "$db" -c "create schema core; create schema app1; create schema app2; create schema app3; create schema app4"
  # One DO block, committing every 200 tables (a transaction holds the locks of its tables).
  sq "$SP" "$db" <<SQL
do \$\$
declare
  t text;
begin
  for i in 1..$n loop
    if i <= $p then
      t := format('core.p%s', lpad(i::text, $width, '0'));
      execute format('create table %s (id serial primary key, name text not null, created timestamptz not null)', t);
      execute format('create index on %s (name)', t);
      execute format('insert into %s (name, created) select %L || g, timestamptz %L + g * interval %L from generate_series(1, $ROWS) g',
                     t, 'parent ' || i || '/', '2024-01-01 00:00:00+00', '1 hour');
    else
      t := format('app%s.t%s', i % 4 + 1, lpad(i::text, $width, '0'));
      execute format('create table %s (id serial primary key, parent_id integer not null references core.p%s (id),
                        qty integer not null, note text, created timestamptz not null)', t, lpad((i % $p + 1)::text, $width, '0'));
      execute format('create index on %s (parent_id)', t);
      execute format('insert into %s (parent_id, qty, note, created) select g, g * %s, md5(%L || g), timestamptz %L + g * interval %L from generate_series(1, $ROWS) g',
                     t, i, t, '2024-01-01 00:00:00+00', '1 minute');
    end if;
    if i % 10 = 0 then execute format('comment on table %s is %L', t, 'table number ' || i); end if;
    if i % 10 = 5 then execute format('grant select on %s to bench_reader', t); end if;
    if i % 200 = 0 then commit; end if;
  end loop;
end
\$\$;
checkpoint;
SQL
  say "loaded in $(elapsed "$start" "$EPOCHREALTIME") s; database $db: $(sq "$SP" postgres -c "select pg_size_pretty(pg_database_size('$db'))")"
}

# What a correct copy of many_N must reproduce, from the catalogs and every row (one query
# per table through query_to_xml, so nothing is created in the checked database).
MANY_SIGNATURE_SQL="
with rel as (
  select c.oid, c.relname, c.relkind, c.relacl, n.nspname
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_toast%'
), tab as (
  select format('%I.%I', nspname, relname) as q from rel where relkind = 'r'
), per as (
  select q, (xpath('/row/n/text()', x))[1]::text::bigint as n, (xpath('/row/h/text()', x))[1]::text as h
    from tab, query_to_xml(format('select count(*) as n, md5(coalesce(string_agg(r::text, '','' order by r.id), '''')) as h from %s r', q),
                           false, true, '') as x
)
select 'tables=' || (select count(*) from tab)
  || ' indexes=' || (select count(*) from rel where relkind = 'i')
  || ' constraints=' || (select string_agg(contype::text || ':' || k, ',' order by contype)
                           from (select contype, count(*) as k from pg_constraint
                                  where connamespace in (select oid from pg_namespace where nspname in (select nspname from rel))
                                  group by contype) c)
  || ' sequences=' || (select count(*) || '/' || left(md5(string_agg(format('%I.%I=%s', schemaname, sequencename, coalesce(last_value::text, 'unset')), ',' order by schemaname, sequencename)), 12)
                         from pg_sequences)
  || ' comments=' || (select count(*) from pg_description d join rel on rel.oid = d.objoid where d.classoid = 'pg_class'::regclass)
  || ' grants=' || (select count(*) || '/' || left(md5(coalesce(string_agg(format('%I.%I=%s', nspname, relname, relacl), ',' order by nspname, relname), '')), 12)
                      from rel where relacl is not null)
  || ' rows=' || (select sum(n) from per)
  || ' rows_hash=' || (select left(md5(string_agg(q || '=' || h, ',' order by q)), 16) from per)"

# ---------------------------------------------------------------------------------------
declare -A LABEL DB_BYTES NAMES_OF
NAMES=()
if [ "$SCENARIO" = many ]; then
  # The role the grants name exists on both clusters, as a migration's roles would.
  sq "$SP" postgres -c "create role bench_reader"
  sq "$TP" postgres -c "create role bench_reader"
  SIGNATURE_SQL=$MANY_SIGNATURE_SQL
  for n in "${COUNTS[@]}"; do
    load_many_db "$n"
    db=many_$n
    p=$(parents_of "$n")
    SOURCE_SIGNATURE[$db]=$(sq "$SP" "$db" -c "$SIGNATURE_SQL")
    DB_BYTES[$db]=$(sq "$SP" postgres -c "select pg_database_size('$db')")
    say "source $db: ${SOURCE_SIGNATURE[$db]}"
    grants=$(( (n + 5) / 10 ))
    expected="tables=$n indexes=$((2 * n)) constraints=f:$((n - p)),p:$n sequences=$n/"
    [[ ${SOURCE_SIGNATURE[$db]} == "$expected"*" comments=$((n / 10)) grants=$grants/"*" rows=$((n * ROWS)) "* ]] ||
      die "unexpected source contents of $db: ${SOURCE_SIGNATURE[$db]} (expected $expected… comments=$((n / 10)) grants=$grants/… rows=$((n * ROWS)))"
    for m in $METHODS; do
      name=$m@$n
      NAMES+=("$name")
      NAMES_OF[$m,$n]=$name
      METHOD_OF[$name]=$m
      DB_OF[$name]=$db
    done
    LABEL[pgferry@$n]="pgferry --jobs $JOBS"
    LABEL[dump@$n]="pg_dump -Fc | pg_restore"
    LABEL[dumpdir@$n]="pg_dump -Fd -j$JOBS + pg_restore -j$JOBS"
  done
  for name in "${NAMES[@]}"; do LABEL[$name]="${LABEL[$name]}, ${name#*@} tables"; done
else
  SIGNATURE_SQL=$PGBENCH_SIGNATURE_SQL
  for s in "$S1" "$S10"; do
    db=bench_s$s
    load_pgbench_db "$SP" "$db" "$s"
    SOURCE_SIGNATURE[$db]=$(sq "$SP" "$db" -c "$SIGNATURE_SQL")
    DB_BYTES[$db]=$(sq "$SP" postgres -c "select pg_database_size('$db')")
    say "source $db: ${SOURCE_SIGNATURE[$db]}"
    expected=$(pgbench_expected "$s")
    [[ ${SOURCE_SIGNATURE[$db]} == "$expected"* ]] || die "unexpected source contents of $db: ${SOURCE_SIGNATURE[$db]} (expected $expected…)"
    name=s$s
    NAMES+=("$name")
    METHOD_OF[$name]=pgferry
    DB_OF[$name]=$db
    LABEL[$name]="pgferry --jobs $JOBS, scale $s"
  done
fi

if has_method pgferry; then warm_pgferry; fi
export PG_BIN SP TP JOBS PGFERRY

# ---------------------------------------------------------------------------------------
run_rounds "${NAMES[@]}"
summarize "${NAMES[@]}"

echo
echo "pgferry scale benchmark ($SCENARIO) — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, PostgreSQL $("$PG_BIN/postgres" --version | awk '{ print $3 }'), clusters on $WORK_PARENT"
echo "$ROUNDS round(s), every run once per round, order rotated; medians over the rounds; --jobs/-j $JOBS"
db_mb() { awk -v b="${DB_BYTES[$1]}" 'BEGIN { printf "%.0f", b / 1048576 }'; }
# The phases of pgferry's run NAME (medians), "start schema data post-data verify finish".
phases_of() {
  echo "${M_PH_START[$1]} ${M_PH_SCHEMA[$1]} ${M_DATA[$1]} ${M_INDEX[$1]} ${M_PH_VERIFY[$1]} ${M_PH_FINISH[$1]}"
}
PHASE_NAMES=(start-up schema data post-data verification finishing)
ALL_OK=1
pgferry_ok() { [ "${M_CHECK[$1]}" = "exact ×$ROUNDS" ]; }

if [ "$SCENARIO" = many ]; then
  echo "many_N: N tables, min(100, N/100) parents in core, children in app1..app4 each with a foreign key to one; serial"
  echo "primary key, one secondary index, $ROWS rows per table; a comment on every tenth table, a grant on every tenth"
  # of_dump ARRAY N: pg_dump | pg_restore's median (wall or CPU-s) at N tables, - without it
  of_dump() { local -n arr=$1; if has_method dump; then echo "${arr[dump@$2]}"; else echo -; fi; }
  row() { printf '%7s  %-34s %7s %8s  %7s %7s %7s  %6s %6s  %6s %8s  %s\n' "$@"; }
  row "tables" "method" "wall s" "ms/table" "CPU-s" "client" "servers" "RSS MB" "tree" "÷dump" "CPU÷dump" "check"
  for n in "${COUNTS[@]}"; do
    for m in $METHODS; do
      name=${NAMES_OF[$m,$n]}
      row "$n" "${LABEL[$name]%, * tables}" "${M_WALL[$name]}" \
        "$(awk -v w="${M_WALL[$name]}" -v n="$n" 'BEGIN { if (w + 0 > 0) printf "%.2f", 1000 * w / n; else print "-" }')" \
        "${M_CPU[$name]}" "${M_CCPU[$name]}" "${M_SCPU[$name]}" "$(mb "${M_RSS[$name]:-0}")" "$(mb "${M_TREE[$name]:-0}")" \
        "$(ratio "${M_WALL[$name]}" "$(of_dump M_WALL "$n")")" "$(ratio "${M_CPU[$name]}" "$(of_dump M_CPU "$n")")" "${M_CHECK[$name]}"
    done
  done
  echo "  wall s: median wall time (CREATE DATABASE included); ms/table: wall s / tables. CPU-s = client + servers,"
  echo "  as in offline.sh: the method's process tree (GNU time) and both clusters (/proc). RSS MB: the largest"
  echo "  process of the client tree (max over the rounds); tree: the largest sampled sum over it."
  echo "  ÷dump, CPU÷dump: the median wall time and CPU-s over pg_dump | pg_restore's (CPU-s varies less"
  echo "  than wall time when other work shares the machine)."
  if has_method pgferry; then
    echo "  pgferry's phases (median seconds over the rounds; ms per table in brackets):"
    printf '    %7s' "tables"
    printf ' %16s' "${PHASE_NAMES[@]}"
    echo
    for n in "${COUNTS[@]}"; do
      printf '    %7s' "$n"
      for v in $(phases_of "pgferry@$n"); do
        printf ' %16s' "$(awk -v v="$v" -v n="$n" 'BEGIN { if (v == "-") print "-"; else printf "%.2f (%.2f)", v, 1000 * v / n }')"
      done
      echo
    done
    if [ ${#COUNTS[@]} -gt 1 ]; then
      # A phase whose time grows more than 1.5 × as fast as the table count has a per-object
      # cost that is not linear (e.g. a round trip per object, or a quadratic lookup).
      lo=${COUNTS[0]} hi=${COUNTS[-1]}
      read -r -a plo <<<"$(phases_of "pgferry@$lo")"
      read -r -a phi <<<"$(phases_of "pgferry@$hi")"
      echo "  growth from $lo to $hi tables (×$(awk -v a="$lo" -v b="$hi" 'BEGIN { printf "%.1f", b / a }')): wall: pgferry $(ratio "${M_WALL[pgferry@$hi]}" "${M_WALL[pgferry@$lo]}")$(
        has_method dump && echo ", pg_dump | pg_restore $(ratio "${M_WALL[dump@$hi]}" "${M_WALL[dump@$lo]}")")"
      echo "    CPU-s: pgferry $(ratio "${M_CPU[pgferry@$hi]}" "${M_CPU[pgferry@$lo]}")$(
        has_method dump && echo ", pg_dump | pg_restore $(ratio "${M_CPU[dump@$hi]}" "${M_CPU[dump@$lo]}")"); pgferry's phases:"
      for ((k = 0; k < ${#PHASE_NAMES[@]}; k++)); do
        awk -v p="${PHASE_NAMES[$k]}" -v a="${plo[$k]}" -v b="${phi[$k]}" -v lo="$lo" -v hi="$hi" 'BEGIN {
          if (a == "-" || b == "-") { printf "    %-14s - (not measured)\n", p; exit }
          if (a + 0 <= 0.05) { printf "    %-14s - (%s s at %d tables: too short to compare)\n", p, a, lo; exit }
          g = b / a; t = hi / lo
          printf "    %-14s ×%.1f%s\n", p, g, (g > 1.5 * t && b >= 1) ? "  GROWS FASTER THAN THE TABLE COUNT" : "" }'
      done
    fi
    for n in "${COUNTS[@]}"; do
      for ((r = 1; r <= ROUNDS; r++)); do
        if [ -n "${PGFERRY_PHASES[pgferry@$n,$r]:-}" ]; then
          echo "  pgferry's phases, $n tables, round $r ($(mb "${R_HWM[pgferry@$n,$r]:-0}") MB peak RSS of pgferry itself, VmHWM):"
          echo "${PGFERRY_PHASES[pgferry@$n,$r]}"
          break
        fi
      done
    done
  fi
  if ! has_method pgferry || ! has_method dump; then
    echo "verdict: none (pgferry and dump must both be among the methods)"
    ALL_OK=0
  else
    parts=()
    for n in "${COUNTS[@]}"; do
      v=$(verdict_part "$n tables: pgferry ÷ pg_dump|pg_restore" "$(ratio "${M_WALL[pgferry@$n]}" "${M_WALL[dump@$n]}")" 1.0)
      pgferry_ok "pgferry@$n" || v="$v (pgferry's runs: ${M_CHECK[pgferry@$n]})"
      [[ $v == *PASS ]] || ALL_OK=0
      parts+=("$v")
    done
    verdict=$(printf '%s; ' "${parts[@]}")
    verdict=${verdict%; }
    if [ "$ALL_OK" = 1 ]; then
      echo "verdict: PASS — $verdict"
    elif [[ $verdict == *FAIL* ]] || [[ $verdict == *"runs:"* ]]; then
      echo "verdict: FAIL — $verdict"
    else
      echo "verdict: INCOMPLETE — $verdict"
    fi
  fi
else
  row() { printf '%-30s %6s %9s  %7s  %7s %7s %7s  %6s %6s  %6s  %s\n' "$@"; }
  row "run" "scale" "database" "wall s" "CPU-s" "client" "servers" "RSS MB" "tree" "MB/s" "check"
  for s in "$S1" "$S10"; do
    name=s$s
    row "${LABEL[$name]%, scale *}" "$s" "$(db_mb "bench_s$s") MB" "${M_WALL[$name]}" "${M_CPU[$name]}" "${M_CCPU[$name]}" "${M_SCPU[$name]}" \
      "$(mb "${M_HWM[$name]:-0}")" "$(mb "${M_TREE[$name]:-0}")" \
      "$(awk -v b="${DB_BYTES[bench_s$s]}" -v w="${M_WALL[$name]}" 'BEGIN { if (w + 0 > 0) printf "%.1f", b / 1048576 / w; else print "-" }')" \
      "${M_CHECK[$name]}"
  done
  echo "  wall s: median wall time; CPU-s = client + servers, as in offline.sh. RSS MB: pgferry's own peak"
  echo "  (VmHWM, the highest of the rounds); tree: the largest sampled sum over its process tree (pg_dump,"
  echo "  pg_restore). MB/s: database size over the median wall time."
  echo "  pgferry's phases (median seconds over the rounds):"
  printf '    %9s' "scale"
  printf ' %13s' "${PHASE_NAMES[@]}"
  echo
  for s in "$S1" "$S10"; do
    printf '    %9s' "$s"
    # shellcheck disable=SC2046 # one word per phase
    printf ' %13s' $(phases_of "s$s")
    echo
  done
  for s in "$S1" "$S10"; do
    for ((r = 1; r <= ROUNDS; r++)); do
      if [ -n "${PGFERRY_PHASES[s$s,$r]:-}" ]; then
        echo "  pgferry's phases, scale $s, round $r ($(mb "${R_HWM[s$s,$r]:-0}") MB peak RSS of pgferry itself, VmHWM):"
        echo "${PGFERRY_PHASES[s$s,$r]}"
        break
      fi
    done
  done
  w1=${M_WALL[s$S1]} w10=${M_WALL[s$S10]} h1=${M_HWM[s$S1]:-0} h10=${M_HWM[s$S10]:-0}
  if ! has_run "s$S1" || ! has_run "s$S10"; then
    echo "verdict: FAIL — pgferry did not succeed at scale $S1: ${M_CHECK[s$S1]}, at scale $S10: ${M_CHECK[s$S10]}"
    ALL_OK=0
  else
    size_ratio=$(awk -v a="${DB_BYTES[bench_s$S1]}" -v b="${DB_BYTES[bench_s$S10]}" 'BEGIN { printf "%.2f", b / a }')
    linear=$(awk -v a="$w1" -v b="$w10" 'BEGIN { printf "%.2f", b / (10 * a) }')
    v1="wall(scale $S10) ÷ (10 × wall(scale $S1)) = $w10 ÷ (10 × $w1) = $linear, within ±15 %: $(awk -v r="$linear" 'BEGIN { print (r >= 0.85 && r <= 1.15) ? "PASS" : "FAIL" }')"
    v1="$v1 (the database grew ×$size_ratio; per MB: $(awk -v a="$w1" -v b="$w10" -v s="$size_ratio" 'BEGIN { printf "%.2f", b / (s * a) }'))"
    limit=$(awk -v k="$h1" 'BEGIN { a = 1.2 * k; b = k + 20 * 1024; printf "%.0f", (a > b) ? a : b }')
    v2="RSS flat: $(mb "$h10") MB at scale $S10 ≤ max(1.2 × $(mb "$h1"), $(mb "$h1") + 20) = $(mb "$limit") MB: $(awk -v a="$h10" -v l="$limit" 'BEGIN { print (a > 0 && a <= l) ? "PASS" : "FAIL" }')"
    verdict="$v1; $v2"
    for s in "$S1" "$S10"; do pgferry_ok "s$s" || verdict="$verdict; pgferry's runs at scale $s: ${M_CHECK[s$s]}"; done
    if [[ $verdict == *FAIL* ]] || [[ $verdict == *"runs at"* ]]; then
      ALL_OK=0
      echo "verdict: FAIL — $verdict"
    else
      echo "verdict: PASS — $verdict"
    fi
  fi
fi

[ "$FAILED" = 0 ] || exit 1
if [ -n "${BENCH_STRICT:-}" ] && [ "$ALL_OK" != 1 ]; then exit 3; fi
exit 0
