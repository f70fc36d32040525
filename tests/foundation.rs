//! The lab behaves like separate machines: private files, a key-only ssh
//! mesh with known host keys, a streaming cluster behind pgpool, and a
//! teardown that leaves nothing behind. Every other end-to-end test relies
//! on these properties.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::util::lab::{Lab, LabOptions, lab_root};

fn out_text(o: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn ok(what: &str, o: Output) -> String {
    assert!(o.status.success(), "{what} failed: {}", out_text(&o));
    String::from_utf8_lossy(&o.stdout).trim_end().to_string()
}

/// The options every ssh in pgha uses: no prompts, host keys must be known.
const SSH_STRICT: [&str; 4] = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"];

#[test]
fn every_host_is_isolated() {
    let lab = Lab::up(LabOptions::default());
    let tmp_marker = format!("/tmp/marker-{}", lab.name);
    let home_marker = format!("/var/lib/postgresql/marker-{}", lab.name);
    let pg1 = lab.addr("pg1");
    for m in [&tmp_marker, &home_marker] {
        let mut argv = vec!["ssh"];
        argv.extend(SSH_STRICT);
        argv.extend([pg1.as_str(), "touch", m.as_str()]);
        ok(
            &format!("ssh from app to pg1: touch {m}"),
            lab.exec("app", &argv),
        );
        for h in lab.hosts() {
            let there = lab.exec(&h, &["test", "-e", m]).status.success();
            assert_eq!(
                there,
                h == "pg1",
                "{m} written over ssh on pg1 is {} on {h}",
                if there { "visible" } else { "missing" }
            );
        }
        assert!(
            !Path::new(m).exists(),
            "{m} written on pg1 leaked to the machine's own namespace"
        );
    }
    // What pg1 sees as /var/lib/postgresql is its own directory of the lab.
    assert!(
        lab.host_dir("pg1")
            .join("home")
            .join(format!("marker-{}", lab.name))
            .exists()
    );

    // Each host has its own home (its own ssh key) and its own socket
    // directory (psql through the default socket reaches that host's server).
    let mut keys = BTreeSet::new();
    for h in lab.hosts() {
        let key = ok(
            &format!("read {h}'s ssh key"),
            lab.exec(&h, &["cat", "/var/lib/postgresql/.ssh/id_ed25519.pub"]),
        );
        assert!(key.ends_with(&format!("postgres@{h}")), "{h} has key {key}");
        keys.insert(key);
    }
    assert_eq!(
        keys.len(),
        lab.hosts().len(),
        "hosts share a home directory"
    );
    for h in lab.pg_hosts() {
        assert_eq!(lab.psql(&h, "show cluster_name"), h);
    }
}

#[test]
fn ssh_mesh_is_key_only_with_strict_host_keys() {
    let lab = Lab::up(LabOptions::default());
    let hosts = lab.hosts();
    std::thread::scope(|s| {
        for src in &hosts {
            let lab = &lab;
            let hosts = &hosts;
            s.spawn(move || {
                let empty = "/tmp/empty_known_hosts";
                ok(
                    &format!("create {empty} on {src}"),
                    lab.exec(src, &["sh", "-c", &format!(": >{empty}")]),
                );
                for dst in hosts.iter().filter(|d| *d != src) {
                    let mut addrs = vec![lab.addr(dst)];
                    if dst != "app" {
                        addrs.push(lab.repl_addr(dst));
                    }
                    for a in &addrs {
                        // Lands on the right host: its home holds its own key.
                        let mut argv = vec!["ssh"];
                        argv.extend(SSH_STRICT);
                        argv.extend([a.as_str(), "cut -d' ' -f3 .ssh/id_ed25519.pub"]);
                        let who = ok(&format!("ssh {src} -> {dst} ({a})"), lab.exec(src, &argv));
                        assert_eq!(who, format!("postgres@{dst}"), "ssh {src} -> {a}");
                    }
                    let a = lab.addr(dst);

                    let kh = format!("UserKnownHostsFile={empty}");
                    let gkh = format!("GlobalKnownHostsFile={empty}");
                    let mut argv = vec!["ssh"];
                    argv.extend(SSH_STRICT);
                    argv.extend(["-o", &kh, "-o", &gkh, &a, "true"]);
                    let o = lab.exec(src, &argv);
                    assert!(
                        !o.status.success()
                            && String::from_utf8_lossy(&o.stderr)
                                .contains("Host key verification failed"),
                        "ssh {src} -> {dst} with no known host keys must fail host key \
                         verification: {}",
                        out_text(&o)
                    );

                    let mut argv = vec!["ssh"];
                    argv.extend(SSH_STRICT);
                    argv.extend([
                        "-o",
                        "PreferredAuthentications=password,keyboard-interactive",
                        &a,
                        "true",
                    ]);
                    let o = lab.exec(src, &argv);
                    // The server lists the methods it would accept: only keys.
                    assert!(
                        !o.status.success()
                            && String::from_utf8_lossy(&o.stderr)
                                .contains("Permission denied (publickey)"),
                        "ssh {src} -> {dst} by password must be refused: {}",
                        out_text(&o)
                    );
                }
            });
        }
    });
}

#[test]
fn pgpool_reports_all_nodes_up() {
    let lab = Lab::up(LabOptions::default());
    for n in 0..=lab.standbys {
        lab.wait_observing(
            &format!("pgpool to report node {n} up and streaming"),
            Duration::from_secs(20),
            || {
                let info = lab.pcp_node(n)?;
                let want_role = if n == 0 { "primary" } else { "standby" };
                let streaming = n == 0 || info.replication_state == "streaming";
                if info.host == lab.addr(&format!("pg{n}"))
                    && info.status == "up"
                    && info.backend_status == "up"
                    && info.role == want_role
                    && info.backend_role == want_role
                    && streaming
                {
                    Ok(())
                } else {
                    Err(info.raw)
                }
            },
        );
        // pgpool's own one-line form says the same.
        let line = lab.pcp_node_info(n);
        assert!(
            line.starts_with(&format!("{} 5432 ", lab.addr(&format!("pg{n}")))),
            "{line}"
        );
        assert!(line.contains(" up up "), "{line}");
    }
}

#[test]
fn row_written_through_pgpool_reaches_every_standby() {
    let lab = Lab::up(LabOptions::default());
    let value = format!("row-{}", lab.name);
    lab.pgpool_sql("create table foundation_rows (v text primary key)")
        .unwrap_or_else(|e| panic!("create table through pgpool: {e}"));
    let back = lab
        .pgpool_sql(&format!(
            "insert into foundation_rows values ('{value}') returning v"
        ))
        .unwrap_or_else(|e| panic!("insert through pgpool: {e}"));
    assert_eq!(back, value);
    let query = format!("select count(*) from foundation_rows where v = '{value}'");
    assert_eq!(lab.try_psql_db("pg0", "app", &query).as_deref(), Ok("1"));
    for k in 1..=lab.standbys {
        let h = format!("pg{k}");
        lab.wait_observing(
            &format!("the row to replicate to {h}"),
            Duration::from_secs(15),
            || match lab.try_psql_db(&h, "app", &query) {
                Ok(c) if c == "1" => Ok(()),
                other => Err(other),
            },
        );
        assert_eq!(
            lab.psql(&h, "select pg_is_in_recovery()"),
            "t",
            "{h} is a standby"
        );
    }
}

/// A live process: pid, mount namespace (`readlink /proc/PID/ns/mnt`) and
/// start time in clock ticks since boot (`/proc/PID/stat` field 22).
#[derive(Debug)]
struct Proc {
    pid: u32,
    ns: String,
    started: u64,
}

fn processes() -> Vec<Proc> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(ns), Ok(stat)) = (
            std::fs::read_link(e.path().join("ns/mnt")),
            std::fs::read_to_string(e.path().join("stat")),
        ) else {
            continue;
        };
        // Fields after the command name, which may hold spaces: state is 3rd.
        let Some(started) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(19))
            .and_then(|t| t.parse().ok())
        else {
            continue;
        };
        v.push(Proc {
            pid,
            ns: ns.to_string_lossy().into_owned(),
            started,
        });
    }
    v
}

/// Now, in the clock ticks of `/proc/PID/stat`.
fn ticks_since_boot() -> u64 {
    let up = std::fs::read_to_string("/proc/uptime").expect("/proc/uptime");
    let secs: f64 = up.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (secs * hz) as u64
}

/// The lab's iptables rules live in INPUT (blackhole) and OUTPUT (cut).
fn iptables_rules() -> String {
    ["INPUT", "OUTPUT"]
        .iter()
        .map(|chain| {
            let o = std::process::Command::new("iptables")
                .args(["-S", chain])
                .output()
                .expect("run iptables -S");
            ok(&format!("iptables -S {chain}"), o)
        })
        .collect()
}

/// The cgroup2 directory of the lab's hosts (`pgha-lab/NAME`).
fn lab_cgroup(name: &str) -> std::path::PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let root = mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
        })
        .expect("a cgroup2 file system is mounted (the lab needs one)");
    std::path::Path::new(&root).join("pgha-lab").join(name)
}

/// Can `from` open a TCP connection to `to`:`port`, within 2 s?
fn connects(lab: &Lab, from: &str, to: &str, port: u16) -> bool {
    let probe = format!("exec 3<>/dev/tcp/{to}/{port}");
    lab.exec(from, &["timeout", "2", "bash", "-c", &probe])
        .status
        .success()
}

/// `lab.sh cut` drops what two hosts send each other, both ways and on
/// every address, and nothing else; `heal` undoes it.
#[test]
fn a_cut_separates_two_hosts_and_nothing_else() {
    let lab = Lab::up(LabOptions::default());
    let (pg1, pg2) = (lab.addr("pg1"), lab.addr("pg2"));
    assert!(connects(&lab, "pg1", &pg2, 22), "before the cut");
    lab.cut("pg1", &["pg2"]);
    assert!(!connects(&lab, "pg1", &pg2, 22), "pg1 -> pg2 after the cut");
    assert!(
        !connects(&lab, "pg1", &lab.repl_addr("pg2"), 22),
        "pg1 -> pg2's replication address"
    );
    assert!(
        !connects(&lab, "pg2", &pg1, 5432),
        "pg2 -> pg1 after the cut"
    );
    assert!(
        connects(&lab, "pg1", &lab.addr("pg0"), 5432),
        "pg1 -> pg0 is not cut"
    );
    assert!(connects(&lab, "app", &pg1, 5432), "app -> pg1 is not cut");
    assert!(connects(&lab, "app", &pg2, 5432), "app -> pg2 is not cut");
    // Every process of a host is in its cgroup, sshd and PostgreSQL too.
    let procs = std::fs::read_to_string(lab_cgroup(&lab.name).join("pg1/cgroup.procs")).unwrap();
    let postmaster =
        std::fs::read_to_string(lab.host_dir("pg1").join("home/15/main/postmaster.pid")).unwrap();
    let postmaster = postmaster.lines().next().unwrap();
    assert!(
        procs.lines().any(|p| p == postmaster),
        "pg1's postmaster {postmaster} in {procs}"
    );
    lab.heal("pg1", &["pg2"]);
    assert!(connects(&lab, "pg1", &pg2, 22), "pg1 -> pg2 after the heal");
    assert!(
        connects(&lab, "pg2", &pg1, 5432),
        "pg2 -> pg1 after the heal"
    );
}

#[test]
fn teardown_leaves_nothing_behind() {
    let lab = Lab::up(LabOptions::default());
    let name = lab.name.clone();
    let dir = lab.dir.clone();
    let net_dir = lab_root().join("nets").join(&lab.net);
    let tag = format!("pgha-lab:{name}");
    let target = lab.repl_addr("pg2"); // unused by pgpool and replication: no failover
    lab.blackhole(&target);
    lab.cut("pg1", &["pg2"]);
    let cgroup = lab_cgroup(&name);
    assert!(
        cgroup.join("app").is_dir(),
        "no cgroup {}",
        cgroup.display()
    );
    let rules = iptables_rules();
    assert!(
        rules
            .lines()
            .any(|r| r.contains(&tag) && r.contains(&target)),
        "blackhole of {target} added no rule tagged {tag}:\n{rules}"
    );

    let mut namespaces = BTreeSet::new();
    for h in lab.hosts() {
        let ns = std::fs::read_to_string(lab.host_dir(&h).join("mntns"))
            .unwrap_or_else(|e| panic!("{h} has no recorded mount namespace: {e}"));
        namespaces.insert(ns.trim().to_string());
    }
    assert_eq!(
        namespaces.len(),
        lab.hosts().len(),
        "hosts share a namespace"
    );
    let lab_pids: Vec<Proc> = processes()
        .into_iter()
        .filter(|p| namespaces.contains(&p.ns))
        .collect();
    // sshd per host, a postmaster and its workers per pg host, pgpool.
    assert!(
        lab_pids.len() > lab.hosts().len() + 2 * lab.pg_hosts().len(),
        "too few processes in the lab's namespaces: {lab_pids:?}"
    );
    let host_pids = lab.env.get("HOST_PIDS").cloned().unwrap_or_default();
    assert!(!host_pids.trim().is_empty(), "lab.env has no HOST_PIDS");
    let listening = [
        format!("{}:5432", lab.addr("pg0")),
        format!("{}:22", lab.addr("pg1")),
        format!("{}:9999", lab.addr("app")),
    ];
    for a in &listening {
        std::net::TcpStream::connect(a).unwrap_or_else(|e| panic!("{a} is not listening: {e}"));
    }

    let dropped_at = ticks_since_boot();
    drop(lab);

    // The kernel reuses a freed namespace's inode number for the next one
    // created, maybe by a lab of a test running alongside: only a process
    // that already existed before down can be a survivor.
    let left: Vec<Proc> = processes()
        .into_iter()
        .filter(|p| namespaces.contains(&p.ns) && p.started <= dropped_at)
        .collect();
    assert!(
        left.is_empty(),
        "processes of lab {name} survived down: {left:?}"
    );
    for hp in host_pids.split_whitespace() {
        let (h, pid) = hp.split_once('=').expect("HOST_PIDS holds HOST=PID");
        let pid: u32 = pid.parse().expect("HOST_PIDS holds numbers");
        assert!(
            !left.iter().any(|l| l.pid == pid) && lab_pids.iter().any(|p| p.pid == pid),
            "sshd of {h} (pid {pid}) was not in its host's namespace, or survived down"
        );
    }
    for a in &listening {
        assert!(
            std::net::TcpStream::connect(a).is_err(),
            "{a} still accepts connections after down"
        );
    }
    let rules = iptables_rules();
    assert!(
        !rules.contains(&tag),
        "iptables rules of lab {name} survived down:\n{rules}"
    );
    assert!(!dir.exists(), "{} survived down", dir.display());
    assert!(!cgroup.exists(), "{} survived down", cgroup.display());
    assert!(
        !net_dir.exists(),
        "address block {} is still reserved",
        net_dir.display()
    );
}
