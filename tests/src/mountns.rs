//! A program run in a mount namespace of its own, on a host: the machine's files as another
//! machine would have them, for the process alone. What the installer's tests need: the
//! stock NixOS installer has no `/lib` (a dynamically linked binary cannot start there) and
//! NixOS's `/etc/nsswitch.conf`; a custom image keeps the node's state in `/run` and its
//! store in `/nix`.
//!
//! The namespaces are entered between `fork` and `exec` (`pre_exec`), so nothing runs in
//! them before the program itself: with `/lib` hidden, no dynamically linked helper (`ip`,
//! `mount`, `sh`) could run there anyway. Every mount is made after the whole tree is made
//! private, so none propagates to the machine's own namespace; they all go when the
//! program exits.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::netns::Host;

/// What the program's mount namespace has in place of the machine's.
#[derive(Clone, Debug)]
pub struct MountNamespace {
    /// The network namespace to join: the host's (`/run/netns/NAME`), none for the machine.
    netns: Option<PathBuf>,
    /// An empty directory, bound over what is hidden.
    empty: PathBuf,
    steps: Vec<Step>,
}

#[derive(Clone, Debug)]
enum Step {
    /// `from` bound over `to` (a file over a file, a directory over a directory).
    Bind { from: CString, to: CString },
    /// A new, empty tmpfs at `at`.
    Tmpfs { at: CString },
    /// A directory made (after the mounts before it) with `mode`.
    Mkdir { path: CString, mode: libc::mode_t },
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("a path without NUL bytes")
}

impl MountNamespace {
    /// A namespace like the machine's, on `host` (in its network namespace, unless it is
    /// [`Host::local`]); `scratch` is a directory of the test's, where an empty directory is
    /// made to hide others with.
    pub fn on(host: &Host, scratch: &Path) -> MountNamespace {
        let empty = scratch.join("empty");
        std::fs::create_dir_all(&empty).expect("creating an empty directory");
        let netns = (!host.netns().is_empty()).then(|| Path::new("/run/netns").join(host.netns()));
        MountNamespace { netns, empty, steps: Vec::new() }
    }

    /// Hides the directory `dir` (an empty one over it). A symbolic link is followed, so
    /// hiding `/lib` where it links to `/usr/lib` hides `/usr/lib`; a `dir` that does not
    /// exist is left alone (there is nothing to hide).
    pub fn hide(mut self, dir: &Path) -> MountNamespace {
        if let Ok(real) = dir.canonicalize() {
            let to = c_path(&real);
            if !self.steps.iter().any(|s| matches!(s, Step::Bind { to: t, .. } if *t == to)) {
                self.steps.push(Step::Bind { from: c_path(&self.empty), to });
            }
        }
        self
    }

    /// Binds `from` over `to`, which must exist (a file for a file).
    pub fn bind(mut self, from: &Path, to: &Path) -> MountNamespace {
        self.steps.push(Step::Bind { from: c_path(from), to: c_path(to) });
        self
    }

    /// A new, empty tmpfs over the directory `at`.
    pub fn tmpfs(mut self, at: &Path) -> MountNamespace {
        self.steps.push(Step::Tmpfs { at: c_path(at) });
        self
    }

    /// Makes the directory `path` with `mode`, inside what was mounted before.
    pub fn mkdir(mut self, path: &Path, mode: u32) -> MountNamespace {
        self.steps.push(Step::Mkdir { path: c_path(path), mode });
        self
    }

    /// A command that runs `program` in this namespace. `program` is looked up before the
    /// namespace is entered (its path as the machine has it).
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        let netns = self.netns.as_deref().map(c_path);
        let steps = self.steps.clone();
        // SAFETY: the closure runs in the child between fork and exec; it only makes system
        // calls on strings prepared before the fork (no allocation, no lock).
        unsafe {
            cmd.pre_exec(move || enter(netns.as_ref(), &steps));
        }
        cmd
    }
}

/// The child's side of [`MountNamespace::command`]. Async-signal-safe: system calls only, on
/// strings made before the fork; a failing step writes what it was to stderr (which the
/// test's log keeps) before failing.
fn enter(netns: Option<&CString>, steps: &[Step]) -> std::io::Result<()> {
    fn check(result: libc::c_int, what: &[u8], path: &CStr) -> std::io::Result<()> {
        if result >= 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        let path = path.to_bytes();
        // SAFETY: writes of valid buffers to the child's stderr.
        unsafe {
            libc::write(2, what.as_ptr().cast(), what.len());
            libc::write(2, path.as_ptr().cast(), path.len());
            libc::write(2, c"\n".as_ptr().cast(), 1);
        }
        Err(error)
    }
    let none = std::ptr::null::<libc::c_char>();
    let no_data = std::ptr::null::<libc::c_void>();
    // SAFETY: system calls on NUL-terminated strings that outlive them.
    unsafe {
        if let Some(netns) = netns {
            let fd = libc::open(netns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            check(fd, b"mountns: opening ", netns)?;
            check(libc::setns(fd, libc::CLONE_NEWNET), b"mountns: joining ", netns)?;
            libc::close(fd);
        }
        check(libc::unshare(libc::CLONE_NEWNS), b"mountns: unshare for ", c"/")?;
        let private = libc::MS_REC | libc::MS_PRIVATE;
        check(
            libc::mount(none, c"/".as_ptr(), none, private, no_data),
            b"mountns: private ",
            c"/",
        )?;
        if netns.is_some() {
            // The network namespace's own /sys (its interfaces), as `ip netns exec` mounts it.
            let sys = c"/sys";
            check(libc::umount2(sys.as_ptr(), libc::MNT_DETACH), b"mountns: unmounting ", sys)?;
            let sysfs = c"sysfs".as_ptr();
            check(libc::mount(sysfs, sys.as_ptr(), sysfs, 0, no_data), b"mountns: mounting ", sys)?;
        }
        for step in steps {
            match step {
                Step::Bind { from, to } => check(
                    libc::mount(from.as_ptr(), to.as_ptr(), none, libc::MS_BIND, no_data),
                    b"mountns: binding over ",
                    to,
                )?,
                Step::Tmpfs { at } => {
                    let tmpfs = c"tmpfs".as_ptr();
                    check(
                        libc::mount(tmpfs, at.as_ptr(), tmpfs, 0, no_data),
                        b"mountns: tmpfs at ",
                        at,
                    )?
                }
                Step::Mkdir { path, mode } => {
                    check(libc::mkdir(path.as_ptr(), *mode), b"mountns: mkdir ", path)?;
                    // mkdir applies the umask; the mode is the one asked for.
                    check(libc::chmod(path.as_ptr(), *mode), b"mountns: chmod ", path)?;
                }
            }
        }
    }
    Ok(())
}
