//! systemd socket activation of the substituter: when systemd (a `nixmesh.socket` unit)
//! holds the listening socket and hands it to the node, the port stays open while the node
//! restarts, and Nix's requests in that gap wait in the socket's backlog instead of being
//! refused (which Nix would take as "this substituter is gone" for the rest of its run).
//!
//! The protocol is `sd_listen_fds(3)`'s: `LISTEN_PID` is this process, `LISTEN_FDS` says how
//! many sockets follow from descriptor 3. The node takes one, a listening TCP socket, and
//! only once per process; without those variables it binds its own listener as before.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;

/// The first descriptor systemd passes.
const LISTEN_FDS_START: RawFd = 3;

static TAKEN: AtomicBool = AtomicBool::new(false);

/// The socket systemd passed is not one the node can serve on.
#[derive(Debug, Error)]
pub enum ActivationError {
    #[error("LISTEN_FDS={0}: the node takes exactly one socket (the substituter's)")]
    Count(String),
    #[error("the socket passed by systemd (descriptor 3): {0}")]
    Socket(std::io::Error),
}

/// The listening socket systemd passed to this process, if it passed one; `None` when
/// `LISTEN_PID` is unset or another process's, or the socket was already taken.
pub fn inherited_listener() -> Result<Option<TcpListener>, ActivationError> {
    let for_us = std::env::var("LISTEN_PID").ok().and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    if !for_us {
        return Ok(None);
    }
    let count = std::env::var("LISTEN_FDS").unwrap_or_default();
    match count.parse::<u32>() {
        Ok(0) => return Ok(None),
        Ok(1) => {}
        _ => return Err(ActivationError::Count(count)),
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    // SAFETY: LISTEN_PID names this process, so descriptor 3 was opened by systemd for it
    // and nothing in the process owns it; TAKEN makes this the only owner ever made.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    check_listening_tcp(&fd).map_err(ActivationError::Socket)?;
    let listener = TcpListener::from(fd);
    listener.set_nonblocking(true).map_err(ActivationError::Socket)?;
    Ok(Some(listener))
}

/// An error unless `fd` is a listening stream socket of IPv4 or IPv6; also sets
/// close-on-exec, which systemd leaves off.
fn check_listening_tcp(fd: &OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    let option = |level, name| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the pointers are to locals of the sizes given.
        let rc = unsafe { libc::getsockopt(raw, level, name, (&raw mut value).cast(), &mut len) };
        if rc == 0 { Ok(value) } else { Err(std::io::Error::last_os_error()) }
    };
    let domain = option(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let kind = option(libc::SOL_SOCKET, libc::SO_TYPE)?;
    let listening = option(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)?;
    if !matches!(domain, libc::AF_INET | libc::AF_INET6)
        || kind != libc::SOCK_STREAM
        || listening != 1
    {
        return Err(std::io::Error::other(
            "not a listening TCP socket (ListenStream=ADDRESS:PORT)",
        ));
    }
    // SAFETY: F_SETFD on a descriptor we own.
    if unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
