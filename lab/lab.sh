#!/usr/bin/env bash
# pgha lab: several "hosts" on one machine, each with its own 127.0.0.0/8
# address, its own mount namespace (private /var/lib/postgresql,
# /var/run/postgresql, /tmp, /etc/pgha, /etc/pgpool2) and its own sshd.
#
#   pg0 = NET.2 (primary)   pgK = NET.(2+K) (standbys)   app = NET.20 (pgpool)
#   each pgK also has a replication address NET.(102+K): the standbys stream
#   from it, so pgpool can be cut off from a node while replication goes on.
#
# Run as root. See `lab.sh help`.
set -euo pipefail

LAB_ROOT=${PGHA_LAB_ROOT:-/run/pgha-lab}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")

usage() {
	cat <<'EOF'
usage: lab.sh COMMAND [ARGS]

  up [options]               start a lab; prints its directory (holds lab.env)
     --name NAME             lab name (default: lab<N>)
     --net 127.A.B           address block (default: first free 127.0.101-199)
     --standbys N            number of standbys, 1..4 (default 2)
     --pg-bin DIR            PostgreSQL server binaries (default $PGHA_PG_BIN, else
                             /usr/lib/postgresql/15/bin; lab/versions.sh names others)
     --pgpool-bin DIR        pgpool-II binaries: pgpool, pcp_*, pg_md5 (default
                             $PGHA_PGPOOL_BIN, else /usr/sbin)
     --pgha-bin DIR          where pgha-* binaries are (default REPO/target/debug;
                             "system" = /usr/bin, e.g. after installing the .deb)
     --failover-command CMD  pgpool failover_command (default: @BIN@/pgha-failover %d %M %m --old-primary %P;
                             @BIN@ stands for the lab's copy of the binaries)
     --follow-command CMD    pgpool follow_primary_command (default: none; @BIN@ as above)
     --sync                  synchronous replication (ANY 1 of the standbys)
     --restore scp|local     how standbys fetch archived WAL (default $PGHA_LAB_RESTORE, else
                             scp): scp from the primary's archive over ssh, as pgpool's
                             follow_primary.sh.sample writes it, with PostgreSQL's default
                             wal_retrieve_retry_interval (5s); local: cp from the host's own
                             archive, wal_retrieve_retry_interval = 1s (the old lab)
     --no-pgpool             do not start pgpool
  down NAME                  stop everything of lab NAME and remove it
  exec NAME HOST [--root] -- CMD...
                             run CMD on HOST (app, pg0, pg1, ...) as postgres
                             (or root), inside that host's mount namespace
  kill NAME HOST             kill every process of HOST (a dead host)
  blackhole NAME ADDR        silently drop every packet to ADDR (iptables DROP)
  unblackhole NAME ADDR      remove that rule
  start-pg NAME HOST         start PostgreSQL on HOST (pg_ctl start)
  start-pgpool NAME          (re)start pgpool on the app host
  list                       labs that exist on this machine
EOF
}

die() { echo "lab.sh: $*" >&2; exit 1; }
log() { echo "lab: $*" >&2; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (namespaces, mounts, sshd and iptables need it)"; }

need_tools() {
	local missing=()
	for t in unshare nsenter runuser /usr/sbin/sshd ssh-keygen ssh iptables; do
		command -v "$t" >/dev/null 2>&1 || missing+=("$t")
	done
	for t in "$PG_BIN/initdb" "$PG_BIN/psql" "$PGPOOL_BIN/pgpool" "$PGPOOL_BIN/pg_md5" "$PGPOOL_BIN/pcp_node_info"; do
		[ -x "$t" ] || missing+=("$t")
	done
	[ ${#missing[@]} = 0 ] || die "missing: ${missing[*]} (install: apt-get install postgresql-15 pgpool2 openssh-server iptables; or run lab/setup.sh)"
}

# --- state -----------------------------------------------------------------

lab_dir() { echo "$LAB_ROOT/$1"; }

load_env() {
	local d
	d=$(lab_dir "$1")
	[ -f "$d/lab.env" ] || die "no lab named '$1' (no $d/lab.env)"
	# shellcheck disable=SC1091
	. "$d/lab.env"
	PGPOOL_BIN=${PGPOOL_BIN:-/usr/sbin}
}

host_pid() { cat "$LAB_DIR/hosts/$1/sshd.pid" 2>/dev/null || true; }
host_ns() { cat "$LAB_DIR/hosts/$1/mntns" 2>/dev/null || true; }

# Is PID a live process of HOST? Pids in files (sshd.pid, postmaster.pid)
# go stale when a host dies and soon name other processes; a namespace's
# inode number is reused once it is gone. So: same namespace, and that
# namespace has this host's home mounted.
pid_on_host() { # PID HOST
	local ns
	ns=$(host_ns "$2")
	[ -n "$1" ] && [ -n "$ns" ] && [ "$(readlink "/proc/$1/ns/mnt" 2>/dev/null)" = "$ns" ] &&
		grep -qF " $LAB_DIR/hosts/$2/home /var/lib/postgresql " "/proc/$1/mountinfo" 2>/dev/null
}

host_addr() {
	case "$1" in
	app) echo "$NET.20" ;;
	pg[0-9]) echo "$NET.$((2 + ${1#pg}))" ;;
	*) die "unknown host '$1' (app, pg0..pg$STANDBYS)" ;;
	esac
}
repl_addr() { echo "$NET.$((102 + ${1#pg}))"; }

# Pids of every process living in HOST's mount namespace. A namespace's
# inode number is reused once it is gone, so a match only counts when the
# namespace really has this host's home mounted (another lab's host may
# have the number now).
host_procs() {
	local ns p pids verified=""
	ns=$(host_ns "$1")
	[ -n "$ns" ] || return 0
	# One stat for all processes (a readlink per process is slow).
	pids=$(stat -c '%N' /proc/[0-9]*/ns/mnt 2>/dev/null | grep -F -- "-> '$ns'" |
		sed -n "s|^'/proc/\([0-9]*\)/ns/mnt'.*|\1|p" || true)
	for p in $pids; do
		if [ -z "$verified" ]; then
			pid_on_host "$p" "$1" || return 0
			verified=1
		fi
		echo "$p"
	done
	return 0
}

# --- running things on a host ------------------------------------------------

on_host() { # on_host HOST USER CMD...
	local h=$1 u=$2 pid
	shift 2
	pid=$(host_pid "$h")
	pid_on_host "$pid" "$h" || die "host $h of lab $NAME is not running"
	if [ "$u" = root ]; then
		nsenter -t "$pid" -m -- "$@"
	else
		nsenter -t "$pid" -m -- runuser -u "$u" -- env HOME=/var/lib/postgresql PATH="$PG_BIN:$PGPOOL_BIN:/usr/sbin:/usr/bin:/bin" "$@"
	fi
}

wait_for() { # wait_for SECONDS WHAT CMD...
	local secs=$1 what=$2 end
	shift 2
	end=$(($(date +%s) + secs))
	until "$@" >/dev/null 2>&1; do
		[ "$(date +%s)" -lt "$end" ] || die "timed out after ${secs}s waiting for $what"
		sleep 0.1
	done
}

# --- up ----------------------------------------------------------------------

alloc_net() {
	mkdir -p "$LAB_ROOT/nets"
	local b
	for b in $(seq 101 199); do
		if mkdir "$LAB_ROOT/nets/127.0.$b" 2>/dev/null; then
			echo "127.0.$b"
			return
		fi
	done
	die "no free address block in 127.0.101-199 (stale labs? lab.sh list / down)"
}

write_host_files() { # HOST: the host's private directories
	local h=$1 hd=$LAB_DIR/hosts/$1 a
	a=$(host_addr "$h")
	mkdir -p "$hd"/{home/.ssh,run,tmp,etc-pgha,etc-pgpool2}
	chmod 1777 "$hd/tmp"
	chmod 2775 "$hd/run"
	chmod 755 "$hd/home"
	chmod 700 "$hd/home/.ssh"
	ssh-keygen -q -t ed25519 -N '' -C "sshd-$h" -f "$hd/ssh_host_ed25519_key"
	ssh-keygen -q -t ed25519 -N '' -C "postgres@$h" -f "$hd/home/.ssh/id_ed25519"
	local listen="ListenAddress $a:22"
	[ "$h" = app ] || listen+=$'\n'"ListenAddress $(repl_addr "$h"):22"
	cat >"$hd/sshd_config" <<EOF
$listen
HostKey $hd/ssh_host_ed25519_key
PidFile none
UsePAM yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
AllowUsers postgres
AuthorizedKeysFile .ssh/authorized_keys
StrictModes yes
MaxStartups 100:30:200
MaxSessions 100
LogLevel ERROR
Subsystem sftp internal-sftp
EOF
}

write_pg_files() { # postgres-side files of host pgK
	local h=$1 hd=$LAB_DIR/hosts/$1
	# Host-specific settings live outside the data directory (pg_basebackup
	# and pg_rewind would carry them to the wrong host).
	cat >"$hd/home/host.conf" <<EOF
listen_addresses = '$(host_addr "$h"),$(repl_addr "$h")'
cluster_name = '$h'
EOF
	mkdir -p "$hd/home/archive" "$hd/home/15"
	printf '%s\n' "*:*:*:postgres:$PG_PASSWORD" "*:*:*:repl:$REPL_PASSWORD" "*:*:replication:repl:$REPL_PASSWORD" >"$hd/home/.pgpass"
}

write_app_files() {
	local hd=$LAB_DIR/hosts/app a i
	a=$(host_addr app)
	printf '%s\n' "*:*:*:postgres:$PG_PASSWORD" >"$hd/home/.pgpass"
	printf '%s\n' "*:*:pgpool:$PCP_PASSWORD" >"$hd/home/.pcppass"
	echo "pgpool:$("$PGPOOL_BIN/pg_md5" "$PCP_PASSWORD")" >"$hd/etc-pgpool2/pcp.conf"
	: >"$hd/etc-pgpool2/pool_hba.conf"
	: >"$hd/etc-pgpool2/pool_passwd"
	mkdir -p "$hd/home/pgpool"
	{
		cat <<EOF
# pgpool-II for lab $NAME (written by lab/lab.sh)
backend_clustering_mode = 'streaming_replication'
listen_addresses = '$a'
port = 9999
socket_dir = '/var/run/postgresql'
pcp_listen_addresses = '$a'
pcp_port = 9898
pcp_socket_dir = '/var/run/postgresql'
unix_socket_directories = '/var/run/postgresql'
pcp_socket_dir = '/var/run/postgresql'
wd_ipc_socket_dir = '/var/run/postgresql'
pid_file_name = '/var/run/postgresql/pgpool.pid'
logdir = '/var/lib/postgresql/pgpool'
log_destination = 'stderr'
log_line_prefix = '%m: %a pid %p: '
enable_pool_hba = off
num_init_children = 8
max_pool = 2
load_balance_mode = on
sr_check_period = 1
sr_check_user = 'pgpool'
sr_check_password = ''
health_check_period = 1
health_check_timeout = 2
health_check_user = 'pgpool'
health_check_password = ''
health_check_max_retries = 0
connect_timeout = 2000
failover_on_backend_error = on
search_primary_node_timeout = 10
failover_command = '$FAILOVER_COMMAND'
follow_primary_command = '$FOLLOW_COMMAND'
use_watchdog = off
memory_cache_enabled = off
EOF
		for i in $(seq 0 "$STANDBYS"); do
			cat <<EOF

backend_hostname$i = '$(host_addr "pg$i")'
backend_port$i = 5432
backend_weight$i = 1
backend_data_directory$i = '/var/lib/postgresql/15/main'
backend_flag$i = 'ALLOW_TO_FAILOVER'
backend_application_name$i = 'pg$i'
EOF
		done
	} >"$hd/etc-pgpool2/pgpool.conf"
	{
		cat <<EOF
# pgha for lab $NAME (written by lab/lab.sh)
pgpool_conf = "/etc/pgpool2/pgpool.conf"
state_dir = "/var/lib/postgresql/pgha"

[ssh]
user = "postgres"
connect_timeout = "2s"

[postgres]
bin_dir = "$PG_BIN"
user = "postgres"
replication_user = "repl"
archive_dir = "/var/lib/postgresql/archive"
connect_timeout = "2s"

[pcp]
user = "pgpool"

[failover]
deadline = "50s"
EOF
		for i in $(seq 0 "$STANDBYS"); do
			printf '\n[nodes.%s]\nreplication_host = "%s"\n' "$i" "$(repl_addr "pg$i")"
		done
	} >"$hd/etc-pgha/pgha.toml"
	cp "$hd/etc-pgha/pgha.toml" "$hd/home/pgha.toml"
}

start_host() { # HOST: namespace + sshd
	local h=$1 hd=$LAB_DIR/hosts/$1 pid extra=""
	[ "$h" = app ] && extra="mount --bind $hd/etc-pgpool2 /etc/pgpool2;"
	# The namespace lives as long as this sshd (and what runs under it).
	setsid unshare --mount --propagation private -- /bin/sh -c "
		mount --bind $hd/home /var/lib/postgresql &&
		mount --bind $hd/run /run/postgresql &&
		mount --bind $hd/tmp /tmp &&
		mount --bind $hd/etc-pgha /etc/pgha && $extra
		exec /usr/sbin/sshd -D -e -f $hd/sshd_config" >>"$hd/sshd.log" 2>&1 </dev/null &
	pid=$!
	echo "$pid" >"$hd/sshd.pid"
	# Wait until the mounts are in place (the ns differs and sshd listens).
	local a
	a=$(host_addr "$h")
	wait_for 10 "sshd of $h on $a:22" bash -c "exec 3<>/dev/tcp/$a/22"
	readlink "/proc/$pid/ns/mnt" >"$hd/mntns"
	[ "$(cat "$hd/mntns")" != "$(readlink /proc/self/ns/mnt)" ] || die "host $h did not get its own mount namespace"
}

pg_ctl_start() { # HOST
	on_host "$1" postgres pg_ctl -D /var/lib/postgresql/15/main -l /var/lib/postgresql/15/pgha-postgresql.log -w -t 30 start >/dev/null
}

start_pgpool() {
	local hd=$LAB_DIR/hosts/app pid
	pid=$(head -1 "$hd/run/pgpool.pid" 2>/dev/null || true)
	if pid_on_host "$pid" app; then
		kill -TERM "$pid" 2>/dev/null || true
		wait_for 20 "old pgpool to exit" bash -c "! kill -0 $pid"
	fi
	on_host app postgres setsid pgpool -n -D -f /etc/pgpool2/pgpool.conf -F /etc/pgpool2/pcp.conf \
		-a /etc/pgpool2/pool_hba.conf >>"$hd/home/pgpool.log" 2>&1 </dev/null &
	wait_for 30 "pgpool on $(host_addr app):9999" on_host app postgres \
		psql -h "$(host_addr app)" -p 9999 -U app -d app -Atc 'select 1'
	# The PCP port is a separate child of pgpool's, listening a moment
	# after the client port: a lab is up when both accept.
	wait_for 30 "pgpool's PCP on $(host_addr app):9898" on_host app postgres \
		bash -c "exec 3<>/dev/tcp/$(host_addr app)/9898"
}

cmd_up() {
	need_root
	NAME="" NET="" STANDBYS=2 PGHA_BIN=$REPO/target/debug
	PG_BIN=${PGHA_PG_BIN:-/usr/lib/postgresql/15/bin} PGPOOL_BIN=${PGHA_PGPOOL_BIN:-/usr/sbin}
	FAILOVER_COMMAND="" FOLLOW_COMMAND="" SYNC=0 PGPOOL=1 RESTORE=${PGHA_LAB_RESTORE:-scp}
	while [ $# -gt 0 ]; do
		case "$1" in
		--name) NAME=$2; shift 2 ;;
		--net) NET=$2; shift 2 ;;
		--standbys) STANDBYS=$2; shift 2 ;;
		--pg-bin) PG_BIN=$2; shift 2 ;;
		--pgpool-bin) PGPOOL_BIN=$2; shift 2 ;;
		--pgha-bin) PGHA_BIN=$2; shift 2 ;;
		--failover-command) FAILOVER_COMMAND=$2; shift 2 ;;
		--follow-command) FOLLOW_COMMAND=$2; shift 2 ;;
		--sync) SYNC=1; shift ;;
		--restore) RESTORE=$2; shift 2 ;;
		--no-pgpool) PGPOOL=0; shift ;;
		*) die "up: unknown option '$1' (see lab.sh help)" ;;
		esac
	done
	[[ "$STANDBYS" =~ ^[1-4]$ ]] || die "--standbys must be 1..4, not '$STANDBYS'"
	case "$RESTORE" in scp | local) ;; *) die "--restore must be scp or local, not '$RESTORE'" ;; esac
	need_tools
	[ "$PGHA_BIN" = system ] && PGHA_BIN=/usr/bin
	if [ -n "$NET" ]; then
		[[ "$NET" =~ ^127\.[0-9]+\.[0-9]+$ ]] || die "--net must be 127.A.B (loopback only), not '$NET'"
		mkdir -p "$LAB_ROOT/nets"
		mkdir "$LAB_ROOT/nets/$NET" 2>/dev/null || die "address block $NET is taken by another lab"
	else
		NET=$(alloc_net)
	fi
	[ -n "$NAME" ] || NAME="lab${NET##*.}"
	[[ "$NAME" =~ ^[A-Za-z0-9_-]+$ ]] || die "--name may hold letters, digits, - and _ only"
	LAB_DIR=$(lab_dir "$NAME")
	if [ -e "$LAB_DIR" ]; then
		rmdir "$LAB_ROOT/nets/$NET"
		die "lab '$NAME' exists already ($LAB_DIR): lab.sh down $NAME"
	fi
	mkdir -p "$LAB_DIR/bin" "$LAB_DIR/hosts"
	echo "$NAME" >"$LAB_ROOT/nets/$NET/name"
	# Any failure from here on tears the half-built lab down again.
	trap 'rc=$?; if [ $rc != 0 ]; then log "up failed; tearing lab $NAME down (set PGHA_LAB_KEEP=1 to keep it)"; [ -n "${PGHA_LAB_KEEP:-}" ] || cmd_down "$NAME" >/dev/null 2>&1 || true; fi' EXIT
	# Binaries the hosts run: copied, so that a checkout postgres cannot read
	# (or one under /tmp, which is private per host) does not matter.
	if [ -x "$PGHA_BIN/pgha-failover" ]; then
		cp "$PGHA_BIN"/pgha-* "$LAB_DIR/bin/" 2>/dev/null || true
	fi
	# Baseline scripts of the benchmark (benches/*.sh), for the same reason.
	cp "$REPO"/benches/*.sh "$LAB_DIR/bin/" 2>/dev/null || true
	chmod -R a+rX "$LAB_DIR/bin"
	chmod 755 "$LAB_ROOT" "$LAB_DIR"
	[ -n "$FAILOVER_COMMAND" ] || FAILOVER_COMMAND="@BIN@/pgha-failover %d %M %m --old-primary %P"
	# @BIN@ in a command stands for the lab's copy of the binaries.
	FAILOVER_COMMAND=${FAILOVER_COMMAND//@BIN@/$LAB_DIR/bin}
	FOLLOW_COMMAND=${FOLLOW_COMMAND//@BIN@/$LAB_DIR/bin}
	PG_PASSWORD=pg-$RANDOM$RANDOM REPL_PASSWORD=repl-$RANDOM$RANDOM PCP_PASSWORD=pcp-$RANDOM$RANDOM
	HOSTS="app"
	for i in $(seq 0 "$STANDBYS"); do HOSTS+=" pg$i"; done
	cat >"$LAB_DIR/lab.env" <<EOF
NAME='$NAME'
NET='$NET'
STANDBYS='$STANDBYS'
RESTORE='$RESTORE'
HOSTS='$HOSTS'
PG_BIN='$PG_BIN'
PGPOOL_BIN='$PGPOOL_BIN'
LAB_DIR='$LAB_DIR'
PG_PASSWORD='$PG_PASSWORD'
REPL_PASSWORD='$REPL_PASSWORD'
PCP_PASSWORD='$PCP_PASSWORD'
APP_ADDR='$NET.20'
PGPOOL_PORT=9999
PCP_PORT=9898
EOF
	mkdir -p /run/sshd /etc/pgha /etc/pgpool2
	local h i known=""
	for h in $HOSTS; do write_host_files "$h"; done
	# Key-only ssh between every pair of hosts, host keys known in advance.
	for h in $HOSTS; do
		known+="$(host_addr "$h")"
		[ "$h" = app ] || known+=",$(repl_addr "$h")"
		known+=" $(cut -d' ' -f1,2 "$LAB_DIR/hosts/$h/ssh_host_ed25519_key.pub")"$'\n'
	done
	for h in $HOSTS; do
		local hd=$LAB_DIR/hosts/$h
		printf '%s' "$known" >"$hd/home/.ssh/known_hosts"
		cat "$LAB_DIR"/hosts/*/home/.ssh/id_ed25519.pub >"$hd/home/.ssh/authorized_keys"
		[ "$h" = app ] && write_app_files || write_pg_files "$h"
		chown -R postgres:postgres "$hd/home" "$hd/run" "$hd/etc-pgha" "$hd/etc-pgpool2"
		chmod 600 "$hd/home/.pgpass" "$hd/home/.ssh/authorized_keys"
		[ "$h" != app ] || chmod 600 "$hd/home/.pcppass"
	done
	for h in $HOSTS; do start_host "$h"; done
	echo "HOST_PIDS='$(for h in $HOSTS; do printf '%s=%s ' "$h" "$(host_pid "$h")"; done)'" >>"$LAB_DIR/lab.env"
	log "$NAME: hosts up ($HOSTS) on $NET.x"

	# The primary.
	local pd=/var/lib/postgresql/15/main
	on_host pg0 postgres initdb -D "$pd" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
		--data-checksums >/dev/null
	# Standbys get the primary's postgresql.conf from pg_basebackup.
	local restore retry
	if [ "$RESTORE" = scp ]; then
		restore="scp -q -o BatchMode=yes -o ConnectTimeout=3 $(repl_addr pg0):/var/lib/postgresql/archive/%f %p || exit 1"
		retry="#wal_retrieve_retry_interval = 5s (PostgreSQL's default)"
	else
		restore="cp /var/lib/postgresql/archive/%f %p"
		retry="wal_retrieve_retry_interval = 1s"
	fi
	local sync_names=""
	if [ "$SYNC" = 1 ]; then
		sync_names="ANY 1 ($(for i in $(seq 0 "$STANDBYS"); do printf 'pg%s,' "$i"; done | sed 's/,$//'))"
	fi
	on_host pg0 postgres sh -c "cat >>$pd/postgresql.conf" <<EOF

# --- pgha lab ---
include_if_exists = '/var/lib/postgresql/host.conf'
port = 5432
wal_level = replica
hot_standby = on
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 256MB
wal_log_hints = on
archive_mode = on
archive_command = 'test ! -f /var/lib/postgresql/archive/%f && cp %p /var/lib/postgresql/archive/%f'
restore_command = '$restore'
recovery_target_timeline = 'latest'
synchronous_standby_names = '$sync_names'
shared_buffers = 16MB
max_connections = 50
fsync = off
log_line_prefix = '%m [%p] %q%u@%d '
wal_receiver_status_interval = 1s
$retry
EOF
	on_host pg0 postgres sh -c "cat >$pd/pg_hba.conf" <<'EOF'
local   all          all                    peer
local   replication  all                    peer
host    replication  repl     127.0.0.0/8   scram-sha-256
host    all          postgres 127.0.0.0/8   scram-sha-256
host    all          pgpool   127.0.0.0/8   trust
host    all          app      127.0.0.0/8   trust
EOF
	pg_ctl_start pg0
	# synchronous_commit = local: with --sync, no standby exists yet to confirm.
	on_host pg0 postgres timeout 60 psql -q -d postgres -v ON_ERROR_STOP=1 <<EOF
SET synchronous_commit = local;
ALTER ROLE postgres PASSWORD '$PG_PASSWORD';
CREATE ROLE repl LOGIN REPLICATION PASSWORD '$REPL_PASSWORD';
CREATE ROLE pgpool LOGIN;
GRANT pg_monitor TO pgpool;
CREATE ROLE app LOGIN;
CREATE DATABASE app OWNER app;
EOF
	# The standbys, in parallel.
	for i in $(seq 1 "$STANDBYS"); do
		(
			on_host "pg$i" postgres timeout 120 pg_basebackup -h "$(repl_addr pg0)" -U repl -D "$pd" -R -X stream -c fast -w
			pg_ctl_start "pg$i"
		) &
	done
	local rc=0
	for i in $(seq 1 "$STANDBYS"); do wait -n || rc=$?; done
	[ "$rc" = 0 ] || die "a standby failed to start (logs under $LAB_DIR/hosts/pg*/home/15/)"
	wait_for 30 "$STANDBYS standbys streaming from pg0" on_host pg0 postgres sh -c \
		"[ \$(psql -Atc \"select count(*) from pg_stat_replication where state = 'streaming'\") = $STANDBYS ]"
	log "$NAME: pg0 primary, $STANDBYS standbys streaming"
	if [ "$PGPOOL" = 1 ]; then
		start_pgpool
		log "$NAME: pgpool up on $NET.20:9999 (pcp :9898)"
	fi
	trap - EXIT
	echo "$LAB_DIR"
}

# --- down ----------------------------------------------------------------------

cmd_down() {
	need_root
	local name=$1
	LAB_DIR=$(lab_dir "$name")
	[ -d "$LAB_DIR" ] || { log "no lab '$name'"; return 0; }
	if [ -f "$LAB_DIR/lab.env" ]; then
		# shellcheck disable=SC1091
		. "$LAB_DIR/lab.env"
	fi
	local h p procs
	# pgpool first, by a fast shutdown (SIGINT): killed, it leaves its
	# shared memory segment (~130 MB) behind, and labs add up.
	p=$(tr -d '\0' <"$LAB_DIR/hosts/app/run/pgpool.pid" 2>/dev/null | head -1 || true)
	if pid_on_host "$p" app; then
		kill -INT "$p" 2>/dev/null || true
		local end=$(($(date +%s) + 5))
		while kill -0 "$p" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 0.05; done
	fi
	# Stop servers quickly (immediate: this is a throwaway lab), then kill
	# whatever is left in each host's namespace, by pid.
	for h in $LAB_DIR/hosts/pg*; do
		[ -d "$h" ] || continue
		p=$(head -1 "$h/home/15/main/postmaster.pid" 2>/dev/null || true)
		pid_on_host "$p" "$(basename "$h")" && kill -QUIT "$p" 2>/dev/null || true
	done
	for h in "$LAB_DIR"/hosts/*; do
		[ -d "$h" ] || continue
		procs=$(host_procs "$(basename "$h")")
		# sshd is among procs while it lives; by pid only when up failed
		# before the namespace was recorded (the pid is fresh then).
		[ -f "$h/mntns" ] || procs=$(cat "$h/sshd.pid" 2>/dev/null || true)
		# shellcheck disable=SC2086
		[ -z "$procs" ] || kill -KILL $procs 2>/dev/null || true
	done
	# Wait for them to be gone (the namespaces, and their mounts, go with them).
	local end=$(($(date +%s) + 10)) left
	while :; do
		left=""
		for h in "$LAB_DIR"/hosts/*; do
			[ -d "$h" ] || continue
			left+=$(host_procs "$(basename "$h")")
		done
		[ -z "$left" ] && break
		[ "$(date +%s)" -lt "$end" ] || { log "processes still alive: $left"; break; }
		# shellcheck disable=SC2086
		kill -KILL $left 2>/dev/null || true
		sleep 0.1
	done
	# iptables rules this lab added.
	local rule
	{ iptables -S INPUT 2>/dev/null || true; } | { grep -F -- "--comment \"pgha-lab:$name\" " || true; } |
		sed 's/^-A /-D /' | while read -r rule; do eval "iptables $rule" || true; done
	[ -n "${NET:-}" ] && rm -rf "${LAB_ROOT:?}/nets/$NET"
	rm -rf "$LAB_DIR"
	log "$name: down"
}

# --- faults ----------------------------------------------------------------------

cmd_kill() {
	local procs
	procs=$(host_procs "$1")
	# shellcheck disable=SC2086
	[ -z "$procs" ] || kill -KILL $procs 2>/dev/null || true
	log "$NAME: host $1 killed"
}

cmd_blackhole() {
	[[ "$1" =~ ^127\. ]] || die "only loopback addresses"
	iptables -I INPUT -d "$1" -m comment --comment "pgha-lab:$NAME" -j DROP
	log "$NAME: packets to $1 are dropped"
}

cmd_unblackhole() {
	iptables -D INPUT -d "$1" -m comment --comment "pgha-lab:$NAME" -j DROP
}

main() {
	local cmd=${1:-help}
	shift || true
	case "$cmd" in
	up) cmd_up "$@" ;;
	down) [ $# = 1 ] || die "usage: lab.sh down NAME"; cmd_down "$1" ;;
	exec)
		[ $# -ge 3 ] || die "usage: lab.sh exec NAME HOST [--root] -- CMD..."
		load_env "$1"
		local h=$2 u=postgres
		shift 2
		[ "${1:-}" = --root ] && { u=root; shift; }
		[ "${1:-}" = -- ] && shift
		host_addr "$h" >/dev/null
		on_host "$h" "$u" "$@"
		;;
	kill) load_env "$1"; host_addr "$2" >/dev/null; cmd_kill "$2" ;;
	blackhole) load_env "$1"; cmd_blackhole "$2" ;;
	unblackhole) load_env "$1"; cmd_unblackhole "$2" ;;
	start-pg) load_env "$1"; pg_ctl_start "$2" ;;
	start-pgpool) load_env "$1"; start_pgpool ;;
	list) ls "$LAB_ROOT" 2>/dev/null | grep -v '^nets$' || true ;;
	help | -h | --help) usage ;;
	*) usage >&2; exit 2 ;;
	esac
}

main "$@"
