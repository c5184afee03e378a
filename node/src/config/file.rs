//! The config file: TOML whose keys are [`ServeConfig`]'s fields. It is read strictly, so a
//! typo is an error naming the key and the file rather than a setting silently ignored.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{ConfigError, ServeConfig};

/// Which config file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    /// The file.
    pub path: PathBuf,
    /// Named by `--config`: then a missing file is an error; at the default path it is not.
    pub explicit: bool,
}

/// Reads the config file at `at`. `Ok(None)` when it is missing from the default path; else
/// the keys the file sets, each checked (every key known, every value of its key's type).
pub fn read(at: &ConfigPath) -> Result<Option<Map<String, Value>>, ConfigError> {
    let text = match std::fs::read_to_string(&at.path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound && !at.explicit => return Ok(None),
        Err(source) if source.kind() == ErrorKind::NotFound => {
            return Err(ConfigError::MissingFile { path: at.path.clone(), source });
        }
        Err(source) => return Err(ConfigError::Read { path: at.path.clone(), source }),
    };
    parse(&text, &at.path).map(Some)
}

/// The keys `text` (the contents of the file at `path`) sets, checked as [`read`] says.
pub fn parse(text: &str, path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let parse_err = |message: String| ConfigError::Parse {
        path: path.to_owned(),
        message: message.trim_end().to_owned(),
    };
    // Typed first: toml's errors name the line, the key and what was expected there.
    toml::from_str::<ServeConfig>(text).map_err(|e| parse_err(e.to_string()))?;
    let table: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
    match serde_json::to_value(table) {
        Ok(Value::Object(keys)) => Ok(keys),
        Ok(_) => unreachable!("a TOML table is an object"),
        Err(e) => Err(parse_err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Map<String, Value> {
        parse(text, Path::new("/etc/nixmesh/config.toml")).unwrap()
    }

    fn parse_err(text: &str) -> String {
        parse(text, Path::new("/etc/nixmesh/config.toml")).unwrap_err().to_string()
    }

    #[test]
    fn every_key_of_the_defaults_is_read_back() {
        let text = toml::to_string(&ServeConfig::default()).unwrap();
        let keys = parse_ok(&text);
        assert!(keys.contains_key("http_listen") && keys.contains_key("forget_peers_after"));
        assert_eq!(toml::from_str::<ServeConfig>(&text).unwrap(), ServeConfig::default());
    }

    #[test]
    fn only_the_keys_the_file_sets_are_returned() {
        let keys = parse_ok("priority = 5\npeers = []\n");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys["priority"], 5);
    }

    #[test]
    fn a_bad_peer_id_in_allow_peers_is_named() {
        let message = parse_err("allow_peers = [\"12D3KooNotAPeer\"]\n");
        assert!(message.contains("allow_peers"), "{message}");
        assert!(message.contains("\"12D3KooNotAPeer\" is not a peer id"), "{message}");
        let keys =
            parse_ok("allow_peers = [\"12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA\"]\n");
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn an_unknown_key_is_named_with_the_file_and_its_line() {
        let message = parse_err("priority = 5\nhttp_lisen = \"127.0.0.1:1\"\n");
        assert!(message.starts_with("config file /etc/nixmesh/config.toml: "), "{message}");
        assert!(message.contains("unknown field `http_lisen`"), "{message}");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("http_listen"), "lists the keys there are: {message}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named() {
        let message = parse_err("http_listen = \"localhost\"\n");
        assert!(message.contains("http_listen"), "{message}");
        let message = parse_err("rescan_interval = -1\n");
        assert!(message.contains("not a number of seconds"), "{message}");
        let message = parse_err("priority = \"high\"\n");
        assert!(message.contains("priority"), "{message}");
    }

    #[test]
    fn a_file_missing_from_the_default_path_is_no_error_but_one_named_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert!(read(&ConfigPath { path: path.clone(), explicit: false }).unwrap().is_none());
        let e = read(&ConfigPath { path: path.clone(), explicit: true }).unwrap_err();
        let message = e.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("--config"), "{message}");
    }

    #[test]
    fn a_file_that_cannot_be_read_is_an_error_even_at_the_default_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = read(&ConfigPath { path: dir.path().to_owned(), explicit: false }).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    }
}
