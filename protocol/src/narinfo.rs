//! The `.narinfo` format: parse, render, fingerprint, sign and verify.
//!
//! A narinfo is a list of `Key: value` lines, each ending in `\n`, describing one store path
//! in a binary cache. Nix writes them in a fixed order (`NarInfo::to_string` in Nix's
//! `nar-info.cc`):
//!
//! ```text
//! StorePath: /nix/store/<hash>-<name>
//! URL: nar/<filehash>.nar.xz
//! Compression: xz
//! FileHash: sha256:<nixbase32>
//! FileSize: <bytes>
//! NarHash: sha256:<nixbase32>
//! NarSize: <bytes>
//! References: <base name> <base name> ...     (nothing after ": " when there are none)
//! Deriver: <base name>.drv                     (only when known)
//! System: <system>                             (older Nix only, when known)
//! Sig: <key name>:<base64>                     (one line per signature)
//! CA: <content address>                        (only for content-addressed paths)
//! ```
//!
//! [`NarInfo::parse`] then [`NarInfo`]'s `Display` gives back, byte for byte, any narinfo Nix
//! wrote. The parser is for untrusted input: it refuses texts over [`MAX_NARINFO_LEN`] bytes,
//! and never panics.

use std::fmt;

use thiserror::Error;

use crate::content_address::{ContentAddress, ContentAddressError};
use crate::excerpt;
use crate::hash::HashError;
use crate::signature::{KeyError, Signature, SigningKey, TrustedKeys, VerifyingKey};
use crate::store_path::StorePathError;
use crate::{Sha256, StorePath};

/// The largest narinfo [`NarInfo::parse`] reads. Real ones are a few kB; the largest in
/// nixpkgs (thousands of references) are well under 1 MiB.
pub const MAX_NARINFO_LEN: usize = 1 << 20;

/// The most references [`NarInfo::parse`] accepts on one path. (Within [`MAX_NARINFO_LEN`]
/// there is room for about 30 000; the bound stands on its own should that limit grow.)
pub const MAX_REFERENCES: usize = 100_000;

/// What Nix writes as the deriver when it does not know it; read as no deriver.
const UNKNOWN_DERIVER: &str = "unknown-deriver";

/// A narinfo Nix would not accept, or one too large to read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarInfoError {
    #[error("narinfo line {line}: {reason}")]
    Line { line: usize, reason: LineError },
    #[error("narinfo has no {0} field")]
    Missing(&'static str),
    #[error("narinfo is {len} bytes, more than the {MAX_NARINFO_LEN} bytes accepted")]
    TooLarge { len: usize },
    #[error("narinfo lists more than {MAX_REFERENCES} references")]
    TooManyReferences,
}

/// What is wrong with one line of a narinfo: the kinds a reader of the error can tell apart,
/// each quoting at most an excerpt of what was read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LineError {
    #[error("empty line")]
    Empty,
    #[error("{0:?} is not of the form `Key: value`")]
    NotKeyValue(String),
    #[error("empty key before ': '")]
    EmptyKey,
    #[error("{0} given twice")]
    Twice(&'static str),
    #[error("NarSize is 0")]
    NarSizeZero,
    #[error("invalid store path {text:?}: {error}")]
    StorePath { text: String, error: StorePathError },
    #[error("{field}: {error}")]
    Hash { field: &'static str, error: HashError },
    #[error("{field} {text:?} is not a number of bytes")]
    Size { field: &'static str, text: String },
    #[error("more than {MAX_REFERENCES} references")]
    TooManyReferences,
    #[error("Sig {text:?}: {error}")]
    Signature { text: String, error: KeyError },
}

/// One narinfo. Fields in the order Nix writes them; unknown `Key: value` lines are kept in
/// `extra` and rendered after the known ones.
///
/// `Display` renders it; for the text to parse back, string fields must not contain `\n`
/// (none that [`NarInfo::parse`] returns do), and `url` must not be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache's root, e.g. `nar/<hash>.nar.xz`.
    pub url: String,
    /// `none`, `xz`, `zstd`, ...; when absent Nix takes it to be `bzip2`.
    pub compression: Option<String>,
    /// The hash of the file at `url` (the compressed NAR).
    pub file_hash: Option<Sha256>,
    /// The size of the file at `url`.
    pub file_size: Option<u64>,
    pub nar_hash: Sha256,
    /// Never 0: Nix refuses a narinfo without a size.
    pub nar_size: u64,
    /// In the order of the text (Nix writes them sorted by base name).
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub system: Option<String>,
    pub signatures: Vec<Signature>,
    /// The content address (`fixed:r:sha256:...`, `text:sha256:...`), kept as text so that
    /// the narinfo renders back as it was written; [`NarInfo::content_address`] reads it.
    pub ca: Option<String>,
    pub extra: Vec<(String, String)>,
}

/// The fields that may appear once; `Sig` and unknown keys may repeat.
const SINGLE_VALUED: [&str; 11] = [
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "System",
    "CA",
];

impl NarInfo {
    /// Parses a narinfo. Requires `StorePath`, `URL`, `NarHash` and a non-zero `NarSize`, as
    /// Nix does; rejects repeated single-valued fields, lines that are not `Key: value`,
    /// invalid store paths, hashes, sizes and signatures. Unknown keys go to `extra`. The
    /// last line may lack its `\n`.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        if text.len() > MAX_NARINFO_LEN {
            return Err(NarInfoError::TooLarge { len: text.len() });
        }
        let mut fields = Fields::default();
        let body = text.strip_suffix('\n').unwrap_or(text);
        for (index, line) in body.split('\n').enumerate() {
            let line_no = index + 1;
            fields.line(line).map_err(|reason| NarInfoError::Line { line: line_no, reason })?;
        }
        let Fields { store_path, url, nar_hash, nar_size, .. } = fields;
        let (store_path, url, nar_hash, nar_size) = (
            store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            url.filter(|u| !u.is_empty()).ok_or(NarInfoError::Missing("URL"))?,
            nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size.ok_or(NarInfoError::Missing("NarSize"))?,
        );
        Ok(NarInfo {
            store_path,
            url,
            compression: fields.compression,
            file_hash: fields.file_hash,
            file_size: fields.file_size,
            nar_hash,
            nar_size,
            references: fields.references.unwrap_or_default(),
            deriver: fields.deriver.flatten(),
            system: fields.system,
            signatures: fields.signatures,
            ca: fields.ca.flatten(),
            extra: fields.extra,
        })
    }

    /// `1;<store path>;<nar hash>;<nar size>;<comma-separated full reference paths>`.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.store_path, &self.nar_hash, self.nar_size, &self.references)
    }

    /// Adds `key`'s signature (replacing an older one by the same key name). A new signature
    /// goes where it keeps the list sorted, as Nix keeps it.
    pub fn sign(&mut self, key: &SigningKey) {
        let sig = key.sign(self.fingerprint().as_bytes());
        if let Some(old) = self.signatures.iter_mut().find(|s| s.name() == key.name()) {
            *old = sig;
            return;
        }
        let text = sig.to_string();
        let at = self.signatures.iter().position(|s| s.to_string() > text);
        self.signatures.insert(at.unwrap_or(self.signatures.len()), sig);
    }

    /// The `CA` field as a [`ContentAddress`]: `Ok(None)` when there is none, an error when
    /// it is not one Nix reads (Nix then refuses the whole narinfo as corrupt). To see whether
    /// Nix would take the path unsigned, pass it to [`crate::content_address::verify`] with
    /// `store_path` and `references`.
    pub fn content_address(&self) -> Result<Option<ContentAddress>, ContentAddressError> {
        self.ca.as_deref().map(ContentAddress::parse).transpose()
    }

    /// The trusted key one of its signatures verifies against, if any.
    pub fn verify<'k>(&self, keys: &'k TrustedKeys) -> Option<&'k VerifyingKey> {
        let fingerprint = self.fingerprint();
        keys.verify_any(fingerprint.as_bytes(), &self.signatures)
    }
}

/// Renders in Nix's layout, one `Key: value` per line, ending in a newline.
impl fmt::Display for NarInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StorePath: {}", self.store_path)?;
        writeln!(f, "URL: {}", self.url)?;
        if let Some(compression) = &self.compression {
            writeln!(f, "Compression: {compression}")?;
        }
        if let Some(file_hash) = &self.file_hash {
            writeln!(f, "FileHash: {file_hash}")?;
        }
        if let Some(file_size) = self.file_size {
            writeln!(f, "FileSize: {file_size}")?;
        }
        writeln!(f, "NarHash: {}", self.nar_hash)?;
        writeln!(f, "NarSize: {}", self.nar_size)?;
        // Always present: a path without references gets a line ending in a space, as Nix
        // writes it.
        f.write_str("References: ")?;
        for (i, reference) in self.references.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}", reference.base_name())?;
        }
        f.write_str("\n")?;
        if let Some(deriver) = &self.deriver {
            writeln!(f, "Deriver: {}", deriver.base_name())?;
        }
        if let Some(system) = &self.system {
            writeln!(f, "System: {system}")?;
        }
        for sig in &self.signatures {
            writeln!(f, "Sig: {sig}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "CA: {ca}")?;
        }
        for (key, value) in &self.extra {
            writeln!(f, "{key}: {value}")?;
        }
        Ok(())
    }
}

/// The text Nix signs for a store path. References are sorted and deduplicated, as Nix holds
/// them in a set, so the order in a narinfo does not change the fingerprint.
pub fn fingerprint(
    store_path: &StorePath,
    nar_hash: &Sha256,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let mut refs: Vec<String> = references.iter().map(StorePath::to_string).collect();
    refs.sort_unstable();
    refs.dedup();
    format!("1;{store_path};{nar_hash};{nar_size};{}", refs.join(","))
}

/// The fields seen so far while parsing; `Some` once a field was seen (for the optional ones
/// that may be present yet empty, `Some(None)`).
#[derive(Default)]
struct Fields {
    seen: Vec<&'static str>,
    store_path: Option<StorePath>,
    url: Option<String>,
    compression: Option<String>,
    file_hash: Option<Sha256>,
    file_size: Option<u64>,
    nar_hash: Option<Sha256>,
    nar_size: Option<u64>,
    references: Option<Vec<StorePath>>,
    deriver: Option<Option<StorePath>>,
    system: Option<String>,
    signatures: Vec<Signature>,
    ca: Option<Option<String>>,
    extra: Vec<(String, String)>,
}

impl Fields {
    /// Takes one line (without its `\n`); the error is the reason, for a line-numbered error.
    fn line(&mut self, line: &str) -> Result<(), LineError> {
        // Split where Nix does, at the first ':' (Nix then skips one more character): a line
        // that we read as an unknown key but Nix as a known one would let a peer slip a field
        // past the signature.
        let Some((key, value)) =
            line.split_once(':').and_then(|(k, v)| Some((k, v.strip_prefix(' ')?)))
        else {
            return Err(if line.is_empty() {
                LineError::Empty
            } else {
                LineError::NotKeyValue(excerpt(line))
            });
        };
        if key.is_empty() {
            return Err(LineError::EmptyKey);
        }
        if let Some(&field) = SINGLE_VALUED.iter().find(|&&f| f == key) {
            if self.seen.contains(&field) {
                return Err(LineError::Twice(field));
            }
            self.seen.push(field);
        }
        match key {
            "StorePath" => self.store_path = Some(store_path(value, StorePath::parse)?),
            "URL" => self.url = Some(value.to_owned()),
            "Compression" => self.compression = Some(value.to_owned()),
            "FileHash" => self.file_hash = Some(hash("FileHash", value)?),
            "FileSize" => self.file_size = Some(size("FileSize", value)?),
            "NarHash" => self.nar_hash = Some(hash("NarHash", value)?),
            "NarSize" => match size("NarSize", value)? {
                0 => return Err(LineError::NarSizeZero),
                n => self.nar_size = Some(n),
            },
            "References" => self.references = Some(references(value)?),
            "Deriver" => {
                self.deriver = Some(match value {
                    UNKNOWN_DERIVER => None,
                    base => Some(store_path(base, StorePath::from_base_name)?),
                });
            }
            "System" => self.system = Some(value.to_owned()),
            "Sig" => self.signatures.push(
                Signature::parse(value)
                    .map_err(|error| LineError::Signature { text: excerpt(value), error })?,
            ),
            "CA" => self.ca = Some(Some(value.to_owned()).filter(|ca| !ca.is_empty())),
            _ => self.extra.push((key.to_owned(), value.to_owned())),
        }
        Ok(())
    }
}

fn store_path(
    text: &str,
    parse: impl Fn(&str) -> Result<StorePath, StorePathError>,
) -> Result<StorePath, LineError> {
    parse(text).map_err(|error| LineError::StorePath { text: excerpt(text), error })
}

fn hash(field: &'static str, text: &str) -> Result<Sha256, LineError> {
    Sha256::parse(text).map_err(|error| LineError::Hash { field, error })
}

/// A decimal size: digits only (no sign, no spaces), fitting in 64 bits.
fn size(field: &'static str, text: &str) -> Result<u64, LineError> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    match text.parse::<u64>() {
        Ok(n) if digits => Ok(n),
        _ => Err(LineError::Size { field, text: excerpt(text) }),
    }
}

/// Space-separated base names; empty tokens (doubled spaces) are skipped, as Nix does.
fn references(text: &str) -> Result<Vec<StorePath>, LineError> {
    let mut refs = Vec::new();
    for base in text.split(' ').filter(|t| !t.is_empty()) {
        if refs.len() == MAX_REFERENCES {
            return Err(LineError::TooManyReferences);
        }
        refs.push(store_path(base, StorePath::from_base_name)?);
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Written by Nix 2.8 (`nix copy --to file://...`); see tests/data/narinfo/README.md.
    const NIX: &str =
        include_str!("../tests/data/narinfo/xz/6qgidplc50x72n86qxivlkk8q15f8srm.narinfo");
    const NO_REFS: &str =
        include_str!("../tests/data/narinfo/none/0gl7ca9rk25fmq8ldp98v29f3b2admz6.narinfo");

    #[test]
    fn parses_what_nix_wrote() {
        let info = NarInfo::parse(NIX).unwrap();
        assert_eq!(info.store_path.name(), "nixmesh-golden-top");
        assert_eq!(info.compression.as_deref(), Some("xz"));
        assert_eq!(info.file_size, Some(340));
        assert_eq!(info.nar_size, 728);
        assert_eq!(info.references.len(), 4);
        assert_eq!(info.deriver.as_ref().unwrap().name(), "nixmesh-golden-top.drv");
        assert_eq!(info.signatures.len(), 1);
        assert_eq!(info.to_string(), NIX);

        let text = NarInfo::parse(NO_REFS).unwrap();
        assert!(text.references.is_empty() && text.deriver.is_none());
        assert!(text.ca.as_deref().unwrap().starts_with("text:sha256:"));
        assert!(matches!(text.content_address(), Ok(Some(ContentAddress::Text(_)))));
        assert_eq!(info.content_address(), Ok(None));
        assert!(NO_REFS.contains("\nReferences: \n"));
        assert_eq!(text.to_string(), NO_REFS);
    }

    #[test]
    fn fingerprint_is_nixs() {
        let info = NarInfo::parse(NIX).unwrap();
        let expected = "1;/nix/store/6qgidplc50x72n86qxivlkk8q15f8srm-nixmesh-golden-top;\
            sha256:16r7f3fyr0zpv68dkzal7r2sdfpn9miax5rp0l5vn5dk2h95sa07;728;\
            /nix/store/0gl7ca9rk25fmq8ldp98v29f3b2admz6-nixmesh-golden-text,\
            /nix/store/6qgidplc50x72n86qxivlkk8q15f8srm-nixmesh-golden-top,\
            /nix/store/r6kzrxq3d10gpvdzbi3ki5ik3np5a8zk-nixmesh-golden-split-lib,\
            /nix/store/xmpsxf9j0gsa9jx8r72n26g0gnd2cb3s-nixmesh-golden-split";
        assert_eq!(info.fingerprint(), expected);
        // The order in the text does not matter: Nix holds references in a sorted set.
        let mut shuffled = info.clone();
        shuffled.references.reverse();
        assert_eq!(shuffled.fingerprint(), expected);
        assert!(NarInfo::parse(NO_REFS).unwrap().fingerprint().ends_with(";144;"));
    }

    #[test]
    fn sign_adds_or_replaces_by_name() {
        let mut info = NarInfo::parse(NIX).unwrap();
        let nix_sig = info.signatures[0].clone();
        let ours = SigningKey::from_seed("a-first", [9; 32]);
        let trusted = TrustedKeys::new(vec![ours.verifying_key()]);
        assert_eq!(info.verify(&trusted), None);
        info.sign(&ours);
        assert_eq!(info.signatures.len(), 2);
        assert_eq!(info.signatures[0].name(), "a-first", "kept sorted, as Nix does");
        assert_eq!(info.signatures[1], nix_sig);
        assert_eq!(info.verify(&trusted).map(VerifyingKey::name), Some("a-first"));
        info.sign(&ours);
        assert_eq!(info.signatures.len(), 2);
        // A changed field breaks the signature.
        info.nar_size += 1;
        assert_eq!(info.verify(&trusted), None);
        info.sign(&ours);
        assert!(info.verify(&trusted).is_some());
        assert_eq!(NarInfo::parse(&info.to_string()).unwrap(), info);
    }

    #[test]
    fn a_ca_nix_cannot_read_is_kept_but_refused() {
        let odd = NO_REFS.replace("CA: text:sha256:", "CA: text:sha1:");
        let info = NarInfo::parse(&odd).unwrap();
        assert_eq!(info.to_string(), odd);
        assert!(matches!(info.content_address(), Err(ContentAddressError::TextNotSha256 { .. })));
    }

    #[test]
    fn unknown_keys_are_kept() {
        let text = format!("{NIX}Provenance: {{}}\nX-Whatever: a: b\n");
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(
            info.extra,
            [("Provenance".into(), "{}".into()), ("X-Whatever".into(), "a: b".into())]
        );
        assert_eq!(info.to_string(), text);
    }

    #[test]
    fn keys_end_at_the_first_colon_as_nix_reads_them() {
        // Nix reads this line as `URL` (a second one, which would win); split at ": " it
        // would be an unknown key, carried along unsigned.
        let smuggled = format!("{NIX}URL:Xhttp://elsewhere/x.nar#: x\n");
        let err = NarInfo::parse(&smuggled).unwrap_err();
        assert!(err.to_string().contains("is not of the form `Key: value`"), "{err}");
        let no_space = format!("{NIX}X-Key:value\n");
        assert!(NarInfo::parse(&no_space).is_err());
    }

    #[test]
    fn lenient_where_nix_is() {
        let info = NarInfo::parse(NIX.trim_end_matches('\n')).unwrap();
        assert_eq!(info.to_string(), NIX);
        let unknown = NIX.replace(
            "Deriver: 2c32gvlj647nxd14h015s629ibfyy91p-nixmesh-golden-top.drv",
            "Deriver: unknown-deriver",
        );
        assert_eq!(NarInfo::parse(&unknown).unwrap().deriver, None);
        let spaced = NIX.replace("-text 6q", "-text   6q");
        assert_eq!(NarInfo::parse(&spaced).unwrap().references.len(), 4);
    }

    fn line_error(text: &str) -> (usize, String) {
        match NarInfo::parse(text) {
            Err(NarInfoError::Line { line, reason }) => (line, reason.to_string()),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn rejects_what_nix_rejects() {
        let without = |key: &str| -> String {
            NIX.lines().filter(|l| !l.starts_with(key)).map(|l| format!("{l}\n")).collect()
        };
        for (key, err) in [
            ("StorePath", NarInfoError::Missing("StorePath")),
            ("URL", NarInfoError::Missing("URL")),
            ("NarHash", NarInfoError::Missing("NarHash")),
            ("NarSize", NarInfoError::Missing("NarSize")),
        ] {
            assert_eq!(NarInfo::parse(&without(key)), Err(err));
        }
        assert_eq!(
            NarInfo::parse(&NIX.replace("URL: nar/", "URL: \nX: nar/")),
            Err(NarInfoError::Missing("URL"))
        );
        assert_eq!(line_error(&format!("{NIX}NarSize: 5\n")).1, "NarSize given twice");
        assert_eq!(line_error(&NIX.replace("NarSize: 728", "NarSize: 0")).0, 7);
        assert!(line_error(&NIX.replace("NarSize: 728", "NarSize: +728")).1.contains("number"));
        assert!(
            line_error(&NIX.replace("NarSize: 728", "NarSize: 99999999999999999999"))
                .1
                .contains("number")
        );
        assert!(
            line_error(&NIX.replace("FileHash: sha256", "FileHash: md5")).1.contains("FileHash")
        );
        assert!(
            line_error(&NIX.replace("NarHash: sha256:1", "NarHash: sha256:e"))
                .1
                .contains("NarHash")
        );
        assert!(
            line_error(&NIX.replace("StorePath: /nix", "StorePath: /nox")).1.contains("store path")
        );
        assert!(line_error(&NIX.replace("-text 6q", "-text 6e")).1.contains("store path"));
        assert_eq!(line_error(&NIX.replace("URL: ", "URL:")).0, 2);
        assert_eq!(line_error(&format!("{NIX}\n")), (11, "empty line".to_owned()));
        assert!(
            line_error(&NIX.replace("Sig: nixmesh-golden-1:", "Sig: nixmesh-golden-1:x"))
                .1
                .starts_with("Sig")
        );
    }

    #[test]
    fn bounds_hostile_input() {
        let huge = format!("{NIX}X: {}\n", "a".repeat(MAX_NARINFO_LEN));
        assert!(matches!(NarInfo::parse(&huge), Err(NarInfoError::TooLarge { .. })));
        let many = vec!["0gl7ca9rk25fmq8ldp98v29f3b2admz6-a"; MAX_REFERENCES + 1].join(" ");
        assert!(references(&many).unwrap_err().to_string().contains("more than"));
    }

    fn arb_store_path() -> impl Strategy<Value = StorePath> {
        ("[0-9a-df-np-sv-z]{32}", "[a-zA-Z0-9+._?=-]{1,30}").prop_map(|(hash, name)| {
            StorePath::from_base_name(&format!("{hash}-{name}")).expect("a valid store path")
        })
    }

    fn arb_sha256() -> impl Strategy<Value = Sha256> {
        any::<[u8; 32]>().prop_map(Sha256)
    }

    fn arb_signature() -> impl Strategy<Value = Signature> {
        ("[a-z0-9.-]{1,20}", any::<[u8; 32]>())
            .prop_map(|(name, seed)| SigningKey::from_seed(&name, seed).sign(b"anything"))
    }

    /// A value any field may hold: no newline, and not starting a `: ` at the front.
    const VALUE: &str = "[ -~]{0,40}";

    fn arb_narinfo() -> impl Strategy<Value = NarInfo> {
        let head = (
            arb_store_path(),
            "[!-~][ -~]{0,40}",
            proptest::option::of(VALUE),
            proptest::option::of(arb_sha256()),
            proptest::option::of(any::<u64>()),
            arb_sha256(),
            1..=u64::MAX,
        );
        let tail = (
            proptest::collection::vec(arb_store_path(), 0..5),
            proptest::option::of(arb_store_path()),
            proptest::option::of(VALUE),
            proptest::collection::vec(arb_signature(), 0..3),
            proptest::option::of("[ -~]{1,40}"),
            proptest::collection::vec(("X-[A-Za-z]{0,10}", VALUE), 0..3),
        );
        (head, tail).prop_map(
            |(
                (store_path, url, compression, file_hash, file_size, nar_hash, nar_size),
                (references, deriver, system, signatures, ca, extra),
            )| NarInfo {
                store_path,
                url,
                compression,
                file_hash,
                file_size,
                nar_hash,
                nar_size,
                references,
                deriver,
                system,
                signatures,
                ca,
                extra,
            },
        )
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,400}") {
            let _ = NarInfo::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_near_misses(
            cut in 0..NIX.len(),
            insert in "[ -~\n]{0,10}",
        ) {
            if NIX.is_char_boundary(cut) {
                let _ = NarInfo::parse(&format!("{}{insert}{}", &NIX[..cut], &NIX[cut..]));
            }
        }

        #[test]
        fn render_then_parse_round_trips(info in arb_narinfo()) {
            let text = info.to_string();
            prop_assert_eq!(NarInfo::parse(&text), Ok(info));
        }
    }
}
