//! Writing secret files: mode 0600, written to a temporary name in the same
//! directory, synced, then renamed into place, so a reader never sees half a
//! key and no other local user can ever read one.
//!
//! Rule enforced: key material on disk is readable by its owner only, and a
//! crash never leaves a truncated key under the real name.
//!
//! Also the directories that hold keys, the audit store and policy
//! ([`ensure_private_dir`]: 0700 whatever the umask, tightened with a warning
//! when looser), and the check that a file we take instructions from (a
//! manifest) could not have been written by another local user
//! ([`check_trusted`]).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` with the given Unix `mode`, atomically.
///
/// Rule: only a regular file (or a symbolic link) is replaced; a device,
/// socket, pipe or directory in the way is refused, never swapped for a
/// file (as root, `-o /dev/null` would otherwise replace the device).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_symlink() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a regular file (a device, socket, pipe or directory): not replaced",
                    path.display()
                ),
            ));
        }
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name")
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    // Unique per call, so concurrent writers of one path never share a temp file.
    let mut nonce = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| std::io::Error::other("the system random generator failed"))?;
    tmp_name.push(format!(
        ".tmp-{}-{:016x}",
        std::process::id(),
        u64::from_le_bytes(nonce)
    ));
    let tmp: PathBuf = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` above is filtered by the umask and ignored for an existing file.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes a secret (private key, token) readable by the owner only.
pub fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Writes a public file (certificate, bundle), atomically, mode 0644.
pub fn write_public(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic(path, bytes, 0o644)
}

/// Whether `path` (with its metadata `meta`) could only have been written by
/// this process's user or root: not group- or world-writable, owned by us or
/// by root. The error says which, and what to do.
pub fn check_trusted(path: &Path, meta: &fs::Metadata) -> Result<(), String> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "its group and every local user",
            (true, false) => "its group",
            _ => "every local user",
        };
        return Err(format!(
            "{} is writable by {who} (mode {mode:04o}); run `chmod go-w {}`",
            path.display(),
            path.display()
        ));
    }
    let owner = meta.uid();
    match crate::proc_self::effective_uid() {
        Some(me) if owner != me && owner != 0 => Err(format!(
            "{} is owned by uid {owner}, not by this process's user (uid {me}) or root",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// Creates `dir` (and missing parents) with mode 0700, whatever the umask.
/// An existing directory looser than 0700 is tightened, with a warning; one
/// owned by another user is refused. Rule enforced: the data directory,
/// `manifests/` and `--write-certs` directories are the owner's alone.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = fs::metadata(dir)?;
    let owner = meta.uid();
    if let Some(me) = crate::proc_self::effective_uid().filter(|me| *me != owner && owner != 0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {owner}, not by this process's user (uid {me}) or root",
                dir.display()
            ),
        ));
    }
    tighten(dir, &meta, 0o700)
}

/// Sets `path` to `mode` if its permissions are looser, warning once.
pub fn tighten(path: &Path, meta: &fs::Metadata, mode: u32) -> std::io::Result<()> {
    let current = meta.mode() & 0o777;
    if current & !mode != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        tracing::warn!(
            path = %path.display(),
            was = %format!("{current:04o}"),
            now = %format!("{mode:04o}"),
            "tightened permissions: it was readable or writable by other local users"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_or_directory_in_the_way_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let err = write_secret(&socket, b"token").unwrap_err();
        assert!(err.to_string().contains("is not a regular file"), "{err}");
        assert!(std::os::unix::fs::FileTypeExt::is_socket(
            &fs::symlink_metadata(&socket).unwrap().file_type()
        ));
        let sub = dir.path().join("d");
        fs::create_dir(&sub).unwrap();
        assert!(write_public(&sub, b"x").is_err());
        assert!(sub.is_dir());
    }

    #[test]
    fn secret_is_written_owner_only_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_secret(&path, b"secret").unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"secret");
        // Overwriting an existing, more open file still ends at 0600.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_secret(&path, b"other").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read(&path).unwrap(), b"other");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_into_missing_directory_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("key.pem");
        assert!(write_secret(&path, b"x").is_err());
    }

    #[test]
    fn private_dirs_are_0700_whatever_the_umask_and_looser_ones_are_tightened() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data").join("manifests");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        // As a umask of 000 would leave it.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        ensure_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_file_owned_by_another_user_is_not_trusted() {
        if crate::proc_self::effective_uid() != Some(0) {
            eprintln!("skipped: changing a file's owner needs root");
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let file = base.path().join("pod.yaml");
        fs::write(&file, "x").unwrap();
        std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
        let err = check_trusted(&file, &fs::metadata(&file).unwrap()).unwrap_err();
        assert!(err.contains("owned by uid 65534"), "{err}");
    }

    #[test]
    fn files_writable_by_others_are_not_trusted_and_the_error_says_why() {
        let base = tempfile::tempdir().unwrap();
        let file = base.path().join("pod.yaml");
        fs::write(&file, "x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_trusted(&file, &fs::metadata(&file).unwrap()).is_ok());
        for (mode, who) in [
            (0o666, "its group and every local user"),
            (0o664, "its group"),
            (0o646, "every local user"),
        ] {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            let err = check_trusted(&file, &fs::metadata(&file).unwrap()).unwrap_err();
            assert!(err.contains(who) && err.contains("chmod go-w"), "{err}");
        }
    }
}
