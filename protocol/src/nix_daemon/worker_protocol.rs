//! The nix-daemon's worker protocol, as far as nixmesh speaks it: constants, version gates,
//! the bounds a client puts on what it reads, and the requests it sends (Nix's
//! `worker-protocol.hh`, with `remote-store.cc` as the client and `daemon.cc` as the server).
//! The I/O, the handshake and the reading of answers are the node's (`node/src/store/`).
//!
//! The protocol version is negotiated, never assumed: the client sends [`MAX_MINOR`], the
//! daemon its own, and every version-dependent field follows the smaller of the two. Below
//! [`MIN_MINOR`] the daemon is refused, which drops branches for fields older than that (the
//! `valid` flag of `QueryPathInfo` is 1.17, `ultimate`/`sigs`/`ca` 1.16).

use super::{put_bytes, put_u64};

/// What the client sends first (`WORKER_MAGIC_1`, "cxin").
pub const CLIENT_MAGIC: u64 = 0x6e69_7863;
/// What the daemon answers (`WORKER_MAGIC_2`, "oixd").
pub const DAEMON_MAGIC: u64 = 0x6478_696f;
/// The protocol major version; a daemon with another one is refused.
pub const PROTOCOL_MAJOR: u64 = 1;
/// The newest minor version this client speaks. 1.35 adds the trust flag to the handshake;
/// 1.38 adds a feature exchange we do not implement.
pub const MAX_MINOR: u64 = 35;
/// The oldest minor version accepted (1.21 is Nix 2.0).
pub const MIN_MINOR: u64 = 21;

/// The minor versions from which a field or a form is on the wire.
pub mod since {
    /// The client sends its CPU affinity (obsolete: always "none").
    pub const AFFINITY: u64 = 14;
    /// The client sends `reserveSpace` (obsolete: always false).
    pub const RESERVE_SPACE: u64 = 11;
    /// `STDERR_ERROR` carries a structured error, not `message status`.
    pub const STRUCTURED_ERRORS: u64 = 26;
    /// The daemon sends its Nix version in the handshake.
    pub const DAEMON_VERSION: u64 = 33;
    /// The daemon says whether it trusts the client in the handshake.
    pub const TRUST_FLAG: u64 = 35;
}

/// Worker operations, from `worker-protocol.hh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Op {
    QueryAllValidPaths = 23,
    QueryPathInfo = 26,
    QueryPathFromHashPart = 29,
    NarFromPath = 38,
}

/// The messages that precede an answer, from `worker-protocol.hh`.
pub mod stderr {
    pub const NEXT: u64 = 0x6f6c_6d67;
    pub const READ: u64 = 0x6461_7461;
    pub const WRITE: u64 = 0x6461_7416;
    pub const LAST: u64 = 0x616c_7473;
    pub const ERROR: u64 = 0x6378_7470;
    pub const START_ACTIVITY: u64 = 0x5354_5254;
    pub const STOP_ACTIVITY: u64 = 0x5354_4f50;
    pub const RESULT: u64 = 0x5253_4c54;
}

/// The longest store path a client reads (Nix's own limit is far below: a name is at most
/// 211 characters), generous so that stores in other directories fit.
pub const MAX_STORE_PATH_LEN: usize = 4096;
/// The most paths `QueryAllValidPaths` may list.
pub const MAX_PATHS: usize = 10_000_000;
/// The most references one path may have.
pub const MAX_REFERENCES: usize = 1_000_000;
/// The longest log line or error message accepted.
pub const MAX_TEXT_LEN: usize = 64 << 20;
/// The longest short string (hash, signature, content address, version) accepted.
pub const MAX_SHORT_LEN: usize = 64 << 10;
/// The most signatures one path may have.
pub const MAX_SIGNATURES: usize = 4096;
/// The most fields in one activity message, and the most traces in one error.
pub const MAX_FIELDS: usize = 4096;

/// The client's greeting: the magic and the newest version it speaks.
pub fn hello() -> Vec<u8> {
    let mut hello = Vec::new();
    put_u64(&mut hello, CLIENT_MAGIC);
    put_u64(&mut hello, PROTOCOL_MAJOR << 8 | MAX_MINOR);
    hello
}

/// What the client sends once the daemon's version is known: the obsolete options, as
/// "none" and "false".
pub fn client_options(minor: u64) -> Vec<u8> {
    let mut options = Vec::new();
    if minor >= since::AFFINITY {
        put_u64(&mut options, 0);
    }
    if minor >= since::RESERVE_SPACE {
        put_u64(&mut options, 0);
    }
    options
}

/// An operation with its one string argument, if it has one (a store path or a hash part).
pub fn request(op: Op, argument: Option<&str>) -> Vec<u8> {
    let mut request = Vec::new();
    put_u64(&mut request, op as u64);
    if let Some(argument) = argument {
        put_bytes(&mut request, argument.as_bytes());
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_the_op_and_its_padded_argument() {
        assert_eq!(request(Op::QueryAllValidPaths, None), 23u64.to_le_bytes());
        let r = request(Op::NarFromPath, Some("abc"));
        assert_eq!(r, [&38u64.to_le_bytes()[..], &3u64.to_le_bytes(), b"abc\0\0\0\0\0"].concat());
        assert_eq!(hello()[..8], CLIENT_MAGIC.to_le_bytes());
        assert_eq!(client_options(MAX_MINOR).len(), 16);
        assert_eq!(client_options(10).len(), 0);
    }
}
