#!/usr/bin/env bash
# Build the pgha .deb from this checkout: release binaries, man pages and
# shell completions generated from the clap definitions, the example
# configuration, the systemd units, then lintian.
#
#   packaging/build-deb.sh            -> target/debian/pgha_VERSION_ARCH.deb
#
# Needs cargo, dpkg-deb, dpkg-shlibdeps (dpkg-dev), strip (binutils), gzip;
# lintian runs when installed (lab/setup.sh installs it) and its errors fail
# the build. Env: DEB_REVISION (default 1), DEBFULLNAME/DEBEMAIL (maintainer),
# SOURCE_DATE_EPOCH (default: the last commit's time), PGHA_SKIP_LINTIAN=1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
cd "$REPO"

say() { echo "build-deb: $*" >&2; }
die() { echo "build-deb: $*" >&2; exit 1; }

for t in cargo dpkg-deb dpkg-shlibdeps strip gzip; do
	command -v "$t" >/dev/null 2>&1 || die "missing $t (apt-get install dpkg-dev binutils gzip; cargo from rustup)"
done

UPSTREAM=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$UPSTREAM" ] || die "no version in Cargo.toml"
VERSION="$UPSTREAM-${DEB_REVISION:-1}"
ARCH=$(dpkg --print-architecture)
MAINTAINER="${DEBFULLNAME:-pgha maintainers} <${DEBEMAIL:-maintainers@pgha.invalid}>"
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

OUT=$REPO/target/debian
ROOT=$OUT/pgha_${VERSION}_$ARCH
DEB=$OUT/pgha_${VERSION}_$ARCH.deb
BINS=(pgha-failover pgha-follow pgha-attach pgha-check pgha-switchover)

say "pgha $VERSION ($ARCH): cargo build --release"
cargo build --release --bins
say "man pages and completions: cargo run --example gen-docs"
rm -rf "$OUT/docs"
cargo run --release --quiet --example gen-docs -- "$OUT/docs" >/dev/null

rm -rf "$ROOT" "$OUT"/pgha_*.deb
mkdir -p "$ROOT/DEBIAN"
# Directories 0755 and files 0644 unless said otherwise, whatever the umask.
umask 022
d() { install -d -m 0755 "$ROOT/$1"; }
f() { install -m "$1" "$2" "$ROOT/$3"; }

d usr/bin
for b in "${BINS[@]}"; do
	f 0755 "target/release/$b" "usr/bin/$b"
	strip --strip-unneeded --remove-section=.comment --remove-section=.note "$ROOT/usr/bin/$b"
done

d etc/pgha
f 0644 packaging/pgha.toml etc/pgha/pgha.toml
d etc/default
f 0644 packaging/default etc/default/pgha

d usr/share/man/man1
for b in "${BINS[@]}"; do
	gzip -9n <"$OUT/docs/man1/$b.1" >"$ROOT/usr/share/man/man1/$b.1.gz"
	chmod 0644 "$ROOT/usr/share/man/man1/$b.1.gz"
done
d usr/share/bash-completion/completions
d usr/share/zsh/vendor-completions
d usr/share/fish/vendor_completions.d
for b in "${BINS[@]}"; do
	f 0644 "$OUT/docs/bash/$b" "usr/share/bash-completion/completions/$b"
	f 0644 "$OUT/docs/zsh/_$b" "usr/share/zsh/vendor-completions/_$b"
	f 0644 "$OUT/docs/fish/$b.fish" "usr/share/fish/vendor_completions.d/$b.fish"
done

d lib/systemd/system/pgpool2.service.d
f 0644 packaging/systemd/pgha-check.service lib/systemd/system/pgha-check.service
f 0644 packaging/systemd/pgha-watch.service lib/systemd/system/pgha-watch.service
f 0644 packaging/systemd/pgha-fence.service lib/systemd/system/pgha-fence.service
f 0644 packaging/systemd/pgpool2.service.d/pgha-check.conf lib/systemd/system/pgpool2.service.d/pgha-check.conf

d usr/share/doc/pgha
f 0644 packaging/debian/copyright usr/share/doc/pgha/copyright
f 0644 packaging/README.md usr/share/doc/pgha/README.md
# Prometheus alert rules for pgha-check --watch's /metrics: point
# rule_files at it, or copy it.
d usr/share/pgha
f 0644 packaging/pgha-alerts.yml usr/share/pgha/pgha-alerts.yml
# The start guard for a database host's PostgreSQL unit: a drop-in to
# copy (see its comments), not enabled by the package.
f 0644 packaging/systemd/postgresql-start-guard.conf usr/share/pgha/postgresql-start-guard.conf
DATE=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
sed -e "s/@VERSION@/$VERSION/" -e "s/@MAINTAINER@/$MAINTAINER/" -e "s/@DATE@/$DATE/" \
	packaging/debian/changelog.in | gzip -9n >"$ROOT/usr/share/doc/pgha/changelog.Debian.gz"
chmod 0644 "$ROOT/usr/share/doc/pgha/changelog.Debian.gz"

if [ -f packaging/debian/lintian-overrides ]; then
	d usr/share/lintian/overrides
	f 0644 packaging/debian/lintian-overrides usr/share/lintian/overrides/pgha
fi

# Maintainer scripts and control files.
for s in postinst prerm postrm; do
	install -m 0755 "packaging/debian/$s" "$ROOT/DEBIAN/$s"
done
printf '%s\n' /etc/default/pgha /etc/pgha/pgha.toml >"$ROOT/DEBIAN/conffiles"
chmod 0644 "$ROOT/DEBIAN/conffiles"

# Shared-library dependencies of the binaries, as dpkg-shlibdeps sees them
# (it wants a debian/control beside it: give it a scratch one).
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/debian"
printf 'Source: pgha\n\nPackage: pgha\nArchitecture: any\n' >"$scratch/debian/control"
bins_abs=()
for b in "${BINS[@]}"; do bins_abs+=("$ROOT/usr/bin/$b"); done
SHLIBS=$(cd "$scratch" && dpkg-shlibdeps -O "${bins_abs[@]}" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$SHLIBS" ] || die "dpkg-shlibdeps found no shared-library dependencies"

(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
	xargs -0 md5sum) >"$ROOT/DEBIAN/md5sums"
chmod 0644 "$ROOT/DEBIAN/md5sums"
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@MAINTAINER@/$MAINTAINER/" \
	-e "s/@SIZE@/$SIZE/" -e "s/@SHLIBS@/$SHLIBS/" packaging/debian/control.in >"$ROOT/DEBIAN/control"
chmod 0644 "$ROOT/DEBIAN/control"

# Same timestamps for every file: the same checkout gives the same package.
find "$ROOT" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >/dev/null
say "built $DEB ($(du -h "$DEB" | cut -f1))"

if [ -n "${PGHA_SKIP_LINTIAN:-}" ]; then
	say "lintian skipped (PGHA_SKIP_LINTIAN)"
elif command -v lintian >/dev/null 2>&1; then
	say "lintian $DEB"
	# Errors fail the build; warnings and infos are printed (see
	# packaging/README.md for the ones that remain and why).
	lintian --info --display-info --fail-on error "$DEB" >&2 || die "lintian found errors in $DEB"
	say "lintian: no errors"
else
	say "lintian not installed (apt-get install lintian): not run"
fi
echo "$DEB"
