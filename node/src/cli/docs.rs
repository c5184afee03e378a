//! `nixmesh completions <shell>` and `nixmesh man`: generated from the command's own clap
//! definition, so they never fall behind its flags.

use clap_complete::Shell;

/// The completion script for `shell`, for the command `command` (named as installed).
pub fn completions(mut command: clap::Command, shell: Shell) -> String {
    let name = command.get_name().to_owned();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut out);
    String::from_utf8(out).expect("clap_complete writes UTF-8")
}

/// The man page (roff) for `command`, its subcommands in it.
pub fn man(command: clap::Command) -> String {
    let mut out = Vec::new();
    clap_mangen::Man::new(command).render(&mut out).expect("writing to memory cannot fail");
    String::from_utf8(out).expect("clap_mangen writes UTF-8")
}
