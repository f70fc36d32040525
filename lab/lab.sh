#!/usr/bin/env bash
# pgha lab: several "hosts" on one machine, each with its own 127.0.0.0/8
# address, its own mount namespace (private /var/lib/postgresql,
# /var/run/postgresql, /tmp, /etc/pgha, /etc/pgpool2) and its own sshd.
#
#   pg0 = NET.2 (primary)   pgK = NET.(2+K) (standbys)   app = NET.20 (pgpool)
#   each pgK also has a replication address NET.(102+K): the standbys stream
#   from it, so pgpool can be cut off from a node while replication goes on.
#   --pgpools 3 adds app1 = NET.21 and app2 = NET.22, each running its own
#   pgpool; the three form one pgpool-II watchdog cluster (quorum 2 of 3).
#   Each host's processes also share a cgroup (v2), pgha-lab/NAME/HOST, so
#   that iptables can tell which host a packet comes from on the shared
#   loopback (`lab.sh cut`).
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
     --wal-keep-size SIZE    wal_keep_size on every node (default 256MB, as pgpool's
                             examples set it; 0 is PostgreSQL's default: a standby that
                             falls behind restores from the archive)
     --restore scp|local     how standbys fetch archived WAL (default $PGHA_LAB_RESTORE, else
                             scp): scp from the primary's archive over ssh, as pgpool's
                             follow_primary.sh.sample writes it, with PostgreSQL's default
                             wal_retrieve_retry_interval (5s); local: cp from the host's own
                             archive, wal_retrieve_retry_interval = 1s (the old lab)
     --pgpools 1|3           pgpool hosts (default 1: app). 3: app, app1 (NET.21) and
                             app2 (NET.22), one pgpool-II watchdog cluster (heartbeat
                             lifecheck, quorum and consensus on, no virtual IP); up returns
                             once every member sees the same leader with quorum
     --no-pgpool             do not start pgpool
     --fence                 run pgha-check --fence on every node (pgha-fence.service)
  down NAME                  stop everything of lab NAME and remove it
  exec NAME HOST [--root] -- CMD...
                             run CMD on HOST (app, app1, app2, pg0, pg1, ...) as postgres
                             (or root), inside that host's mount namespace
  kill NAME HOST             kill every process of HOST (a dead host)
  pause NAME HOST            SIGSTOP every process of HOST (a frozen host: a VM paused,
                             a stalled hypervisor); resume NAME HOST sends SIGCONT
  blackhole NAME ADDR        silently drop every packet to ADDR (iptables DROP)
  unblackhole NAME ADDR      remove that rule
  syn-loss NAME ADDR EVERY   a lossy link to ADDR: of the TCP SYNs (new connections) sent to
                             it, only every EVERY-th gets through (iptables statistic nth,
                             deterministic); established connections are untouched.
                             syn-loss NAME ADDR off removes it
  cut NAME HOST PEER...      a network cut between HOST and each PEER: every packet
                             between them is dropped, both ways, on all their addresses
                             (iptables, by sender cgroup and destination); HOST still
                             reaches every other host. heal NAME HOST PEER... undoes it
  fill-archive NAME HOST     HOST's archive directory (/var/lib/postgresql/archive) is full:
                             what is there stays readable, and writing a new file fails
                             with ENOSPC (an overlay whose upper layer is a 1 MiB tmpfs
                             filled by .pgha-full, in the host's namespace).
                             unfill-archive NAME HOST frees it again, keeping every
                             complete file written meanwhile. A killed host loses the
                             overlay with its namespace.
  start-pg NAME HOST         start PostgreSQL on HOST (pg_ctl start)
  restart-host NAME HOST     boot a killed host again: its namespace and sshd, then its
                             PostgreSQL as its unit would, after the start guard
                             (pgha-check --start-guard): an old primary that another
                             node replaced stays down until pgha-attach --rejoin
                             makes it a standby; or its pgpool
  start-pgpool NAME [HOST]   (re)start pgpool on HOST (default app; app1, app2 with
                             --pgpools 3) and wait until it accepts (and has joined the
                             watchdog cluster)
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
	PGPOOL_BIN=${PGPOOL_BIN:-/usr/sbin} PGPOOLS=${PGPOOLS:-1} FENCE=${FENCE:-0}
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
	app[1-9]) [ "${1#app}" -lt "$PGPOOLS" ] || die "unknown host '$1' (lab $NAME has $PGPOOLS pgpool host(s): $(pgpool_hosts))"
		echo "$NET.$((20 + ${1#app}))" ;;
	pg[0-9]) echo "$NET.$((2 + ${1#pg}))" ;;
	*) die "unknown host '$1' ($(pgpool_hosts), pg0..pg$STANDBYS)" ;;
	esac
}

# The pgpool hosts: app, then app1, app2 with --pgpools 3. Member M of the
# watchdog cluster (pgpool_node_id M) is app for 0, appM otherwise.
pgpool_hosts() {
	local m out=app
	for m in $(seq 1 $((PGPOOLS - 1))); do out+=" app$m"; done
	echo "$out"
}
is_pgpool_host() { case "$1" in app | app[1-9]) return 0 ;; *) return 1 ;; esac; }
member_id() { [ "$1" = app ] && echo 0 || echo "${1#app}"; }

# pgpool-II 4.3 binds wd_port (TCP) and heartbeat_port (UDP) on every
# address, so each member, and each lab (own block 127.0.B), gets its own
# ports: 20000 + 4*B + M and 22000 + 4*B + M, B = 0..255, M = 0..2. They stay
# under the ephemeral range (32768-) and away from 22, 5432, 9898 and 9999.
wd_port() { echo $((20000 + 4 * ${NET##*.} + $1)); }
hb_port() { echo $((22000 + 4 * ${NET##*.} + $1)); }
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
	# A process that ended since the stat (a psql or ssh run there a moment
	# ago) fails the check: try the next one. Failing the whole list there
	# made a kill or a pause do nothing now and then.
	for p in $pids; do
		if [ -z "$verified" ]; then
			pid_on_host "$p" "$1" || continue
			verified=1
		fi
		echo "$p"
	done
	return 0
}

# Every host shares loopback, and a packet's source address is 127.0.0.1
# whatever host sent it; its sender's cgroup tells the hosts apart.
cg_root() { awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts; }
cg_rel() { echo "pgha-lab/$NAME/$1"; }

join_cg() { # HOST PID: PID, and whatever it starts from now on, runs in HOST's cgroup
	local root d
	root=$(cg_root)
	[ -n "$root" ] || return 0
	d=$root/$(cg_rel "$1")
	mkdir -p "$d" && echo "$2" >"$d/cgroup.procs" || die "cannot put pid $2 into cgroup $d"
}

# --- running things on a host ------------------------------------------------

on_host() { # on_host HOST USER CMD...
	local h=$1 u=$2 pid
	shift 2
	pid=$(host_pid "$h")
	pid_on_host "$pid" "$h" || die "host $h of lab $NAME is not running"
	(
		join_cg "$h" "$BASHPID"
		if [ "$u" = root ]; then
			exec nsenter -t "$pid" -m -- "$@"
		else
			exec nsenter -t "$pid" -m -- runuser -u "$u" -- env HOME=/var/lib/postgresql PATH="$PG_BIN:$PGPOOL_BIN:/usr/sbin:/usr/bin:/bin" "$@"
		fi
	)
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
	is_pgpool_host "$h" || listen+=$'\n'"ListenAddress $(repl_addr "$h"):22"
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
	# What the start guard (pgha-check --start-guard) reads on a node: the
	# same pgha.toml, with a copy of pgpool.conf for the backends.
	write_pgha_toml | sed 's|^pgpool_conf = .*|pgpool_conf = "/etc/pgha/pgpool.conf"|' >"$hd/etc-pgha/pgha.toml"
	write_pgpool_conf app >"$hd/etc-pgha/pgpool.conf"
}

write_app_files() { # HOST: a pgpool host's files (pgpool.conf, PCP, pgha.toml)
	local h=$1 hd=$LAB_DIR/hosts/$1
	printf '%s\n' "*:*:*:postgres:$PG_PASSWORD" >"$hd/home/.pgpass"
	printf '%s\n' "*:*:pgpool:$PCP_PASSWORD" >"$hd/home/.pcppass"
	echo "pgpool:$("$PGPOOL_BIN/pg_md5" "$PCP_PASSWORD")" >"$hd/etc-pgpool2/pcp.conf"
	: >"$hd/etc-pgpool2/pool_hba.conf"
	: >"$hd/etc-pgpool2/pool_passwd"
	mkdir -p "$hd/home/pgpool"
	write_pgpool_conf "$h" >"$hd/etc-pgpool2/pgpool.conf"
	if [ "$PGPOOLS" -gt 1 ]; then
		write_watchdog_conf "$h" >>"$hd/etc-pgpool2/pgpool.conf"
		# pgpool-II >= 4.2 reads its member id from this file next to pgpool.conf.
		member_id "$h" >"$hd/etc-pgpool2/pgpool_node_id"
		# pgpool.conf holds wd_authkey now.
		chmod 600 "$hd/etc-pgpool2/pgpool.conf"
	fi
	write_pgha_toml >"$hd/etc-pgha/pgha.toml"
	cp "$hd/etc-pgha/pgha.toml" "$hd/home/pgha.toml"
}

write_pgpool_conf() { # HOST
	local a i
	a=$(host_addr "$1")
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
EOF
	[ "$PGPOOLS" -gt 1 ] || echo "use_watchdog = off"
	echo "memory_cache_enabled = off"
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
}

# The watchdog section of a member's pgpool.conf: the same member list on
# every host (hostnameM = that member's address), its own ports per member.
# wd_authkey: a per-lab secret, so a packet from another lab's pgpool (all
# labs share the loopback, and 4.3 listens on every address) fails
# authentication instead of joining or voting; real clusters set one too.
write_watchdog_conf() { # HOST
	local m h
	cat <<EOF

# --- watchdog: $PGPOOLS pgpool hosts ($(pgpool_hosts)), this is $1 ---
use_watchdog = on
wd_authkey = '$WD_AUTHKEY'
delegate_ip = ''
wd_lifecheck_method = 'heartbeat'
wd_interval = 1
wd_heartbeat_keepalive = 1
wd_heartbeat_deadtime = 3
wd_priority = 1
failover_when_quorum_exists = on
failover_require_consensus = on
allow_multiple_failover_requests_from_node = off
enable_consensus_with_half_votes = off
EOF
	for m in $(seq 0 $((PGPOOLS - 1))); do
		h=app
		[ "$m" = 0 ] || h=app$m
		cat <<EOF

hostname$m = '$(host_addr "$h")'
pgpool_port$m = 9999
wd_port$m = $(wd_port "$m")
heartbeat_hostname$m = '$(host_addr "$h")'
heartbeat_port$m = $(hb_port "$m")
heartbeat_device$m = ''
EOF
	done
}

write_pgha_toml() {
	local i
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
}

start_host() { # HOST: namespace + sshd
	local h=$1 hd=$LAB_DIR/hosts/$1 pid extra=""
	is_pgpool_host "$h" && extra="mount --bind $hd/etc-pgpool2 /etc/pgpool2;"
	# The namespace lives as long as this sshd (and what runs under it).
	setsid unshare --mount --propagation private -- /bin/sh -c "
		mount --bind $hd/home /var/lib/postgresql &&
		mount --bind $hd/run /run/postgresql &&
		mount --bind $hd/tmp /tmp &&
		mount --bind $hd/etc-pgha /etc/pgha && $extra
		exec /usr/sbin/sshd -D -e -f $hd/sshd_config" >>"$hd/sshd.log" 2>&1 </dev/null &
	pid=$!
	join_cg "$h" "$pid"
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

launch_pgpool() { # HOST: stop its pgpool if one runs, start a new one in the background
	local h=$1 hd=$LAB_DIR/hosts/$1 pid
	pid=$(tr -d '\0' 2>/dev/null <"$hd/run/pgpool.pid" | head -1 || true)
	if pid_on_host "$pid" "$h"; then
		kill -TERM "$pid" 2>/dev/null || true
		wait_for 20 "old pgpool of $h to exit" bash -c "! kill -0 $pid"
	fi
	on_host "$h" postgres setsid pgpool -n -D -f /etc/pgpool2/pgpool.conf -F /etc/pgpool2/pcp.conf \
		-a /etc/pgpool2/pool_hba.conf >>"$hd/home/pgpool.log" 2>&1 </dev/null &
}

wait_pgpool() { # HOST: its client port and its PCP port accept
	local h=$1 a
	a=$(host_addr "$h")
	wait_for 30 "pgpool of $h on $a:9999" on_host "$h" postgres \
		psql -h "$a" -p 9999 -U app -d app -Atc 'select 1'
	# The PCP port is a separate child of pgpool's, listening a moment
	# after the client port: a lab is up when both accept.
	wait_for 30 "pgpool's PCP of $h on $a:9898" on_host "$h" postgres \
		bash -c "exec 3<>/dev/tcp/$a/9898"
}

# The watchdog cluster as member HOST sees it (pcp_watchdog_info -v, whose
# first node is the member itself): LEADER_HOST|QUORUM|OWN_STATE|ALIVE_REMOTES.
wd_view() { # HOST
	local a
	a=$(host_addr "$1")
	on_host "$1" postgres timeout 5 pcp_watchdog_info -h "$a" -p 9898 -U pgpool -w -v |
		awk -F' *: *' '/^Leader Host Name/ { l = $2 } /^Quorum state/ { q = $2 }
			/^Alive Remote Nodes/ { n = $2 } /^Status Name/ && s == "" { s = $2 }
			END { print l "|" q "|" s "|" n }'
}

# A member has joined: it sees a leader and a quorum, and is leader or
# standby itself.
wd_ok() { [[ "$1" =~ ^[^|]+\|QUORUM\ EXIST\|(LEADER|STANDBY)\| ]]; }
wd_joined() { # HOST
	local v
	v=$(wd_view "$1") || return 1
	wd_ok "$v"
}

# The cluster has formed: every member joined, sees all the others alive,
# and all name the same leader.
wd_formed() {
	local h v leaders=""
	for h in $(pgpool_hosts); do
		v=$(wd_view "$h") || return 1
		wd_ok "$v" || return 1
		[ "${v##*|}" = $((PGPOOLS - 1)) ] || return 1
		leaders+="${v%%|*}"$'\n'
	done
	[ "$(printf '%s' "$leaders" | sort -u | wc -l)" = 1 ]
}

start_pgpool() { # [HOST]: (re)start one host's pgpool (start-pgpool)
	local h=${1:-app}
	is_pgpool_host "$h" || die "start-pgpool: '$h' is not a pgpool host ($(pgpool_hosts))"
	host_addr "$h" >/dev/null
	launch_pgpool "$h"
	wait_pgpool "$h"
	[ "$PGPOOLS" = 1 ] || wait_for 60 "pgpool of $h to join the watchdog cluster" wd_joined "$h"
}

start_pgpools() { # every pgpool host at once; with a watchdog, until it has formed
	local h
	[ "$PGPOOLS" = 1 ] || ports_free
	for h in $(pgpool_hosts); do launch_pgpool "$h"; done
	for h in $(pgpool_hosts); do wait_pgpool "$h"; done
	[ "$PGPOOLS" = 1 ] ||
		wait_for 60 "the watchdog cluster ($(pgpool_hosts)) to agree on one leader with quorum" wd_formed
}

# The watchdog's ports are bound on every address (4.3): fail early and
# clearly when something else holds one.
ports_free() {
	local m p used
	used=$(ss -Hlntu 2>/dev/null | awk '{ sub(/.*:/, "", $5); print $5 }')
	for m in $(seq 0 $((PGPOOLS - 1))); do
		for p in "$(wd_port "$m")" "$(hb_port "$m")"; do
			! grep -qx "$p" <<<"$used" || die "port $p (watchdog of member $m) is in use already: ss -lntup"
		done
	done
}

cmd_up() {
	need_root
	NAME="" NET="" STANDBYS=2 PGHA_BIN=$REPO/target/debug
	PG_BIN=${PGHA_PG_BIN:-/usr/lib/postgresql/15/bin} PGPOOL_BIN=${PGHA_PGPOOL_BIN:-/usr/sbin}
	FAILOVER_COMMAND="" FOLLOW_COMMAND="" SYNC=0 PGPOOL=1 PGPOOLS=1 FENCE=0 RESTORE=${PGHA_LAB_RESTORE:-scp}
	WAL_KEEP_SIZE=256MB
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
		--wal-keep-size) WAL_KEEP_SIZE=$2; shift 2 ;;
		--restore) RESTORE=$2; shift 2 ;;
		--pgpools) PGPOOLS=$2; shift 2 ;;
		--no-pgpool) PGPOOL=0; shift ;;
		--fence) FENCE=1; shift ;;
		*) die "up: unknown option '$1' (see lab.sh help)" ;;
		esac
	done
	[[ "$STANDBYS" =~ ^[1-4]$ ]] || die "--standbys must be 1..4, not '$STANDBYS'"
	[[ "$PGPOOLS" =~ ^[13]$ ]] || die "--pgpools must be 1 or 3 (an odd watchdog cluster), not '$PGPOOLS'"
	case "$RESTORE" in scp | local) ;; *) die "--restore must be scp or local, not '$RESTORE'" ;; esac
	[[ "$WAL_KEEP_SIZE" =~ ^[0-9]+(kB|MB|GB)?$ ]] || die "--wal-keep-size must be a size such as 0 or 256MB, not '$WAL_KEEP_SIZE'"
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
	WD_AUTHKEY=wd-$RANDOM$RANDOM
	HOSTS=$(pgpool_hosts)
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
PGPOOLS='$PGPOOLS'
FENCE='$FENCE'
PGPOOL_HOSTS='$(pgpool_hosts)'
WD_PORTS='$(for m in $(seq 0 $((PGPOOLS - 1))); do printf '%s ' "$(wd_port "$m")"; done)'
HEARTBEAT_PORTS='$(for m in $(seq 0 $((PGPOOLS - 1))); do printf '%s ' "$(hb_port "$m")"; done)'
EOF
	mkdir -p /run/sshd /etc/pgha /etc/pgpool2
	local h i known=""
	for h in $HOSTS; do write_host_files "$h"; done
	# Key-only ssh between every pair of hosts, host keys known in advance.
	for h in $HOSTS; do
		known+="$(host_addr "$h")"
		is_pgpool_host "$h" || known+=",$(repl_addr "$h")"
		known+=" $(cut -d' ' -f1,2 "$LAB_DIR/hosts/$h/ssh_host_ed25519_key.pub")"$'\n'
	done
	for h in $HOSTS; do
		local hd=$LAB_DIR/hosts/$h
		printf '%s' "$known" >"$hd/home/.ssh/known_hosts"
		cat "$LAB_DIR"/hosts/*/home/.ssh/id_ed25519.pub >"$hd/home/.ssh/authorized_keys"
		if is_pgpool_host "$h"; then write_app_files "$h"; else write_pg_files "$h"; fi
		chown -R postgres:postgres "$hd/home" "$hd/run" "$hd/etc-pgha" "$hd/etc-pgpool2"
		chmod 600 "$hd/home/.pgpass" "$hd/home/.ssh/authorized_keys"
		! is_pgpool_host "$h" || chmod 600 "$hd/home/.pcppass"
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
wal_keep_size = $WAL_KEEP_SIZE
wal_log_hints = on
archive_mode = on
archive_command = 'test ! -f /var/lib/postgresql/archive/%f && cp %p /var/lib/postgresql/archive/%f.tmp && mv /var/lib/postgresql/archive/%f.tmp /var/lib/postgresql/archive/%f || cmp -s %p /var/lib/postgresql/archive/%f'
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
	# The standbys, in parallel; one after the other with wal_keep_size = 0:
	# pg_basebackup's stream takes its temporary slot only after the backup
	# started, and the fast checkpoint of a clone running beside it may
	# remove the segment it starts at ("requested WAL segment ... has
	# already been removed").
	local parallel=1
	[[ "$WAL_KEEP_SIZE" =~ ^0+(kB|MB|GB)?$ ]] && parallel=0
	local rc=0
	for i in $(seq 1 "$STANDBYS"); do
		(
			on_host "pg$i" postgres timeout 120 pg_basebackup -h "$(repl_addr pg0)" -U repl -D "$pd" -R -X stream -c fast -w
			pg_ctl_start "pg$i"
		) &
		if [ "$parallel" = 0 ]; then wait $! || rc=$?; fi
	done
	if [ "$parallel" = 1 ]; then
		for i in $(seq 1 "$STANDBYS"); do wait -n || rc=$?; done
	fi
	[ "$rc" = 0 ] || die "a standby failed to start (logs under $LAB_DIR/hosts/pg*/home/15/)"
	wait_for 30 "$STANDBYS standbys streaming from pg0" on_host pg0 postgres sh -c \
		"[ \$(psql -Atc \"select count(*) from pg_stat_replication where state = 'streaming'\") = $STANDBYS ]"
	log "$NAME: pg0 primary, $STANDBYS standbys streaming"
	if [ "$FENCE" = 1 ]; then
		for i in $(seq 0 "$STANDBYS"); do start_fence "pg$i"; done
		log "$NAME: pgha-check --fence runs on pg0..pg$STANDBYS"
	fi
	if [ "$PGPOOL" = 1 ]; then
		start_pgpools
		if [ "$PGPOOLS" = 1 ]; then
			log "$NAME: pgpool up on $NET.20:9999 (pcp :9898)"
		else
			log "$NAME: pgpool up on $(pgpool_hosts) ($NET.20-$((19 + PGPOOLS)):9999, pcp :9898), one watchdog cluster, leader $(wd_view app | cut -d'|' -f1)"
		fi
	fi
	trap - EXIT
	echo "$LAB_DIR"
}

# --- down ----------------------------------------------------------------------

# pgpool first, by a fast shutdown (SIGINT), every pgpool host at once:
# killed, pgpool leaves its shared memory segment (~130 MB) behind, and
# labs add up. PGPOOL_MAINS: every pgpool main pid the hosts recorded.
stop_pgpools() {
	local h p pids=""
	PGPOOL_MAINS=""
	for h in "$LAB_DIR"/hosts/app*; do
		[ -d "$h" ] || continue
		p=$(tr -d '\0' 2>/dev/null <"$h/run/pgpool.pid" | head -1 || true)
		[[ "$p" =~ ^[0-9]+$ ]] && PGPOOL_MAINS+=" $p"
		if pid_on_host "$p" "$(basename "$h")"; then
			kill -INT "$p" 2>/dev/null || true
			pids+=" $p"
		fi
	done
	local end=$(($(date +%s) + 5))
	for p in $pids; do
		while kill -0 "$p" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 0.05; done
	done
}

# The segments a killed pgpool (lab.sh kill NAME appM) could not remove:
# created by one of PGPOOL_MAINS, attached by nobody now.
free_pgpool_shm() {
	local id
	[ -n "${PGPOOL_MAINS:-}" ] || return 0
	awk -v mains="$PGPOOL_MAINS " 'NR > 1 && $7 == 0 && index(mains, " " $5 " ") { print $2 }' \
		/proc/sysvipc/shm 2>/dev/null | while read -r id; do ipcrm -m "$id" 2>/dev/null || true; done
}

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
	stop_pgpools
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
	free_pgpool_shm
	# iptables rules this lab added (blackhole: INPUT; cut: OUTPUT).
	local rule chain
	for chain in INPUT OUTPUT; do
		{ iptables -S "$chain" 2>/dev/null || true; } | { grep -F -- "--comment \"pgha-lab:$name\" " || true; } |
			sed 's/^-A /-D /' | while read -r rule; do eval "iptables $rule" || true; done
	done
	# The hosts' cgroups, empty now.
	local cg
	cg=$(cg_root)
	if [ -n "$cg" ] && [ -d "$cg/pgha-lab/$name" ]; then
		rmdir "$cg/pgha-lab/$name"/* "$cg/pgha-lab/$name" 2>/dev/null ||
			log "cgroup $cg/pgha-lab/$name is not empty: $(cat "$cg/pgha-lab/$name"/*/cgroup.procs 2>/dev/null | tr '\n' ' ')"
	fi
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

cmd_signal() { # HOST SIGNAL WHAT
	local procs
	procs=$(host_procs "$1")
	# shellcheck disable=SC2086
	[ -z "$procs" ] || kill "-$2" $procs 2>/dev/null || true
	log "$NAME: host $1 $3"
}

cmd_restart_host() { # HOST: a killed host boots again, its data as it was
	local h=$1
	[ -z "$(host_procs "$h")" ] || die "host $h of lab $NAME is running; kill it first"
	# What a reboot clears: /run and /tmp (tmpfs on a real host), and the
	# postmaster.pid left in the data directory, whose pid may belong to
	# another process by now.
	find "$LAB_DIR/hosts/$h/run" "$LAB_DIR/hosts/$h/tmp" -mindepth 1 -delete
	rm -f "$LAB_DIR/hosts/$h/home/15/main/postmaster.pid"
	start_host "$h"
	if is_pgpool_host "$h"; then
		start_pgpool "$h"
	elif start_guard "$h"; then
		pg_ctl_start "$h"
	else
		[ "$FENCE" = 0 ] || start_fence "$h"
		log "$NAME: host $h restarted; its PostgreSQL stays down: the start guard refused it (see above)"
		return 0
	fi
	is_pgpool_host "$h" || [ "$FENCE" = 0 ] || start_fence "$h"
	log "$NAME: host $h restarted"
}

# A full archive disk on a node, inside its mount namespace: an overlay
# over the archive directory whose upper layer is a 1 MiB tmpfs that one
# file fills, so every file already archived stays readable (standbys
# restore from it) while writing anything new fails with ENOSPC, as on a
# real full disk.
FILL=/tmp/.pgha-archive-fill
ARCHIVE=/var/lib/postgresql/archive
cmd_fill_archive() { # HOST
	local h=$1
	is_pgpool_host "$h" && die "fill-archive: $h is a pgpool host; name a node (pg0, pg1, ...)"
	on_host "$h" root sh -ec "
		if grep -q ' $ARCHIVE overlay ' /proc/self/mounts; then echo 'already full' >&2; exit 0; fi
		mkdir -p $FILL
		mount -t tmpfs -o size=1m,mode=700 pgha-archive-fill $FILL
		mkdir $FILL/upper $FILL/work
		chown postgres:postgres $FILL/upper
		chmod 700 $FILL/upper
		mount -t overlay pgha-archive-fill -o lowerdir=$ARCHIVE,upperdir=$FILL/upper,workdir=$FILL/work $ARCHIVE
		chown postgres:postgres $ARCHIVE
		dd if=/dev/zero of=$FILL/upper/.pgha-full bs=64k 2>/dev/null || true"
	log "$NAME: the archive directory of $h is full"
}

cmd_unfill_archive() { # HOST: undo fill-archive; complete files written meanwhile are kept
	local h=$1
	on_host "$h" root sh -ec "
		grep -q ' $ARCHIVE overlay ' /proc/self/mounts || { echo 'not full' >&2; exit 0; }
		umount $ARCHIVE
		for f in $FILL/upper/* ; do
			[ -f \"\$f\" ] || continue
			case \"\$f\" in *.tmp) continue ;; esac
			n=\$(basename \"\$f\")
			[ -e $ARCHIVE/\"\$n\" ] || { cp -p \"\$f\" $ARCHIVE/\"\$n\".tmp && mv $ARCHIVE/\"\$n\".tmp $ARCHIVE/\"\$n\"; }
		done
		umount $FILL
		rmdir $FILL"
	log "$NAME: the archive directory of $h has room again"
}

# pgha-fence.service on a node: pgha-check --fence, in the background for
# as long as the host lives (kill and pause reach it with the rest).
start_fence() { # HOST
	local hd=$LAB_DIR/hosts/$1
	on_host "$1" postgres setsid "$LAB_DIR/bin/pgha-check" --config /etc/pgha/pgha.toml \
		--fence "${1#pg}" >>"$hd/home/pgha-fence.log" 2>&1 </dev/null &
}

# What a node's PostgreSQL unit runs before it starts the server
# (ExecStartPre, packaging/systemd/postgresql-start-guard.conf): exit 0
# when it may start. Its lines go to stderr, as to the unit's journal.
start_guard() { # HOST
	local id=${1#pg}
	[ -x "$LAB_DIR/bin/pgha-check" ] || die "no $LAB_DIR/bin/pgha-check: build pgha (cargo build) or pass --pgha-bin"
	on_host "$1" postgres "$LAB_DIR/bin/pgha-check" --config /etc/pgha/pgha.toml --start-guard "$id" >&2
}

cmd_blackhole() {
	[[ "$1" =~ ^127\. ]] || die "only loopback addresses"
	iptables -I INPUT -d "$1" -m comment --comment "pgha-lab:$NAME" -j DROP
	log "$NAME: packets to $1 are dropped"
}

cmd_unblackhole() {
	iptables -D INPUT -d "$1" -m comment --comment "pgha-lab:$NAME" -j DROP
}

cmd_syn_loss() { # ADDR EVERY|off
	[[ "$1" =~ ^127\. ]] || die "only loopback addresses"
	local state=$LAB_DIR/syn-loss-$1 every
	if [ -f "$state" ]; then
		every=$(cat "$state")
		iptables -D INPUT -d "$1" -p tcp --syn -m statistic --mode nth --every "$every" --packet 0 \
			-m comment --comment "pgha-lab:$NAME" -j ACCEPT
		iptables -D INPUT -d "$1" -p tcp --syn -m comment --comment "pgha-lab:$NAME" -j DROP
		rm -f "$state"
	fi
	if [ "$2" = off ]; then
		log "$NAME: SYNs to $1 all get through again"
		return 0
	fi
	[[ "$2" =~ ^[1-9][0-9]*$ ]] || die "syn-loss: EVERY must be a positive number or off, not '$2'"
	# Inserted in this order, the ACCEPT of every EVERY-th SYN comes first.
	iptables -I INPUT -d "$1" -p tcp --syn -m comment --comment "pgha-lab:$NAME" -j DROP
	iptables -I INPUT -d "$1" -p tcp --syn -m statistic --mode nth --every "$2" --packet 0 \
		-m comment --comment "pgha-lab:$NAME" -j ACCEPT
	echo "$2" >"$state"
	log "$NAME: only every $2th SYN to $1 gets through"
}

host_addrs() { # HOST: every address it has (a node also has its replication one)
	host_addr "$1"
	case "$1" in pg[0-9]) repl_addr "$1" ;; esac
}

# Packets HOST's processes send to ADDR are dropped (-I) or pass again (-D).
cut_rule() { # -I|-D HOST ADDR
	iptables "$1" OUTPUT -m cgroup --path "$(cg_rel "$2")" -d "$3" -m comment --comment "pgha-lab:$NAME" -j DROP
}

cmd_cut() { # -I|-D HOST PEER...
	local op=$1 h=$2 p a
	shift 2
	[ $# -ge 1 ] || die "usage: lab.sh cut|heal NAME HOST PEER..."
	[ -n "$(cg_root)" ] || die "cut needs a cgroup2 file system mounted (none in /proc/mounts): mount -t cgroup2 none /sys/fs/cgroup"
	host_addr "$h" >/dev/null
	for p in "$@"; do
		host_addr "$p" >/dev/null
		[ "$p" != "$h" ] || die "cut: $h cannot be cut off from itself"
	done
	for p in "$@"; do
		for a in $(host_addrs "$p"); do cut_rule "$op" "$h" "$a"; done
		for a in $(host_addrs "$h"); do cut_rule "$op" "$p" "$a"; done
	done
	if [ "$op" = -I ]; then log "$NAME: $h cut off from $*"; else log "$NAME: $h reaches $* again"; fi
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
	pause) load_env "$1"; host_addr "$2" >/dev/null; cmd_signal "$2" STOP paused ;;
	resume) load_env "$1"; host_addr "$2" >/dev/null; cmd_signal "$2" CONT resumed ;;
	blackhole) load_env "$1"; cmd_blackhole "$2" ;;
	unblackhole) load_env "$1"; cmd_unblackhole "$2" ;;
	syn-loss) [ $# = 3 ] || die "usage: lab.sh syn-loss NAME ADDR EVERY|off"; load_env "$1"; cmd_syn_loss "$2" "$3" ;;
	cut) [ $# -ge 3 ] || die "usage: lab.sh cut NAME HOST PEER..."; load_env "$1"; shift; cmd_cut -I "$@" ;;
	heal) [ $# -ge 3 ] || die "usage: lab.sh heal NAME HOST PEER..."; load_env "$1"; shift; cmd_cut -D "$@" ;;
	fill-archive) [ $# = 2 ] || die "usage: lab.sh fill-archive NAME HOST"; load_env "$1"; host_addr "$2" >/dev/null; cmd_fill_archive "$2" ;;
	unfill-archive) [ $# = 2 ] || die "usage: lab.sh unfill-archive NAME HOST"; load_env "$1"; host_addr "$2" >/dev/null; cmd_unfill_archive "$2" ;;
	start-pg) load_env "$1"; pg_ctl_start "$2" ;;
	restart-host) load_env "$1"; host_addr "$2" >/dev/null; cmd_restart_host "$2" ;;
	start-pgpool)
		[ $# -ge 1 ] || die "usage: lab.sh start-pgpool NAME [HOST]"
		load_env "$1"; start_pgpool "${2:-app}" ;;
	list) ls "$LAB_ROOT" 2>/dev/null | grep -v '^nets$' || true ;;
	help | -h | --help) usage ;;
	*) usage >&2; exit 2 ;;
	esac
}

main "$@"
