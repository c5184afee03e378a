//! `nixmesh completions <shell>` and `nixmesh man`: generated from the command's own clap
//! definition, so they never fall behind its flags.

use clap_complete::Shell;

use super::CliError;

/// The completion script for `shell`, for the command `command` (named as installed).
pub fn completions(mut command: clap::Command, shell: Shell) -> String {
    let name = command.get_name().to_owned();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut out);
    String::from_utf8(out).expect("clap_complete writes UTF-8")
}

/// The man page (roff) of `command`, or of its `subcommand` (as `command-subcommand(1)`, the
/// name its page's SUBCOMMANDS section gives).
pub fn man(command: clap::Command, subcommand: Option<&str>) -> Result<String, CliError> {
    let page = match subcommand {
        None => command,
        Some(name) => {
            let full = format!("{}-{name}", command.get_name());
            let sub = command.find_subcommand(name).ok_or_else(|| {
                let known: Vec<&str> = command.get_subcommands().map(|c| c.get_name()).collect();
                CliError::NoSuchSubcommand { name: name.to_owned(), known: known.join(", ") }
            })?;
            let version = command.get_version().unwrap_or_default().to_owned();
            let invoked = format!("{} {name}", command.get_name());
            sub.clone().name(full).bin_name(invoked).version(version)
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out).expect("writing to memory cannot fail");
    Ok(String::from_utf8(out).expect("clap_mangen writes UTF-8"))
}
