//! What a person reads about `nixmesh` matches what it does: every `nixmesh` command line in
//! `docs/guide.md` parses with the real command-line definition, every TOML block there is
//! a valid config file, and every `nixos-install` names the node's own address; and, through
//! the binary, `keygen`, `completions` and `man`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use clap::Parser;
use nixmesh_node::args::Cli;
use support::{nixmesh, stdout_of};

fn guide() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/guide.md");
    std::fs::read_to_string(path).expect("docs/guide.md")
}

/// The fenced blocks of `markdown` with the info string `lang`, each as its text.
fn blocks(markdown: &str, lang: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) if info.trim() == lang => current = Some(String::new()),
            (Some(block), Some("")) => {
                found.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    found
}

#[test]
fn every_nixmesh_command_in_the_guide_parses() {
    let guide = guide();
    let mut commands = Vec::new();
    for block in blocks(&guide, "sh") {
        // `./nixmesh`: the static binary copied to the installer, run where it lies.
        let lines = block.lines().map(|l| l.strip_prefix("./").unwrap_or(l));
        for line in lines.filter(|l| l.starts_with("nixmesh ")) {
            // The command alone, without a redirection of its output.
            let words: Vec<&str> = line.split_whitespace().take_while(|w| *w != ">").collect();
            if let Err(e) = Cli::try_parse_from(&words) {
                panic!("the guide's `{line}` does not parse:\n{e}");
            }
            commands.push(words[1].to_owned());
        }
    }
    commands.sort();
    commands.dedup();
    let documented = ["completions", "config", "keygen", "man", "peers", "serve", "status", "why"];
    assert_eq!(commands, documented, "the guide shows every subcommand");
}

/// `nixos-install` with the node as its substituter: the address the node serves on by
/// default, or another machine's LAN substituter at its port; and, when it names the keys to
/// trust, cache.nixos.org's among them (the option replaces Nix's list, and the installer's
/// paths come from there).
#[test]
fn every_nixos_install_in_the_guide_asks_the_node_at_its_default_address() {
    let guide = guide();
    let node = format!("http://{}", nixmesh_node::config::DEFAULT_HTTP_LISTEN);
    let mut installs = 0;
    for block in blocks(&guide, "sh") {
        for line in block.lines().filter(|l| l.starts_with("nixos-install ")) {
            installs += 1;
            let option = |name: &str| {
                let (_, rest) = line.split_once(&format!("--option {name} "))?;
                let value = match rest.strip_prefix('"') {
                    Some(quoted) => quoted.split('"').next(),
                    None => rest.split_whitespace().next(),
                };
                value.map(str::to_owned)
            };
            let substituter = option("substituters").unwrap_or_default();
            let lan_port = format!(":{}", nixmesh_node::config::DEFAULT_LAN_PORT);
            assert!(substituter == node || substituter.ends_with(&lan_port), "{line}");
            if let Some(keys) = option("trusted-public-keys") {
                let official = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
                assert!(keys.split(' ').any(|k| k == official), "{line}");
            }
        }
    }
    assert!(installs >= 2, "the guide shows nixos-install, with and without keys");
}

#[test]
fn every_config_file_in_the_guide_is_valid() {
    let guide = guide();
    let files = blocks(&guide, "toml");
    assert!(files.len() >= 2, "the guide shows config files");
    for text in files {
        if let Err(e) = nixmesh_node::config::file::parse(&text, Path::new("guide.toml")) {
            panic!("the guide's config file is not valid: {e}\n{text}");
        }
    }
}

#[test]
fn keygen_writes_a_secret_key_once_and_prints_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("signing.key");
    let secret_arg = secret.to_str().unwrap();
    let public = stdout_of(&["keygen", "myhost-1", "--out", secret_arg]);
    let public = public.strip_suffix('\n').expect("one line");
    assert!(public.starts_with("myhost-1:") && public.len() > 50, "{public}");
    let written = std::fs::read_to_string(&secret).unwrap();
    assert!(written.starts_with("myhost-1:"), "the secret key in Nix's format");
    assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    // Never over an existing key.
    let again = nixmesh(&["keygen", "myhost-1", "--out", secret_arg]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), written);
}

#[test]
fn completions_know_every_subcommand() {
    for (shell, marker) in [
        ("bash", "complete -F _nixmesh"),
        ("zsh", "#compdef nixmesh"),
        ("fish", "complete -c nixmesh"),
        ("elvish", "edit:completion:arg-completer[nixmesh]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let script = stdout_of(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for sub in ["serve", "status", "peers", "why", "keygen", "completions", "man"] {
            assert!(script.contains(sub), "{shell}: no {sub}");
        }
    }
    assert_eq!(nixmesh(&["completions", "tcsh"]).status.code(), Some(2), "an unknown shell");
}

#[test]
fn a_man_page_for_the_command_and_each_subcommand() {
    let page = stdout_of(&["man"]);
    assert!(page.contains(".TH nixmesh 1"), "{page}");
    assert!(page.contains("peer\\-to\\-peer binary cache"), "{page}");
    // The package installs a page for each subcommand the main page names.
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("../nix/package.nix");
    let package = std::fs::read_to_string(package).unwrap();
    let listed = package.lines().find_map(|l| l.trim().strip_prefix("for sub in "));
    let listed: Vec<&str> =
        listed.expect("the package's loop").trim_end_matches("; do").split(' ').collect();
    let command = nixmesh_node::args::command();
    let subcommands: Vec<&str> =
        command.get_subcommands().map(|c| c.get_name()).filter(|n| *n != "help").collect();
    assert_eq!(listed, subcommands, "nix/package.nix installs every subcommand's page");
    for sub in subcommands {
        // roff escapes every dash in running text.
        let roff = sub.replace('-', "\\-");
        assert!(page.contains(&format!("nixmesh\\-{roff}(1)")), "nixmesh(1) names {sub}");
        let sub_page = stdout_of(&["man", sub]);
        assert!(sub_page.contains(&format!(".TH nixmesh-{sub} 1")), "{sub_page}");
        assert!(sub_page.contains(&format!("\\fBnixmesh {roff}\\fR")), "{sub_page}");
    }
    assert!(stdout_of(&["man", "why"]).contains("\\fB\\-\\-json\\fR"), "the flags are in it");
    let unknown = nixmesh(&["man", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no subcommand \"nope\""));
}
