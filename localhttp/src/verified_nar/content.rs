//! The check of a content address as the NAR passes, for an unsigned content-addressed path:
//! the whole NAR hashed with the address's own algorithm (`fixed:r:`), or the contents of the
//! one regular file the NAR must be (`fixed:`). Sans-IO, like [`super::check`], which drives it.

use nixmesh_protocol::content_address::NarCheck;
use nixmesh_protocol::hash::{NixHash, NixHasher};
use nixmesh_protocol::nar::{Event, NarError, NarParser};
use thiserror::Error;

/// Why a NAR is not what its content address says.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContentError {
    /// A flat (`fixed:`) address is of one regular file; this NAR's root is something else.
    #[error("it is not a single regular file")]
    NotOneFile,
    /// The bytes are not a valid NAR, so their file's contents cannot be told.
    #[error(transparent)]
    Nar(#[from] NarError),
    #[error("its contents hash to {got}, not {want}")]
    WrongContents { got: NixHash, want: NixHash },
}

/// A running content-address check: fed every byte of the NAR in order, then finished.
pub(super) enum ContentCheck {
    Nar { hasher: NixHasher, want: NixHash },
    File { parser: Box<NarParser>, hasher: NixHasher, want: NixHash, root_is_file: bool },
}

impl ContentCheck {
    /// The check `check` asks for beyond the NarHash, if any.
    pub(super) fn new(check: &NarCheck) -> Option<Self> {
        match check {
            NarCheck::NarHashIs(_) => None,
            NarCheck::Nar(want) => {
                Some(ContentCheck::Nar { hasher: NixHasher::new(want.algo()), want: want.clone() })
            }
            NarCheck::FileContents(want) => Some(ContentCheck::File {
                parser: Box::default(),
                hasher: NixHasher::new(want.algo()),
                want: want.clone(),
                root_is_file: false,
            }),
        }
    }

    /// Takes the next bytes of the NAR; an error as soon as they cannot match.
    pub(super) fn update(&mut self, chunk: &[u8]) -> Result<(), ContentError> {
        match self {
            ContentCheck::Nar { hasher, .. } => hasher.update(chunk),
            ContentCheck::File { parser, hasher, root_is_file, .. } => {
                let mut other_root = false;
                parser.push(chunk, |event| match event {
                    Event::FileStart { path: [], .. } => *root_is_file = true,
                    Event::FileData(data) => hasher.update(data),
                    Event::DirectoryStart { path: [] } | Event::Symlink { path: [], .. } => {
                        other_root = true
                    }
                    _ => {}
                })?;
                if other_root {
                    return Err(ContentError::NotOneFile);
                }
            }
        }
        Ok(())
    }

    /// Whether the NAR fed in whole matches the content address.
    pub(super) fn finish(self) -> Result<(), ContentError> {
        let (got, want) = match self {
            ContentCheck::Nar { hasher, want } => (hasher.finish(), want),
            ContentCheck::File { parser, hasher, want, root_is_file } => {
                parser.finish()?;
                if !root_is_file {
                    return Err(ContentError::NotOneFile);
                }
                (hasher.finish(), want)
            }
        };
        match got == want {
            true => Ok(()),
            false => Err(ContentError::WrongContents { got, want }),
        }
    }
}
