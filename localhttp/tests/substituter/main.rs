//! The substituter over real TCP, with test peers standing in for the mesh: honest ones and
//! hostile ones. What matters is what the client receives.

mod documents;
mod heads;
mod local_first;
mod nar;
mod narinfo;
mod nix_resume;
mod prefetch;
mod ranges;
mod routes;
mod support;
mod why;
