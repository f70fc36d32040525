//! Every binary explains itself, and refuses bad arguments and broken
//! configuration with a clear message and a non-zero exit, before touching
//! anything. No lab needed: these run against files in a temp directory.

use std::path::Path;

use crate::util::cmd::Cmd;

const BINARIES: [&str; 5] = [
    "pgha-failover",
    "pgha-follow",
    "pgha-attach",
    "pgha-check",
    "pgha-switchover",
];

/// A pgpool.conf with three backends and a pgha.toml pointing at it; the
/// state dir inside `dir` must stay absent when a command refuses to act.
fn config(dir: &Path, pgha_extra: &str) -> std::path::PathBuf {
    let pool = dir.join("pgpool.conf");
    std::fs::write(
        &pool,
        "backend_hostname0 = '127.0.250.2'\nbackend_port0 = 5432\n\
         backend_hostname1 = '127.0.250.3'\n\
         backend_hostname2 = '127.0.250.4'\n",
    )
    .unwrap();
    let toml = dir.join("pgha.toml");
    std::fs::write(
        &toml,
        format!(
            "pgpool_conf = \"{}\"\nstate_dir = \"{}\"\n{pgha_extra}",
            pool.display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    toml
}

#[test]
fn every_binary_explains_itself() {
    for bin in BINARIES {
        let run = Cmd::new(bin).arg("--help").run();
        run.success()
            .stdout_contains("Usage:")
            .stdout_contains("Exit status:");
        assert!(
            run.stdout().len() > 600,
            "{bin} --help is too thin:\n{}",
            run.stdout()
        );
        Cmd::new(bin)
            .arg("--version")
            .run()
            .success()
            .stdout_contains(env!("CARGO_PKG_VERSION"));
    }
    Cmd::new("pgha-failover")
        .arg("--help")
        .run()
        .stdout_contains("failover_command")
        .stdout_contains("%d %M %m");
    Cmd::new("pgha-follow")
        .arg("--help")
        .run()
        .stdout_contains("follow_primary_command");
}

#[test]
fn wrong_arguments_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let run = |args: &[&str]| {
        Cmd::new("pgha-failover")
            .args(args)
            .env("PGHA_CONFIG", &cfg)
            .run()
    };
    run(&["0", "1"]).code(2).stderr_contains("NEW_MAIN");
    run(&["0", "1", "2", "3"]).code(2);
    run(&["x", "0", "1"])
        .code(2)
        .stderr_contains("'x' is not a node id");
    run(&["0", "0", "1", "--no-such-flag"]).code(2);
    run(&["7", "0", "1"])
        .code(2)
        .stderr_contains("unknown node id 7")
        .stderr_contains("backends 0, 1, 2");
    Cmd::new("pgha-attach").run().code(2);
    Cmd::new("pgha-follow").args(["a"]).run().code(2);
    assert!(!dir.path().join("state").exists(), "nothing may be written");
}

/// The start guard and the fence on a database host: bad input is named
/// and exits non-zero; a data directory that starts as a standby may start
/// without asking anyone.
#[test]
fn start_guard_and_fence_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("main");
    std::fs::create_dir(&data).unwrap();
    let cfg = config(
        dir.path(),
        &format!("[nodes.0]\ndata_directory = \"{}\"\n", data.display()),
    );
    let check = |args: &[&str]| {
        Cmd::new("pgha-check")
            .args(args)
            .env("PGHA_CONFIG", &cfg)
            .run()
    };
    check(&["--start-guard", "7"])
        .code(2)
        .stderr_contains("unknown node id 7");
    check(&["--fence", "7"])
        .code(2)
        .stderr_contains("unknown node id 7");
    check(&["--start-guard", "1"])
        .code(2)
        .stderr_contains("node 1 (127.0.250.3:5432) has no data directory");
    check(&["--fence", "0", "--interval", "0s"])
        .code(2)
        .stderr_contains("--interval must be more than 0s");
    check(&["--start-guard", "0", "--watch"]).code(2);
    // Not a data directory: pg_controldata fails, and the line says where.
    check(&["--start-guard", "0"])
        .code(1)
        .stderr_contains("start guard of node 0")
        .stderr_contains("pg_controldata")
        .stderr_contains(&data.display().to_string());
    std::fs::write(data.join("standby.signal"), "").unwrap();
    check(&["--start-guard", "0"]).success().stderr_contains(
        "OK: node 0 (127.0.250.2:5432) may start: it starts as a standby (standby.signal)",
    );
    assert!(!dir.path().join("state").exists(), "nothing may be written");
}

#[test]
fn broken_configuration_is_named_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[ssh]\nconect_timeout = \"3s\"\n");
    Cmd::new("pgha-failover")
        .args(["0", "0", "1", "--config"])
        .arg(&cfg)
        .run()
        .code(3)
        .stderr_contains(&format!("{}:4", cfg.display()))
        .stderr_contains("conect_timeout")
        .stderr_lacks("panicked");

    let cfg = config(dir.path(), "[failover]\ndeadline = \"60\"\n");
    Cmd::new("pgha-failover")
        .args(["0", "0", "1"])
        .env("PGHA_CONFIG", &cfg)
        .run()
        .code(3)
        .stderr_contains("deadline");

    // A config that names a missing pgpool.conf.
    std::fs::write(&cfg, "pgpool_conf = \"/nonexistent/pgpool.conf\"\n").unwrap();
    for bin in BINARIES {
        let args: &[&str] = if bin == "pgha-failover" {
            &["0", "0", "1"]
        } else if bin == "pgha-check" || bin == "pgha-switchover" {
            &[]
        } else {
            &["1"]
        };
        Cmd::new(bin)
            .args(args)
            .env("PGHA_CONFIG", &cfg)
            .run()
            .code(3)
            .stderr_contains("/nonexistent/pgpool.conf");
    }

    // A malformed pgpool.conf: the line is named.
    let pool = dir.path().join("pgpool.conf");
    std::fs::write(
        &pool,
        "backend_hostname0 = '127.0.250.2'\nbackend_port0 = 'abc'\n",
    )
    .unwrap();
    let cfg = config(dir.path(), "");
    std::fs::write(
        &pool,
        "backend_hostname0 = '127.0.250.2'\nbackend_port0 = 'abc'\n",
    )
    .unwrap();
    Cmd::new("pgha-failover")
        .args(["0", "0", "1", "--json"])
        .env("PGHA_CONFIG", &cfg)
        .run()
        .code(3)
        .stderr_contains(&format!("{}:2", pool.display()))
        .stdout_contains("\"outcome\":\"error\"");
    assert!(!dir.path().join("state").exists(), "nothing may be written");
}

#[test]
fn explicit_config_that_does_not_exist() {
    Cmd::new("pgha-failover")
        .args(["0", "0", "1", "--config", "/nonexistent/pgha.toml"])
        .run()
        .code(3)
        .stderr_contains("/nonexistent/pgha.toml");
}

/// A backend_hostname or ssh_host that ssh would read as an option is
/// refused at load, exit 3, naming the file, line and key, by every binary;
/// the option never runs.
#[test]
fn hostile_hostnames_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("ran");
    let cfg = config(dir.path(), "");
    let pool = dir.path().join("pgpool.conf");
    std::fs::write(
        &pool,
        format!(
            "backend_hostname0 = '127.0.250.2'\nbackend_hostname1 = '-oProxyCommand=touch {}'\n",
            planted.display()
        ),
    )
    .unwrap();
    for bin in BINARIES {
        let args: &[&str] = match bin {
            "pgha-failover" => &["0", "0", "1"],
            "pgha-check" | "pgha-switchover" => &[],
            _ => &["1"],
        };
        Cmd::new(bin)
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .run()
            .code(3)
            .stderr_contains(&format!("{}:2", pool.display()))
            .stderr_contains("backend_hostname1");
    }
    // The same through pgha.toml.
    std::fs::write(&pool, "backend_hostname0 = '127.0.250.2'\n").unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[nodes.0]\nssh_host = \"-oProxyCommand=touch {}\"\n",
            planted.display()
        ),
    );
    Cmd::new("pgha-check")
        .arg("--config")
        .arg(&cfg)
        .run()
        .code(3)
        .stderr_contains("nodes.0.ssh_host");
    assert!(!planted.exists(), "the planted ssh option ran");
    assert!(!dir.path().join("state").exists(), "nothing may be written");
}
