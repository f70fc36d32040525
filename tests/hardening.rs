//! Issue 16 end to end: what a local user, a hostile value or a broken disk
//! can do does not stop a failover that pgpool runs (`failover_command`
//! as the lab sets it, the primary killed):
//! - a TLS-only cluster (`hostssl` lines for pgha's and the replication
//!   user, certificates naming each node's addresses as IPs) with
//!   `sslmode = "verify-full"`; pgha-check first reports the missing TLS
//!   setting with its fix;
//! - FIFOs and a symlink planted in `/tmp` of the app host under the names
//!   pgha once used, and a read-only state directory: the failover
//!   completes, says it ran unlocked, and the planted files are untouched;
//! - `password=` inside the standbys' `primary_conninfo`: no log (pgpool's,
//!   the journal, any server log) shows it after the failover (pgha moves
//!   the password into the standby's passfile when it repoints).

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::lab::{Lab, LabOptions, role, the_other, upstream};
use crate::util::watch::SplitBrainWatcher;

const T: Duration = Duration::from_secs(40);

/// Kills the primary and waits until pgpool's run of pgha-failover made
/// pg1 or pg2 primary on timeline 2 and the other streams from it.
/// Returns (new primary, other standby).
fn kill_primary_and_wait_failover(lab: &Lab) -> (String, &'static str) {
    lab.kill_host("pg0");
    let new = lab.wait_new_primary(2, T);
    let (other, _, _) = the_other(&new);
    lab.wait_streams(other, &new, 2, T);
    lab.wait_observing("pgha-failover's final line in pgpool's log", T, || {
        let log = lab.pgpool_log();
        if log.contains("pgha-failover: OK:") {
            Ok(())
        } else {
            Err(log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
        }
    });
    (new, other)
}

fn set_postgres_option(lab: &Lab, lines: &str) {
    let path = lab.host_dir("app").join("etc-pgha/pgha.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen("[postgres]\n", &format!("[postgres]\n{lines}\n"), 1);
    std::fs::write(&path, text).unwrap();
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA in `dir`, and for each node a server certificate whose
/// subjectAltName holds both its addresses as IPs, installed with its key
/// in the node's home; the CA goes to the app host's `/etc/pgha/root.crt`.
fn make_certificates(lab: &Lab, dir: &Path) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.crt");
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=pgha lab CA", "-keyout"])
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    for h in lab.pg_hosts() {
        let (key, csr, crt, ext) = (
            dir.join(format!("{h}.key")),
            dir.join(format!("{h}.csr")),
            dir.join(format!("{h}.crt")),
            dir.join(format!("{h}.ext")),
        );
        std::fs::write(
            &ext,
            format!(
                "subjectAltName = IP:{}, IP:{}\nbasicConstraints = CA:FALSE\nkeyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
                lab.addr(&h),
                lab.repl_addr(&h)
            ),
        )
        .unwrap();
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args([
                "-nodes",
                "-subj",
                &format!("/CN={}", lab.addr(&h)),
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&csr));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .args(["-CAcreateserial", "-extfile"])
            .arg(&ext)
            .arg("-out")
            .arg(&crt));
        let home = lab.host_dir(&h).join("home");
        for (from, to, mode) in [(&crt, "server.crt", 0o644), (&key, "server.key", 0o600)] {
            let dst = home.join(to);
            std::fs::copy(from, &dst).unwrap();
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).unwrap();
            run(Command::new("chown").arg("postgres:postgres").arg(&dst));
        }
    }
    let root = lab.host_dir("app").join("etc-pgha/root.crt");
    std::fs::copy(&ca, &root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// Turns TLS on everywhere and leaves only `hostssl` lines for pgha's
/// superuser and the replication user (pgpool's own users keep `host`:
/// pgpool's backend TLS is its own setting).
fn tls_only(lab: &Lab) {
    for h in lab.pg_hosts() {
        let hba = lab.host_dir(&h).join("home/15/main/pg_hba.conf");
        let text = std::fs::read_to_string(&hba).unwrap();
        let text = text
            .replace("host    replication  repl", "hostssl replication  repl")
            .replace(
                "host    all          postgres",
                "hostssl all          postgres",
            );
        assert!(text.contains("hostssl all          postgres"), "{text}");
        std::fs::write(&hba, text).unwrap();
        lab.psql(&h, "ALTER SYSTEM SET ssl = on");
        lab.psql(
            &h,
            "ALTER SYSTEM SET ssl_cert_file = '/var/lib/postgresql/server.crt'",
        );
        lab.psql(
            &h,
            "ALTER SYSTEM SET ssl_key_file = '/var/lib/postgresql/server.key'",
        );
        lab.psql(&h, "SELECT pg_reload_conf()");
        lab.wait_observing(&format!("ssl on at {h}"), T, || {
            match lab.try_psql(&h, "show ssl") {
                Ok(s) if s == "on" => Ok(()),
                other => Err(other),
            }
        });
    }
}

#[test]
fn tls_only_nodes_fail_over_with_verify_full() {
    let lab = Lab::up(LabOptions::default());
    let watcher = SplitBrainWatcher::start(&lab);
    let certs = tempfile::tempdir().unwrap();
    make_certificates(&lab, certs.path());
    tls_only(&lab);

    // Without TLS, pgha-check says the node wants it and what to set.
    set_postgres_option(&lab, "sslmode = \"disable\"");
    let bin = lab.bin("pgha-check");
    let out = lab.exec("app", &[&bin]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("no encryption") && all.contains("sslmode = \"verify-full\""),
        "{all}"
    );

    let toml = lab.host_dir("app").join("etc-pgha/pgha.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        text.replace(
            "sslmode = \"disable\"",
            "sslmode = \"verify-full\"\nsslrootcert = \"/etc/pgha/root.crt\"",
        ),
    )
    .unwrap();
    let out = lab.exec("app", &[&bin]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("no encryption"), "{all}");
    assert!(!all.contains("tls handshake failed"), "{all}");

    // pgpool runs pgha-failover; every SQL session it opens must be TLS
    // verified against the lab's CA, or pg_hba.conf refuses it.
    let (new, _) = kill_primary_and_wait_failover(&lab);
    assert_eq!(role(&lab, &new).unwrap(), (true, 2));
    let log = lab.pgpool_log();
    assert!(!log.contains("no encryption"), "{log}");
    watcher.assert_never_two_primaries();
}

/// The FIFOs and the symlink a local user plants in `/tmp` of the app host.
fn plant(lab: &Lab) -> Vec<std::path::PathBuf> {
    let tmp = lab.host_dir("app").join("tmp");
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut planted = vec![];
    for pid in last..last + 3000 {
        for n in 0..2 {
            let p = tmp.join(format!("pgha-{pid}-{n}.ssh_config"));
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0, "{p:?}");
            planted.push(p);
        }
    }
    // A symlink where pgha would once have written, pointing at a file
    // pgha must never overwrite, and one under the shape of its new names.
    let victim = lab.host_dir("app").join("home/victim");
    std::fs::write(&victim, "precious\n").unwrap();
    for name in ["pgha-1-0.ssh_config", "pgha-0"] {
        let link = tmp.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/var/lib/postgresql/victim", &link).unwrap();
        planted.push(link);
    }
    planted
}

#[test]
fn planted_fifos_and_links_and_a_read_only_state_dir_do_not_stop_a_failover() {
    let lab = Lab::up(LabOptions::default());
    let watcher = SplitBrainWatcher::start(&lab);
    let planted = plant(&lab);
    // The state directory exists, empty, and nobody may write into it.
    let state = lab.host_dir("app").join("home/pgha");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir(&state).unwrap();
    run(Command::new("chown").arg("postgres:postgres").arg(&state));
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o555)).unwrap();

    let (new, _) = kill_primary_and_wait_failover(&lab);
    assert_eq!(role(&lab, &new).unwrap(), (true, 2));
    let log = lab.pgpool_log();
    assert!(log.contains("RUNNING WITHOUT A LOCK"), "{log}");
    for p in &planted {
        let meta = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        let t = meta.file_type();
        assert!(t.is_fifo() || t.is_symlink(), "{p:?} changed: {t:?}");
    }
    assert_eq!(
        std::fs::read_to_string(lab.host_dir("app").join("home/victim")).unwrap(),
        "precious\n"
    );
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
    watcher.assert_never_two_primaries();
}

// PostgreSQL logs a reloaded setting's new value ("parameter
// \"primary_conninfo\" changed to ..."): pgha moves the password into the
// standby's passfile when it repoints, so the new value carries none.
#[test]
fn a_password_in_primary_conninfo_reaches_no_log() {
    let lab = Lab::up(LabOptions::default());
    let watcher = SplitBrainWatcher::start(&lab);
    let password = lab.env["REPL_PASSWORD"].clone();
    for h in ["pg1", "pg2"] {
        let conninfo = format!(
            "host={} port=5432 user=repl application_name={h} password={password}",
            lab.repl_addr("pg0")
        );
        lab.psql(
            h,
            &format!("ALTER SYSTEM SET primary_conninfo = '{conninfo}'"),
        );
        lab.psql(h, "SELECT pg_reload_conf()");
    }
    lab.wait_until("both standbys streaming again", T, || {
        ["pg1", "pg2"]
            .iter()
            .all(|h| upstream(&lab, h).is_some())
            .then_some(())
    });

    // What the servers logged before (PostgreSQL itself logs the new value
    // of a reloaded setting, our ALTER SYSTEM above included) is not pgha's.
    let before: Vec<usize> = lab.pg_hosts().iter().map(|h| lab.pg_log(h).len()).collect();
    kill_primary_and_wait_failover(&lab);
    let mut logs = vec![
        ("pgpool's log".to_string(), lab.pgpool_log()),
        (
            "the journal".to_string(),
            std::fs::read_to_string(lab.host_dir("app").join("home/pgha/journal.jsonl"))
                .unwrap_or_default(),
        ),
    ];
    assert!(!logs[1].1.is_empty(), "the journal was written");
    for (h, from) in lab.pg_hosts().iter().zip(before) {
        let log = lab.pg_log(h);
        logs.push((
            format!("{h}'s server log"),
            log.get(from..).unwrap_or(&log).to_string(),
        ));
    }
    for (what, text) in &logs {
        assert!(
            !text.contains(&password),
            "{what} shows the replication password:\n{text}"
        );
    }
    watcher.assert_never_two_primaries();
}

/// `systemctl stop` and pgpool's shutdown send SIGTERM: pgha closes its
/// ssh masters, removes its control files and directory, says so on its
/// last line and exits 128 + 15, having changed nothing it had not done.
#[test]
fn sigterm_mid_run_leaves_no_control_files() {
    let lab = Lab::up(LabOptions {
        failover_command: Some("/bin/true".into()),
        ..LabOptions::default()
    });
    // pg0 answers on its replication address only: pgha fences it first,
    // over ssh to its main address, which hangs for ssh's connect timeout.
    lab.blackhole(&lab.addr("pg0"));
    let bin = lab.bin("pgha-failover");
    let child = Command::new(crate::util::lab::lab_sh())
        .args([
            "exec",
            &lab.name,
            "app",
            "--",
            "env",
            "-u",
            "XDG_RUNTIME_DIR",
        ])
        .args([&bin, "0", "0", "1", "--old-primary", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let tmp = lab.host_dir("app").join("tmp");
    let controls = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&tmp)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("pgha-"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let dir = lab.wait_until("pgha's control directory in the app host's /tmp", T, || {
        controls().into_iter().next()
    });
    // The pgha-failover process itself (not lab.sh, nsenter or runuser).
    let pid = lab.wait_until("the pgha-failover process", T, || {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            cmd.starts_with(format!("{bin}\0").as_bytes())
                .then_some(pid)
        })
    });
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 15), "{err}");
    assert!(
        err.contains("stopped by SIGTERM") && err.contains("control files removed"),
        "{err}"
    );
    assert!(!dir.exists(), "{} is left behind: {err}", dir.display());
    assert!(controls().is_empty(), "left in /tmp: {:?}", controls());
    lab.unblackhole(&lab.addr("pg0"));
    assert_eq!(role(&lab, "pg0").unwrap(), (true, 1), "pg0 untouched");
    assert!(!role(&lab, "pg1").unwrap().0, "nothing promoted");
}
