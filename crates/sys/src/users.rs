//! The passwd and group databases (through the C library, so NSS sources count): who a uid
//! is, and which groups a user is in.

use std::ffi::{CStr, CString};
use std::io;

/// A user's entry in the passwd database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    /// The user's primary group.
    pub gid: u32,
}

/// Largest buffer the lookups grow to (the C library asks for more with ERANGE).
const MAX_BUF: usize = 1 << 20;

/// getpwuid_r(3): the passwd entry of `uid`, `None` when there is none.
pub fn user_by_uid(uid: u32) -> io::Result<Option<PasswdEntry>> {
    let mut len = 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; len];
        // SAFETY: an all-zero passwd (null pointers, zero ids) is a valid value of the plain
        // C struct; getpwuid_r fills it in.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `pw`, `buf` (of `buf.len()` bytes) and `found` are ours and live across the
        // call; the strings the entry points to are stored in `buf`.
        let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
        match rc {
            0 if found.is_null() => return Ok(None),
            0 => {
                // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`,
                // which is still alive.
                let name = unsafe { CStr::from_ptr(pw.pw_name) };
                return Ok(Some(PasswdEntry {
                    name: name.to_string_lossy().into_owned(),
                    uid: pw.pw_uid,
                    gid: pw.pw_gid,
                }));
            }
            libc::ERANGE if len < MAX_BUF => len *= 4,
            // "Not found" as the C library may report it for some NSS sources.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// getgrouplist(3): the groups of user `name` whose primary group is `gid` (`gid` included),
/// from the group database.
pub fn group_list(name: &str, gid: u32) -> io::Result<Vec<u32>> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut len: usize = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; len];
        let mut n = libc::c_int::try_from(len).unwrap_or(libc::c_int::MAX);
        // SAFETY: `cname` is NUL-terminated; `groups` has room for `n` gids, and `n` is ours;
        // getgrouplist writes at most `n` gids and stores the number it found in `n`.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        let found = usize::try_from(n).unwrap_or(0);
        if rc >= 0 {
            groups.truncate(found.min(len));
            return Ok(groups);
        }
        // Too small: `n` says how many there are.
        let want = found.max(len * 2);
        if want > 1 << 16 {
            return Err(io::Error::from_raw_os_error(libc::ERANGE));
        }
        len = want;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_an_unused_uid() {
        let root = user_by_uid(0).unwrap().expect("uid 0 has a passwd entry");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(root.name, "root");
        let groups = group_list(&root.name, root.gid).unwrap();
        assert!(groups.contains(&0), "{groups:?}");
        assert_eq!(user_by_uid(3_999_999_917).unwrap(), None);
    }
}
