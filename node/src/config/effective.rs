//! The layers merged: defaults, then the config file, then the flags, key by key, each key
//! remembering the layer it came from; and `nixmesh config show`, which prints that.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::file::{self, ConfigPath};
use super::{ConfigError, ServeConfig, Source};

/// The settings `nixmesh serve` runs with, and where each came from.
#[derive(Debug, Clone)]
pub struct EffectiveConfig {
    /// The settings.
    pub config: ServeConfig,
    /// The config file looked for.
    pub file: ConfigPath,
    /// Whether it was found (and read).
    pub file_read: bool,
    /// Each key, with the layer its value came from.
    sources: BTreeMap<String, Source>,
}

impl EffectiveConfig {
    /// Reads the config file `file` and merges the layers, the settings given by flags
    /// (`flags`, keyed as the file is) over the file's over the defaults.
    pub fn resolve(file: &ConfigPath, flags: Map<String, Value>) -> Result<Self, ConfigError> {
        let from_file = file::read(file)?;
        Self::merge(file, from_file, flags)
    }

    fn merge(
        file: &ConfigPath,
        from_file: Option<Map<String, Value>>,
        flags: Map<String, Value>,
    ) -> Result<Self, ConfigError> {
        let Ok(Value::Object(mut merged)) = serde_json::to_value(ServeConfig::default()) else {
            unreachable!("the settings serialise to an object");
        };
        let mut sources: BTreeMap<String, Source> =
            merged.keys().map(|key| (key.clone(), Source::Default)).collect();
        // The file was checked as it was read; each flag is checked here, alone, so that an
        // error names it.
        for (key, value) in &flags {
            let alone = Map::from_iter([(key.clone(), value.clone())]);
            if let Err(e) = serde_json::from_value::<ServeConfig>(Value::Object(alone)) {
                let reason = e.to_string();
                return Err(ConfigError::Invalid { key: key.clone(), from: Source::Flag, reason });
            }
        }
        let file_read = from_file.is_some();
        let layers = [
            (from_file.unwrap_or_default(), Source::File(file.path.clone())),
            (flags, Source::Flag),
        ];
        for (layer, source) in layers {
            for (key, value) in layer {
                sources.insert(key.clone(), source.clone());
                merged.insert(key, value);
            }
        }
        let config: ServeConfig = serde_json::from_value(Value::Object(merged))
            .expect("every layer's values were checked");
        if let Err((key, reason)) = config.check() {
            let from = sources[key].clone();
            return Err(ConfigError::Invalid { key: key.into(), from, reason: reason.into() });
        }
        Ok(EffectiveConfig { config, file: file.clone(), file_read, sources })
    }

    /// Where `key`'s value came from; `None` for a key that is not a setting.
    pub fn source(&self, key: &str) -> Option<&Source> {
        self.sources.get(key)
    }

    /// What `nixmesh config show` prints: the settings as a config file would hold them, one
    /// key a line (sorted), each with its source in a comment. Unset keys are commented out.
    pub fn show(&self) -> String {
        let mut out = String::new();
        let file_state = if self.file_read { "read" } else { "not found, not needed" };
        let _ = writeln!(out, "# config file: {} ({file_state})", self.file.path.display());
        let lines: Vec<(String, &Source)> = self
            .values()
            .into_iter()
            .map(|(key, value)| {
                let line = match toml_value(&value) {
                    Some(value) => format!("{key} = {value}"),
                    None => format!("# {key} is unset"),
                };
                (line, &self.sources[&key])
            })
            .collect();
        let width = lines.iter().map(|(line, _)| line.len()).max().unwrap_or(0);
        for (line, source) in lines {
            let _ = writeln!(out, "{line:width$}  # {source}");
        }
        out
    }

    /// `nixmesh config show --json`: `{"config_file": {"path", "read"}, "settings": {KEY:
    /// {"value", "source", "file"?}}}`, `source` one of `default`, `file`, `flag`.
    pub fn show_json(&self) -> String {
        let settings: Map<String, Value> = self
            .values()
            .into_iter()
            .map(|(key, value)| {
                let source = &self.sources[&key];
                let mut entry = json!({ "value": value, "source": source.kind() });
                if let Source::File(path) = source {
                    entry["file"] = json!(path);
                }
                (key, entry)
            })
            .collect();
        let shown = json!({
            "config_file": { "path": self.file.path, "read": self.file_read },
            "settings": settings,
        });
        serde_json::to_string_pretty(&shown).expect("serialisable") + "\n"
    }

    fn values(&self) -> Map<String, Value> {
        match serde_json::to_value(&self.config) {
            Ok(Value::Object(values)) => values,
            _ => unreachable!("the settings serialise to an object"),
        }
    }
}

/// `value` as TOML writes it inline; `None` for an unset (null) value.
fn toml_value(value: &Value) -> Option<String> {
    if value.is_null() {
        return None;
    }
    let value = toml::Value::try_from(value).expect("settings are TOML values");
    Some(value.to_string())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn at(path: &str) -> ConfigPath {
        ConfigPath { path: PathBuf::from(path), explicit: true }
    }

    fn merge(file_text: Option<&str>, flags: Value) -> Result<EffectiveConfig, ConfigError> {
        let path = at("/etc/nixmesh/config.toml");
        let from_file = file_text.map(|t| file::parse(t, &path.path).unwrap());
        let Value::Object(flags) = flags else { panic!("flags are an object") };
        EffectiveConfig::merge(&path, from_file, flags)
    }

    #[test]
    fn no_file_and_no_flags_is_the_defaults() {
        let c = merge(None, json!({})).unwrap();
        assert_eq!(c.config, ServeConfig::default());
        assert!(c.sources.values().all(|s| *s == Source::Default));
        assert!(!c.file_read);
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let file =
            "priority = 20\nhttp_listen = \"127.0.0.1:9000\"\npeers = [\"/ip4/192.0.2.1/tcp/1\"]\n";
        let flags = json!({ "priority": 30, "peers": ["/ip4/192.0.2.2/tcp/2"] });
        let c = merge(Some(file), flags).unwrap();
        assert_eq!(c.config.priority, 30);
        assert_eq!(c.source("priority"), Some(&Source::Flag));
        assert_eq!(c.config.http_listen.port(), 9000);
        let from_file = Source::File(PathBuf::from("/etc/nixmesh/config.toml"));
        assert_eq!(c.source("http_listen"), Some(&from_file));
        // A list given by flags replaces the file's.
        assert_eq!(c.config.peers.len(), 1);
        assert_eq!(c.config.peers[0].to_string(), "/ip4/192.0.2.2/tcp/2");
        assert_eq!(c.source("store"), Some(&Source::Default));
        assert_eq!(c.config.store, "daemon");
    }

    #[test]
    fn a_rule_broken_names_the_key_and_where_it_came_from() {
        let e = merge(Some("rescan_interval = 0\n"), json!({})).unwrap_err().to_string();
        assert!(e.starts_with("rescan_interval (from file /etc/nixmesh/config.toml): "), "{e}");
        let e = merge(None, json!({ "rescan_interval": 0.0 })).unwrap_err().to_string();
        assert!(e.starts_with("rescan_interval (from flag): "), "{e}");
        // Not a number at all (what an infinite f64 serialises to).
        let e = merge(None, json!({ "forget_peers_after": null })).unwrap_err().to_string();
        assert!(e.starts_with("forget_peers_after (from flag): "), "{e}");
    }

    #[test]
    fn show_prints_toml_with_each_source() {
        let c = merge(Some("priority = 20\n"), json!({ "mdns": false })).unwrap();
        let shown = c.show();
        assert!(shown.starts_with("# config file: /etc/nixmesh/config.toml (read)\n"), "{shown}");
        let line = |key: &str| {
            shown.lines().find(|l| l.starts_with(&format!("{key} "))).unwrap_or_else(|| {
                panic!("no line for {key} in:\n{shown}");
            })
        };
        assert!(line("priority").ends_with("# file /etc/nixmesh/config.toml"), "{shown}");
        assert!(line("mdns").starts_with("mdns = false "), "{shown}");
        assert!(line("mdns").ends_with("# flag"), "{shown}");
        assert!(line("http_listen").starts_with("http_listen = \"127.0.0.1:7373\""), "{shown}");
        assert!(line("http_listen").ends_with("# default"), "{shown}");
        assert!(shown.contains("# sign_key_file is unset"), "{shown}");
        // What is set reads back as a config file giving the same settings.
        let back = file::parse(&shown, Path::new("shown.toml")).unwrap();
        let again = EffectiveConfig::merge(&at("shown.toml"), Some(back), Map::new()).unwrap();
        assert_eq!(again.config, c.config);
    }

    #[test]
    fn show_json_has_every_key_with_value_and_source() {
        let c = merge(Some("priority = 20\n"), json!({ "mdns": false })).unwrap();
        let shown: Value = serde_json::from_str(&c.show_json()).unwrap();
        assert_eq!(
            shown["config_file"],
            json!({ "path": "/etc/nixmesh/config.toml", "read": true })
        );
        let settings = shown["settings"].as_object().unwrap();
        assert_eq!(settings.len(), c.sources.len());
        assert_eq!(
            settings["priority"],
            json!({ "value": 20, "source": "file", "file": "/etc/nixmesh/config.toml" })
        );
        assert_eq!(settings["mdns"], json!({ "value": false, "source": "flag" }));
        assert_eq!(settings["sign_key_file"], json!({ "value": null, "source": "default" }));
    }
}
