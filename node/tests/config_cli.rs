//! `nixmesh config show` and the config file, through the real binary: the settings it
//! prints (as TOML with sources, and as JSON), the file under the flags, and the errors a
//! person sees for a typo or a missing file.

mod support;

use std::path::Path;

use nixmesh_node::config::DEFAULT_CONFIG_PATH;
use serde_json::{Value, json};
use support::{nixmesh, stdout_of};

fn stderr_of_failed(args: &[&str]) -> String {
    let out = nixmesh(args);
    assert_eq!(out.status.code(), Some(1), "nixmesh {args:?} exits 1");
    String::from_utf8(out.stderr).expect("UTF-8 output")
}

/// A config file in `dir` holding `text`, and its path as an argument.
fn config_file(dir: &Path, text: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("writing the config file");
    path.to_str().expect("a UTF-8 path").to_owned()
}

const FILE: &str = r#"
priority = 20
http_listen = "127.0.0.1:9373"
peers = ["/ip4/192.0.2.1/tcp/7374"]
mdns = false
"#;

#[test]
fn show_prints_each_setting_with_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(dir.path(), FILE);
    let shown = stdout_of(&["config", "show", "--config", &file, "--priority", "5"]);
    let line = |key: &str| -> String {
        let found = shown.lines().find(|l| l.starts_with(&format!("{key} = ")));
        found.unwrap_or_else(|| panic!("no {key} in:\n{shown}")).split_whitespace().collect()
    };
    assert!(shown.starts_with(&format!("# config file: {file} (read)\n")), "{shown}");
    assert_eq!(line("priority"), "priority=5#flag");
    assert_eq!(line("http_listen"), format!("http_listen=\"127.0.0.1:9373\"#file{file}"));
    assert_eq!(line("mdns"), format!("mdns=false#file{file}"));
    assert_eq!(line("store"), "store=\"daemon\"#default");
    assert_eq!(line("p2p_listen"), "p2p_listen=[\"/ip4/0.0.0.0/tcp/7374\"]#default");
    assert!(shown.contains("# sign_key_file is unset"), "{shown}");
}

#[test]
fn show_json_gives_every_key_its_value_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(dir.path(), FILE);
    let args = ["config", "show", "--json", "--config", &file, "--peer", "/ip4/192.0.2.2/tcp/1"];
    let shown: Value = serde_json::from_str(&stdout_of(&args)).expect("JSON");
    assert_eq!(shown["config_file"], json!({ "path": file, "read": true }));
    let settings = &shown["settings"];
    assert_eq!(settings["priority"], json!({ "value": 20, "source": "file", "file": file }));
    // A list given by flags replaces the file's.
    let peers = json!({ "value": ["/ip4/192.0.2.2/tcp/1"], "source": "flag" });
    assert_eq!(settings["peers"], peers);
    assert_eq!(settings["state_dir"], json!({ "value": "/var/lib/nixmesh", "source": "default" }));
    assert_eq!(settings["real_store_dir"], json!({ "value": null, "source": "default" }));
    let keys = settings.as_object().unwrap().len();
    let every = serde_json::to_value(nixmesh_node::config::ServeConfig::default()).unwrap();
    assert_eq!(keys, every.as_object().unwrap().len(), "every setting is shown: {settings}");
    assert_eq!(settings["index_max_paths"]["value"], 50_000_000);
}

#[test]
fn flags_override_the_file_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(dir.path(), FILE);
    let show = |extra: &[&str]| -> Value {
        let mut args = vec!["config", "show", "--json", "--config", &file];
        args.extend_from_slice(extra);
        serde_json::from_str(&stdout_of(&args)).expect("JSON")
    };
    let only_file = show(&[]);
    assert_eq!(only_file["settings"]["http_listen"]["value"], "127.0.0.1:9373");
    let flagged = show(&["--http-listen", "127.0.0.1:1234", "--no-mdns"]);
    assert_eq!(
        flagged["settings"]["http_listen"],
        json!({ "value": "127.0.0.1:1234", "source": "flag" })
    );
    assert_eq!(flagged["settings"]["mdns"], json!({ "value": false, "source": "flag" }));
    assert_eq!(flagged["settings"]["priority"]["source"], "file");
}

#[test]
fn an_unknown_key_stops_serve_and_show_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(dir.path(), "priority = 5\nhttp_lisen = \"127.0.0.1:1\"\n");
    for command in [&["config", "show"][..], &["serve", "--no-mdns"][..]] {
        let mut args = command.to_vec();
        args.extend(["--config", &file]);
        let message = stderr_of_failed(&args);
        assert!(message.contains(&format!("config file {file}")), "{message}");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("unknown field `http_lisen`"), "{message}");
    }
}

#[test]
fn a_missing_file_is_an_error_only_when_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.toml");
    let missing = missing.to_str().unwrap();
    let message = stderr_of_failed(&["config", "show", "--config", missing]);
    assert!(message.contains(missing) && message.contains("--config"), "{message}");
    if Path::new(DEFAULT_CONFIG_PATH).exists() {
        eprintln!("{DEFAULT_CONFIG_PATH} exists here: not checking that its absence is fine");
        return;
    }
    let shown = stdout_of(&["config", "show"]);
    let first = format!("# config file: {DEFAULT_CONFIG_PATH} (not found, not needed)");
    assert!(shown.starts_with(&first), "{shown}");
}

#[test]
fn a_bad_value_names_its_key_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(dir.path(), "rescan_interval = 0\n");
    let message = stderr_of_failed(&["config", "show", "--config", &file]);
    assert!(message.contains(&format!("rescan_interval (from file {file})")), "{message}");
    let message = stderr_of_failed(&["config", "show", "--rescan-interval", "0"]);
    assert!(message.contains("rescan_interval (from flag)"), "{message}");
}

#[test]
fn serve_logs_json_lines_with_log_format_json_and_plain_text_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(dir.path(), "mdns = false\nupstreams = []\n");
    let state = dir.path().join("state");
    let store = format!("unix://{}", dir.path().join("no-daemon.sock").display());
    let serve = |extra: &[&str]| -> String {
        let mut args = vec!["serve", "--config", &file, "--state-dir", state.to_str().unwrap()];
        args.extend(["--store", &store]);
        args.extend_from_slice(extra);
        // No daemon at the socket: the node logs that it read its config, then stops.
        stderr_of_failed(&args)
    };
    let json = serve(&["--log-format", "json"]);
    let (logs, last) = json.trim_end().rsplit_once('\n').expect("logs, then the error");
    assert!(last.starts_with("nixmesh: --store "), "the error stays plain: {json}");
    let events: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let read = events.iter().find(|e| e["fields"]["message"] == "read the config file");
    let read = read.unwrap_or_else(|| panic!("no config line in {json}"));
    assert_eq!(read["level"], "INFO");
    assert_eq!(read["fields"]["file"], file.as_str());

    // The key in the file does the same; plain text (no colour codes into a pipe) otherwise.
    let json_file = config_file(dir.path(), "mdns = false\nlog_format = \"json\"\n");
    assert_eq!(json_file, file);
    assert!(serve(&[]).lines().next().is_some_and(|l| l.starts_with('{')), "from the file");
    let plain = serve(&["--log-format", "plain"]);
    assert!(plain.contains("INFO") && plain.contains("read the config file"), "{plain}");
    assert!(!plain.contains('{') && !plain.contains('\x1b'), "{plain}");
}
