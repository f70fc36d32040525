//! The installed package: `lab/test` builds the .deb
//! (`packaging/build-deb.sh`) and installs it with `dpkg -i` before the
//! tests run; these tests use what it put in /usr/bin, /etc and
//! /lib/systemd, never the build tree.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::lab::{Lab, LabOptions, the_other};

const T: Duration = Duration::from_secs(40);

/// The binaries the package installs.
const BINS: [&str; 5] = [
    "pgha-failover",
    "pgha-follow",
    "pgha-attach",
    "pgha-check",
    "pgha-switchover",
];

/// The installed binaries, or a failure saying how to get them (no skip: a
/// CI run without the package must not pass).
fn require_package() {
    for b in BINS {
        let p = Path::new("/usr/bin").join(b);
        assert!(
            p.exists(),
            "{} is missing: run lab/test, which builds and installs the .deb \
             (packaging/build-deb.sh, then dpkg -i target/debian/pgha_*.deb)",
            p.display()
        );
    }
    let v = Command::new("/usr/bin/pgha-check")
        .arg("--version")
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&v.stdout);
    assert_eq!(
        v.trim(),
        format!("pgha-check {}", env!("CARGO_PKG_VERSION")),
        "the installed package is another version: run lab/test, which builds and installs the .deb"
    );
}

fn dpkg_field(field: &str) -> String {
    let o = Command::new("dpkg-query")
        .args(["-W", &format!("-f=${{{field}}}"), "pgha"])
        .output()
        .unwrap();
    assert!(o.status.success(), "dpkg-query: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_package_installs_docs_units_and_conffiles() {
    require_package();
    assert_eq!(
        dpkg_field("Version"),
        format!("{}-1", env!("CARGO_PKG_VERSION"))
    );
    assert!(dpkg_field("Status").ends_with("installed"));
    let depends = dpkg_field("Depends");
    assert!(
        depends.contains("openssh-client") && depends.contains("libc6"),
        "{depends}"
    );
    let conffiles = dpkg_field("Conffiles");
    assert!(conffiles.contains("/etc/pgha/pgha.toml"), "{conffiles}");
    for b in BINS {
        for f in [
            format!("/usr/share/man/man1/{b}.1.gz"),
            format!("/usr/share/bash-completion/completions/{b}"),
            format!("/usr/share/zsh/vendor-completions/_{b}"),
            format!("/usr/share/fish/vendor_completions.d/{b}.fish"),
        ] {
            assert!(Path::new(&f).is_file(), "{f} missing");
        }
    }
    // The alert rules, on the metrics pgha-check --watch exports.
    let rules = std::fs::read_to_string("/usr/share/pgha/pgha-alerts.yml")
        .expect("/usr/share/pgha/pgha-alerts.yml installed");
    assert!(rules.contains("\ngroups:"), "{rules}");
    assert!(rules.contains("pgha_"), "{rules}");
    // The start guard's drop-in, shipped for database hosts, not enabled:
    // its command exists in the installed pgha-check.
    let guard = std::fs::read_to_string("/usr/share/pgha/postgresql-start-guard.conf")
        .expect("/usr/share/pgha/postgresql-start-guard.conf installed");
    assert!(
        guard.contains("ExecStartPre=/usr/sbin/runuser -u postgres -- /usr/bin/pgha-check --start-guard ${PGHA_NODE_ID}"),
        "{guard}"
    );
    assert!(!Path::new("/etc/systemd/system/postgresql@.service.d/pgha-start-guard.conf").exists());
    let fence = std::fs::read_to_string("/lib/systemd/system/pgha-fence.service")
        .expect("pgha-fence.service installed");
    assert!(
        fence.contains("ExecStart=/usr/bin/pgha-check --fence ${PGHA_NODE_ID} $PGHA_FENCE_OPTS"),
        "{fence}"
    );
    let help = Command::new("/usr/bin/pgha-check")
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--start-guard <NODE>"));
    // The example configuration is valid for the installed binaries.
    let cfg = pgha::config::Config::load(Some(Path::new("/etc/pgha/pgha.toml"))).unwrap();
    assert_eq!(cfg.state_dir, Path::new("/var/lib/pgha"));
    let dropin =
        std::fs::read_to_string("/lib/systemd/system/pgpool2.service.d/pgha-check.conf").unwrap();
    assert!(dropin.contains("Requires=pgha-check.service"), "{dropin}");
    assert!(dropin.contains("After=pgha-check.service"), "{dropin}");
    // postinst made the state directory for postgres.
    let o = Command::new("stat")
        .args(["-c", "%U", "/var/lib/pgha"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "postgres");
}

/// The preflight exactly as the installed unit runs it: its `ExecStart`, as
/// its `User`, on the pgpool host.
fn preflight_as_the_unit_runs_it(lab: &Lab) {
    let unit = std::fs::read_to_string("/lib/systemd/system/pgha-check.service").unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart in pgha-check.service");
    let user = unit
        .lines()
        .find_map(|l| l.strip_prefix("User="))
        .expect("User in pgha-check.service");
    assert_eq!(user, "postgres", "lab.exec runs as postgres");
    assert!(unit.contains("Type=oneshot"), "{unit}");
    // $PGHA_CHECK_OPTS comes from /etc/default/pgha, empty by default.
    let argv: Vec<&str> = exec
        .split_whitespace()
        .filter(|w| !w.starts_with('$'))
        .collect();
    assert_eq!(argv[0], "/usr/bin/pgha-check");
    let o = lab.exec("app", &argv);
    assert!(
        o.status.success(),
        "the installed preflight fails on a healthy lab: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("pgha-check: OK: all "));
}

#[test]
fn installed_binaries_fail_over_the_lab() {
    require_package();
    let lab = Lab::up(LabOptions {
        pgha_bin: Some("system".into()),
        failover_command: Some("/usr/bin/pgha-failover %d %M %m --old-primary %P".into()),
        ..LabOptions::default()
    });
    let conf =
        std::fs::read_to_string(lab.host_dir("app").join("etc-pgpool2/pgpool.conf")).unwrap();
    assert!(
        conf.contains("failover_command = '/usr/bin/pgha-failover %d %M %m --old-primary %P'"),
        "pgpool must run the installed binary"
    );
    preflight_as_the_unit_runs_it(&lab);

    lab.kill_host("pg0");
    let new = lab.wait_new_primary(2, T);
    let (other, _, _) = the_other(&new);
    lab.wait_streams(other, &new, 2, T);
    let written = lab.wait_observing("a write through pgpool", T, || {
        lab.pgpool_sql(
            "create table if not exists after_failover(x int); \
             insert into after_failover values (42) returning x",
        )
    });
    assert_eq!(written, "42");
    // The write went to the new primary and reached the standby.
    lab.wait_observing(&format!("the row on {other}"), T, || {
        match lab.try_psql_db(other, "app", "select x from after_failover") {
            Ok(x) if x == "42" => Ok(()),
            other => Err(other),
        }
    });
    assert!(
        lab.pgpool_log().contains("pgha-failover"),
        "pgpool's log shows no pgha-failover output"
    );
}
