#!/bin/sh -
# BASELINE FOR THE BENCHMARK, NOT PART OF PGHA.
#
# Our own shell rendering of the failover.sh of the classic recipe
# (PostgreSQL 9.1 + pgpool-II 3.1; /work/shared/seed/classic-recipe.md),
# written from the recipe's description for PostgreSQL 15 and the lab's
# layout, so that `make bench` can measure it next to pgha-failover.
# pgpool runs it as:  failover_command = '.../classic-failover.sh %d %M %m'
#
# It keeps the recipe's logic and its weaknesses on purpose:
#   - only "node 0 failed" is handled, and the first standby is always the
#     one promoted (pgpool's %M and %m are accepted and ignored, as there);
#   - promotion by trigger file (promote_trigger_file, polled every 5 s by
#     PostgreSQL 15; the benchmark sets it on the first standby beforehand);
#   - a sleep-1 loop waits for the promotion, with no timeout;
#   - ssh and scp with no timeouts; every other standby is repointed with
#     sed, restarted and attached, one after the other;
#   - pcp_attach_node whatever the state of the node.
# What changed from the recipe, and only because PostgreSQL 12+ and
# pgpool-II 4 differ:
#   - the fixed addresses come from the lab (lab.env next to this bin dir);
#     the standbys stream from the replication addresses, so those are the
#     ones edited in the connection setting;
#   - recovery.done no longer exists: a promoted server removes
#     standby.signal instead, so the loop waits for that file to go;
#   - pg_xlog is pg_wal; primary_conninfo is in postgresql.auto.conf
#     (pg_basebackup -R writes it there), not recovery.conf;
#   - "/etc/init.d/postgresql restart" is pg_ctl restart (no init scripts
#     in the lab); pcp_attach_node takes options (and .pcppass) in pgpool 4.

FALLING_NODE=$1
OLD_MASTER=$2
NEW_MASTER=$3

# NET, STANDBYS, APP_ADDR, PCP_PORT of this lab.
. "$(dirname "$0")/../lab.env"

PGDATA=/var/lib/postgresql/15/main
PG_CTL=$PG_BIN/pg_ctl
MASTER_REPL=$NET.102
SLAVE1=$NET.3
SLAVE1_REPL=$NET.103

if test "$FALLING_NODE" -eq 0
then
	OTHERS=""
	i=2
	while test "$i" -le "$STANDBYS"; do
		OTHERS="$OTHERS $NET.$((2 + i))"
		i=$((i + 1))
	done

	ssh -T "$SLAVE1" touch /tmp/pgsql.trigger
	ssh -T "$SLAVE1" "while test -f $PGDATA/standby.signal; do sleep 1; done; for s in $OTHERS; do scp $PGDATA/pg_wal/*history* \$s:$PGDATA/pg_wal/; done"
	i=2
	for SLAVE in $OTHERS; do
		ssh -T "$SLAVE" "sed -i 's/$MASTER_REPL/$SLAVE1_REPL/' $PGDATA/postgresql.auto.conf"
		ssh -T "$SLAVE" "$PG_CTL -D $PGDATA -l /var/lib/postgresql/15/pgha-postgresql.log restart"
		/usr/sbin/pcp_attach_node -h "$APP_ADDR" -p "$PCP_PORT" -U pgpool -w -n "$i"
		i=$((i + 1))
	done
fi
