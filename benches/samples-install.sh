#!/usr/bin/env bash
# Benchmark helper (not part of pgha): put pgpool-II's own sample scripts,
# as the pgpool2 package installs them, into a lab's bin dir, adapted at run
# time with sed to the lab's paths. The samples themselves are never kept in
# this repository.
#
#   benches/samples-install.sh LAB_DIR
#
# pgpool then runs them as
#   failover_command       = 'LAB_DIR/bin/failover.sh %d %h %p %D %m %H %M %P %r %R %N %S'
#   follow_primary_command = 'LAB_DIR/bin/follow_primary.sh %d %h %p %D %m %H %M %P %r %R'
#
# Edits (nothing else is touched; each one is checked to have applied, so a
# changed sample fails here rather than mid-benchmark):
#   PGHOME               /usr/pgsql-14 -> the lab's PostgreSQL (dirname of PG_BIN)
#   SSH_KEY_FILE         id_rsa_pgpool -> id_ed25519 (the lab's key for postgres)
#   ARCHIVEDIR           /var/lib/pgsql/archivedir -> /var/lib/postgresql/archive
#   REPLUSER, PCP_USER   repl, pgpool (as in the lab)
#   PGPOOL_PATH          /usr/bin -> /usr/sbin (Debian puts pcp_* there)
#   PCP_PORT             the lab's
#   pcp_attach_node -h   localhost -> the app host's address (pcp listens there)
#   passfile             /var/lib/pgsql/.pgpass -> /var/lib/postgresql/.pgpass
#   application_name     the node's address -> pgN, the lab's
#                        backend_application_nameN (the samples' intent: match
#                        pgpool's name for the node; synchronous_standby_names
#                        of --sync labs uses these names too)
set -euo pipefail

lab_dir=${1:?usage: samples-install.sh LAB_DIR}
src=${PGPOOL_SAMPLES:-/usr/share/doc/pgpool2/examples/scripts}
# shellcheck disable=SC1091
. "$lab_dir/lab.env"

fetch() { # NAME: the sample's text, whether the package compressed it or not
	if [ -f "$src/$1.sample" ]; then
		cat "$src/$1.sample"
	elif [ -f "$src/$1.sample.gz" ]; then
		zcat "$src/$1.sample.gz"
	else
		echo "samples-install.sh: no $src/$1.sample (apt-get install pgpool2)" >&2
		exit 1
	fi
}

pghome=$(dirname "$PG_BIN")
common=(
	-e "s|^PGHOME=.*|PGHOME=$pghome|"
	-e "s|^SSH_KEY_FILE=.*|SSH_KEY_FILE=id_ed25519|"
)

fetch failover.sh | sed "${common[@]}" >"$lab_dir/bin/failover.sh"
fetch follow_primary.sh | sed "${common[@]}" \
	-e "s|^ARCHIVEDIR=.*|ARCHIVEDIR=/var/lib/postgresql/archive|" \
	-e "s|^REPLUSER=.*|REPLUSER=repl|" \
	-e "s|^PCP_USER=.*|PCP_USER=pgpool|" \
	-e "s|^PGPOOL_PATH=.*|PGPOOL_PATH=/usr/sbin|" \
	-e "s|^PCP_PORT=.*|PCP_PORT=$PCP_PORT|" \
	-e "s|pcp_attach_node -w -h localhost|pcp_attach_node -w -h $APP_ADDR|" \
	-e "s|/var/lib/pgsql/.pgpass|/var/lib/postgresql/.pgpass|g" \
	-e 's|application_name=${NODE_HOST}|application_name=pg${NODE_ID}|g' \
	>"$lab_dir/bin/follow_primary.sh"

check() { # FILE FIXED-STRING...
	local f=$1 s
	shift
	for s in "$@"; do
		grep -qF -- "$s" "$f" || { echo "samples-install.sh: edit did not apply in $f: $s" >&2; exit 1; }
	done
}
check "$lab_dir/bin/failover.sh" "PGHOME=$pghome" "SSH_KEY_FILE=id_ed25519" '${PGHOME}/bin/pg_ctl -D ${NEW_MAIN_NODE_PGDATA} -w promote'
check "$lab_dir/bin/follow_primary.sh" "PGHOME=$pghome" "SSH_KEY_FILE=id_ed25519" \
	"ARCHIVEDIR=/var/lib/postgresql/archive" "PGPOOL_PATH=/usr/sbin" "PCP_PORT=$PCP_PORT" \
	"pcp_attach_node -w -h $APP_ADDR" "application_name=pg\${NODE_ID} passfile=''/var/lib/postgresql/.pgpass'''"
if grep -qF '/var/lib/pgsql' "$lab_dir/bin/follow_primary.sh"; then
	echo "samples-install.sh: a /var/lib/pgsql path is left in follow_primary.sh" >&2
	exit 1
fi
chmod 755 "$lab_dir/bin/failover.sh" "$lab_dir/bin/follow_primary.sh"
