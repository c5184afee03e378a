//! The node's side of the local substituter (`nixmesh-localhttp`): what it serves from
//! ([`mesh_source::MeshSource`], the mesh and upstream behind every peer), what its status pages
//! show ([`status_view::MeshView`]), and the second listener for machines on the LAN ([`lan`]).

pub mod lan;
pub mod mesh_source;
pub mod status_view;
