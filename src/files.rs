//! Local files and directories, opened so that nothing planted in them can
//! hang or redirect pgha: regular files only, opened non-blocking (a FIFO
//! never blocks the open), bounded in size (`/dev/zero` never fills the
//! memory), links refused where pgha creates files, and directories that
//! other users could write refused.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

/// The largest configuration file pgha reads (pgha.toml, pgpool.conf,
/// .pcppass): pgpool's own sample is about 50 kB.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Open `path` for reading without blocking (`O_NONBLOCK`, so a FIFO with no
/// writer does not hang the open) and insist it is a regular file.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", kind(&meta)),
        ));
    }
    Ok(file)
}

/// The contents of the regular file `path`, at most `max` bytes: longer is
/// an error, not a truncated read.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let mut data = Vec::new();
    file.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes, too large for a configuration file"),
        ));
    }
    Ok(data)
}

/// What kind of file `meta` describes, for messages.
pub fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a regular file"
    }
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why the directory `path` is unsafe for pgha's private files (`None`: it
/// is safe): it must be a real directory (not a link), owned by this user
/// (or by root), and writable by nobody else. Another user who can write
/// there can plant FIFOs and links under the names pgha uses.
pub fn private_dir_problem(path: &Path) -> Option<String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot inspect it: {e}")),
    };
    if meta.file_type().is_symlink() {
        return Some("it is a symbolic link; name the real directory".into());
    }
    if !meta.is_dir() {
        return Some(format!("it is {}, not a directory", kind(&meta)));
    }
    let me = euid();
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!(
            "it is owned by uid {}, not by uid {me} who runs pgha; chown it or use a directory of your own",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "its mode {mode:04o} lets other users write into it; chmod go-w it or use a private directory"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("pgpool.conf");
        mkfifo(&fifo);
        let e = read_regular(&fifo, MAX_CONFIG_BYTES).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        let e = read_regular(Path::new("/dev/zero"), MAX_CONFIG_BYTES).unwrap_err();
        assert!(e.to_string().contains("a device"), "{e}");
        let e = read_regular(d.path(), MAX_CONFIG_BYTES).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
    }

    #[test]
    fn sizes_are_bounded() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("big");
        std::fs::write(&f, vec![b'#'; 100]).unwrap();
        assert_eq!(read_regular(&f, 100).unwrap().len(), 100);
        let e = read_regular(&f, 99).unwrap_err();
        assert!(e.to_string().contains("larger than 99 bytes"), "{e}");
    }

    #[test]
    fn shared_or_linked_directories_are_not_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ctl");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(private_dir_problem(&p), None);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(private_dir_problem(&p).unwrap().contains("mode 1777"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(private_dir_problem(&p).unwrap().contains("chmod go-w"));
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(
            private_dir_problem(&link)
                .unwrap()
                .contains("symbolic link")
        );
        assert!(
            private_dir_problem(&d.path().join("none"))
                .unwrap()
                .contains("cannot inspect")
        );
        assert!(
            private_dir_problem(Path::new("/tmp"))
                .unwrap()
                .contains("1777")
        );
    }
}
