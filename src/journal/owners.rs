//! Which processes using a SQLite journal are alive, told by the OS: each open journal
//! holds an exclusive lock on a file of its own beside the database, for as long as it
//! lives. The kernel lets go of a dead process's locks at once, so a lease held by a
//! process that died is taken over at once, not when it runs out. Also: whether a path
//! is on a network file system, where SQLite's own locks are not safe.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::JournalError;

/// This process's registration as a journal owner.
#[derive(Debug)]
pub(crate) struct Owner {
    id: String,
    dir: PathBuf,
    /// Held open, and locked, for the owner's life.
    _lock: Option<File>,
}

impl Owner {
    /// Registers a new owner beside the database at `db`, and removes the files of
    /// owners that are gone.
    pub(crate) fn register(db: &Path) -> Result<Self, JournalError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut dir = db.as_os_str().to_owned();
        dir.push(".owners");
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| JournalError::storage(format!("could not create {}", dir.display()), e))?;
        let lock = lock_new(&dir, &id)?;
        let owner = Self {
            id,
            dir,
            _lock: lock,
        };
        owner.sweep();
        Ok(owner)
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the lock files of owners that are gone.
    fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(other) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
                continue;
            };
            if other != self.id {
                let _ = is_gone(&self.dir, other);
            }
        }
    }
}

/// Whether the owner `id` is gone: its lock file is missing, or nobody holds its lock
/// (then the file is removed). `false` where the OS cannot tell.
pub(crate) fn is_gone(dir: &Path, id: &str) -> bool {
    let path = dir.join(format!("{id}.lock"));
    let Ok(file) = File::open(&path) else {
        return !path.exists() && cfg!(unix);
    };
    if try_lock(&file) {
        let _ = std::fs::remove_file(&path);
        true
    } else {
        false
    }
}

#[cfg(unix)]
fn try_lock(file: &File) -> bool {
    rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
}

#[cfg(not(unix))]
fn try_lock(_: &File) -> bool {
    false
}

/// Creates the owner's lock file, locked. It is made and locked under a name no sweep
/// looks at, then renamed into place (a rename is atomic, and the lock is the file's,
/// whatever its name): another process never sees an owner's `.lock` file unlocked
/// while that owner lives, so it never takes a live owner for gone.
fn lock_new(dir: &Path, id: &str) -> Result<Option<File>, JournalError> {
    let (file, making) = locked_unpublished(dir, id)?;
    let path = dir.join(format!("{id}.lock"));
    std::fs::rename(&making, &path)
        .map_err(|e| JournalError::storage(format!("could not create {}", path.display()), e))?;
    Ok(Some(file))
}

/// The first half of [`lock_new`]: the owner's file, locked, under the name no sweep
/// reads (`{id}.lock.new`), and that name.
fn locked_unpublished(dir: &Path, id: &str) -> Result<(File, PathBuf), JournalError> {
    let making = dir.join(format!("{id}.lock.new"));
    let file = File::create(&making)
        .map_err(|e| JournalError::storage(format!("could not create {}", making.display()), e))?;
    if cfg!(unix) && !try_lock(&file) {
        return Err(JournalError::Storage {
            reason: format!("could not lock {}", making.display()),
            source: None,
        });
    }
    Ok((file, making))
}

/// The network file system `dir` is on, if it is one SQLite cannot lock safely
/// (Linux: by the file system's magic number).
#[cfg(target_os = "linux")]
pub(crate) fn network_file_system(dir: &Path) -> Option<&'static str> {
    let stat = rustix::fs::statfs(dir).ok()?;
    // The magic numbers of linux/magic.h, compared as the unsigned 32 bits they are.
    #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
    let magic = stat.f_type as u32;
    kind_of(magic)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn network_file_system(_: &Path) -> Option<&'static str> {
    None
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn kind_of(magic: u32) -> Option<&'static str> {
    Some(match magic {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x5346_414F => "AFS",
        0x00C3_6400 => "CephFS",
        0x0102_1997 => "9P",
        0x4750_4653 => "GPFS",
        0x0BD0_0BD0 => "Lustre",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_file_systems_are_told_by_their_magic() {
        assert_eq!(kind_of(0x6969), Some("NFS"));
        assert_eq!(kind_of(0xFF53_4D42), Some("CIFS"));
        // ext4 and tmpfs are local.
        assert_eq!(kind_of(0xEF53), None);
        assert_eq!(kind_of(0x0102_1994), None);
    }

    #[test]
    fn the_temp_dir_is_local() {
        assert_eq!(network_file_system(&std::env::temp_dir()), None);
    }

    #[cfg(unix)]
    #[test]
    fn an_owner_is_alive_while_registered_and_gone_after() {
        let db = std::env::temp_dir().join(format!("owners-{}.db", uuid::Uuid::new_v4().simple()));
        let owner = Owner::register(&db).unwrap();
        let (dir, id) = (owner.dir().to_owned(), owner.id().to_owned());
        assert!(!is_gone(&dir, &id), "its lock is held");
        drop(owner);
        assert!(is_gone(&dir, &id), "the lock went with it");
        assert!(
            !dir.join(format!("{id}.lock")).exists(),
            "and its file is removed"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_lock_file_appears_only_once_it_is_locked() {
        let db = std::env::temp_dir().join(format!("owners-{}.db", uuid::Uuid::new_v4().simple()));
        let owner = Owner::register(&db).unwrap();
        let dir = owner.dir().to_owned();
        // Another registration half done: its file exists, and is already locked,
        // before it gets the name other processes look at.
        let (file, making) = locked_unpublished(&dir, "other").unwrap();
        let probe = File::open(&making).unwrap();
        assert!(!try_lock(&probe), "locked before it is published");
        drop(probe);
        // A sweep by a third process meanwhile leaves it alone.
        let third = Owner::register(&db).unwrap();
        assert!(making.exists(), "a registration under way is never swept");
        std::fs::rename(&making, dir.join("other.lock")).unwrap();
        assert!(!is_gone(&dir, "other"), "alive under its final name");
        drop(file);
        assert!(is_gone(&dir, "other"), "gone once its lock is");
        for id in [owner.id(), third.id()] {
            assert!(!dir.join(format!("{id}.lock.new")).exists());
            assert!(!is_gone(&dir, id), "each is locked under its final name");
        }
        drop((owner, third));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
