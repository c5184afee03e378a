//! The substituter's settings: whom to trust and how long to wait for peers.

use std::fmt;
use std::time::Duration;

use nixmesh_protocol::signature::TrustedKeys;

use crate::local_first::{LocalFirst, Role};

/// How the substituter behaves. `Default` trusts no key (so it serves nothing) and uses the
/// time limits below; callers set at least `trusted_keys`.
#[derive(Clone)]
pub struct Config {
    /// Keys a narinfo must carry a signature from before anything of it reaches Nix.
    pub trusted_keys: TrustedKeys,
    /// The `Priority` in `/nix-cache-info`; lower is preferred by Nix (cache.nixos.org is 40).
    pub priority: u32,
    /// How long one peer may take to answer a narinfo request.
    pub narinfo_peer_timeout: Duration,
    /// How long a narinfo request may take over all the peers asked, one after another.
    pub narinfo_deadline: Duration,
    /// How long a peer may take from the NAR request to its first bytes.
    pub nar_first_byte_timeout: Duration,
    /// How long a NAR request may take to its first bytes over all the holders tried, one
    /// after another.
    pub nar_start_deadline: Duration,
    /// How long a NAR transfer may wait for the next bytes once it has started.
    pub nar_idle_timeout: Duration,
    /// A holder sending a NAR slower than this (bytes a second, over
    /// [`Config::nar_rate_window`] of waiting on it) is replaced by the next holder, if there
    /// is one; 0: never.
    pub nar_min_rate: u64,
    /// The stretch of waiting on a holder over which its rate is measured.
    pub nar_rate_window: Duration,
    /// NARs up to this size are read and verified whole before the response starts, so that
    /// a holder with a damaged copy is passed over for the next one before the client has a
    /// byte; larger ones are streamed (at most this much is held per download).
    pub nar_verified_whole_up_to: u64,
    /// How many verified narinfos are remembered for the NAR requests that follow them.
    pub narinfo_cache_capacity: usize,
    /// Whether the NARs of small paths in a closure Nix has walked are fetched (and verified)
    /// ahead of Nix's requests for them (see `prefetch`).
    pub prefetch: bool,
    /// The bytes of NARs the prefetch holds (and reserves for transfers under way), at most.
    pub prefetch_memory: u64,
    /// Narinfo requests asking peers at once (misses, remembered narinfos and the status
    /// pages never wait for one); more wait their turn, within the narinfo deadline.
    pub max_concurrent_requests: usize,
    /// NAR downloads under way at once (each counts until its body ends); more wait their
    /// turn, apart from the other requests, or take the place of a download whose client
    /// stopped reading (see `nar_slots`).
    pub max_concurrent_nars: usize,
    /// The limit on every request but NAR downloads, from arrival to the response; past it,
    /// a narinfo is a miss (`404`), never a server error.
    pub request_timeout: Duration,
    /// How long a NAR download's client may take nothing of it before it is cut off (the
    /// transfer from the peer lets go of its stream after a second of that already; see
    /// `nar_slots`).
    pub nar_client_stall_timeout: Duration,
    /// How long a client connection may go with nothing moving either way (an idle
    /// keep-alive, a client that stopped reading its NAR) before it is closed. Longer than a
    /// response may take to start: [`Config::narinfo_deadline`] plus
    /// [`Config::nar_start_deadline`].
    pub client_stall_timeout: Duration,
    /// Whether the status pages (`/_nixmesh/*`, `/metrics`) are served: on the localhost
    /// listener, not on the one open to the LAN, which serves the cache alone.
    pub status_pages: bool,
    /// Which listener this is: the machine's own, whose requests go first, or the LAN's.
    pub role: Role,
    /// The machine's own Nix first: shared by the two listeners (the LAN's config is a clone
    /// of the localhost one), see [`crate::local_first`].
    pub local_first: LocalFirst,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            trusted_keys: TrustedKeys::default(),
            priority: 10,
            narinfo_peer_timeout: Duration::from_secs(2),
            narinfo_deadline: Duration::from_secs(5),
            nar_first_byte_timeout: Duration::from_secs(10),
            nar_start_deadline: Duration::from_secs(20),
            nar_idle_timeout: Duration::from_secs(30),
            nar_verified_whole_up_to: 1 << 20,
            nar_min_rate: 64 << 10,
            nar_rate_window: Duration::from_secs(10),
            narinfo_cache_capacity: 10_000,
            prefetch: true,
            prefetch_memory: 64 << 20,
            max_concurrent_requests: 256,
            max_concurrent_nars: 256,
            request_timeout: Duration::from_secs(10),
            nar_client_stall_timeout: Duration::from_secs(20),
            client_stall_timeout: Duration::from_secs(60),
            status_pages: true,
            role: Role::Local,
            local_first: LocalFirst::default(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.trusted_keys.keys().iter().map(|k| k.name()).collect();
        f.debug_struct("Config")
            .field("trusted_keys", &keys)
            .field("priority", &self.priority)
            .field("narinfo_peer_timeout", &self.narinfo_peer_timeout)
            .field("narinfo_deadline", &self.narinfo_deadline)
            .field("nar_first_byte_timeout", &self.nar_first_byte_timeout)
            .field("nar_start_deadline", &self.nar_start_deadline)
            .field("nar_idle_timeout", &self.nar_idle_timeout)
            .field("nar_verified_whole_up_to", &self.nar_verified_whole_up_to)
            .field("nar_min_rate", &self.nar_min_rate)
            .field("nar_rate_window", &self.nar_rate_window)
            .field("narinfo_cache_capacity", &self.narinfo_cache_capacity)
            .field("prefetch", &self.prefetch)
            .field("prefetch_memory", &self.prefetch_memory)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_concurrent_nars", &self.max_concurrent_nars)
            .field("request_timeout", &self.request_timeout)
            .field("nar_client_stall_timeout", &self.nar_client_stall_timeout)
            .field("client_stall_timeout", &self.client_stall_timeout)
            .field("status_pages", &self.status_pages)
            .field("role", &self.role)
            .field("local_first", &self.local_first)
            .finish()
    }
}
