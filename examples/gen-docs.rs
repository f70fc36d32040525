//! Man pages and shell completions of the five binaries, generated from the
//! clap definitions in `src/cli.rs` (so they cannot drift from `--help`).
//!
//! ```text
//! cargo run --example gen-docs -- OUTDIR
//! ```
//!
//! writes, with the names Debian's directories expect:
//! - `OUTDIR/man1/pgha-*.1` (section 1),
//! - `OUTDIR/bash/pgha-*` (for `/usr/share/bash-completion/completions`),
//! - `OUTDIR/zsh/_pgha-*` (for `/usr/share/zsh/vendor-completions`),
//! - `OUTDIR/fish/pgha-*.fish` (for `/usr/share/fish/vendor_completions.d`).
//!
//! `SOURCE_DATE_EPOCH`, when set, dates the man pages (reproducible builds).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use pgha::cli::{AttachArgs, CheckArgs, FailoverArgs, FollowArgs, SwitchoverArgs};

/// What every page adds after clap's sections: the files pgha reads and the
/// related pages.
fn files_and_see_also(name: &str) -> String {
    let others: Vec<String> = [
        "pgha-failover",
        "pgha-follow",
        "pgha-attach",
        "pgha-check",
        "pgha-switchover",
    ]
    .iter()
    .filter(|n| **n != name)
    .map(|n| format!(".BR {n} (1),"))
    .collect();
    format!(
        ".SH FILES\n\
         .TP\n/etc/pgha/pgha.toml\n\
         pgha's settings (ssh, PostgreSQL binaries and users, PCP, deadlines, policies); \
         overridden by \\fB\\-\\-config\\fR or \\fBPGHA_CONFIG\\fR.\n\
         .TP\n/etc/pgpool2/pgpool.conf\n\
         pgpool\\-II's configuration, the source of the backends (pgha.toml \\fBpgpool_conf\\fR).\n\
         .TP\n~/.pgpass, ~/.pcppass\n\
         PostgreSQL and PCP passwords of the user running pgha (mode 0600).\n\
         .TP\n/var/lib/pgha\n\
         lock and journal (pgha.toml \\fBstate_dir\\fR).\n\
         .SH SEE ALSO\n{}\n.BR pgpool (8)\n",
        others.join("\n")
    )
}

/// `SOURCE_DATE_EPOCH` as YYYY-MM-DD (civil date from days since 1970).
fn source_date() -> Option<String> {
    let secs: i64 = std::env::var("SOURCE_DATE_EPOCH")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    Some(format!("{y:04}-{m:02}-{d:02}"))
}

fn write(path: &Path, data: &[u8]) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    println!("{}", path.display());
}

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/debian/docs".into()),
    );
    let version = env!("CARGO_PKG_VERSION");
    let commands = [
        FailoverArgs::command(),
        FollowArgs::command(),
        AttachArgs::command(),
        CheckArgs::command(),
        SwitchoverArgs::command(),
    ];
    for cmd in commands {
        let name = cmd.get_name().to_string();
        let mut man = clap_mangen::Man::new(cmd.clone())
            .section("1")
            .source(format!("pgha {version}"))
            .manual("pgha manual");
        if let Some(d) = source_date() {
            man = man.date(d);
        }
        let mut page = Vec::new();
        man.render(&mut page).expect("render man page");
        page.write_all(files_and_see_also(&name).as_bytes())
            .expect("append to man page");
        write(&out.join("man1").join(format!("{name}.1")), &page);

        for (shell, dir, file) in [
            (Shell::Bash, "bash", name.clone()),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), &name, &mut buf);
            write(&out.join(dir).join(file), &buf);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        // SAFETY: single-threaded test; nothing else reads the variable.
        unsafe { std::env::set_var("SOURCE_DATE_EPOCH", "1700000000") };
        assert_eq!(super::source_date().as_deref(), Some("2023-11-14"));
        unsafe { std::env::set_var("SOURCE_DATE_EPOCH", "0") };
        assert_eq!(super::source_date().as_deref(), Some("1970-01-01"));
    }
}
