//! Running a command to completion with a time limit, so that a hung tool fails its test with
//! what it printed instead of hanging the whole run.

use std::io::{Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::wait::wait_for;

/// Extends [`Command`] with bounded runs that capture output.
pub trait CommandExt {
    /// Runs the command with stdin closed, capturing stdout and stderr, and waits at most
    /// `limit` for it to exit. Panics when it cannot start or runs over (it is killed then).
    fn output_within(&mut self, limit: Duration) -> Output;

    /// Like [`CommandExt::output_within`], with `input` written to its stdin (then closed).
    fn output_with_input_within(&mut self, input: Vec<u8>, limit: Duration) -> Output;

    /// Like [`CommandExt::output_within`], and panics, with its stderr, unless it exits 0.
    /// Returns its stdout.
    fn stdout_within(&mut self, limit: Duration) -> Vec<u8>;
}

impl CommandExt for Command {
    fn output_within(&mut self, limit: Duration) -> Output {
        run(self, None, limit)
    }

    fn output_with_input_within(&mut self, input: Vec<u8>, limit: Duration) -> Output {
        run(self, Some(input), limit)
    }

    fn stdout_within(&mut self, limit: Duration) -> Vec<u8> {
        let shown = describe(self);
        let out = self.output_within(limit);
        if !out.status.success() {
            panic!(
                "`{shown}` failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout),
            );
        }
        out.stdout
    }
}

fn run(cmd: &mut Command, input: Option<Vec<u8>>, limit: Duration) -> Output {
    let shown = describe(cmd);
    let stdin = if input.is_some() { Stdio::piped() } else { Stdio::null() };
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{shown}`: {e}"));
    // Written on a thread of its own, so that a child that does not read cannot block us.
    let writer = input.map(|input| {
        let mut pipe = child.stdin.take().expect("piped");
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        })
    });
    let stdout = drain(child.stdout.take().expect("piped"));
    let stderr = drain(child.stderr.take().expect("piped"));
    let status = wait_or_kill(&mut child, limit, &shown);
    if let Some(writer) = writer {
        writer.join().expect("writer thread");
    }
    Output {
        status,
        stdout: stdout.join().expect("reader thread"),
        stderr: stderr.join().expect("reader thread"),
    }
}

/// Waits for `child` to exit within `limit`; kills it and panics otherwise.
fn wait_or_kill(child: &mut Child, limit: Duration, shown: &str) -> std::process::ExitStatus {
    let mut status = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(limit, &format!("`{shown}` to exit"), || {
            status = child.try_wait().expect("waiting for a child");
            status
        })
    }));
    match outcome {
        Ok(status) => status,
        Err(panic) => {
            let _ = child.kill();
            let _ = child.wait();
            std::panic::resume_unwind(panic)
        }
    }
}

/// Reads `pipe` to its end on a thread of its own, so that neither pipe can fill up and
/// block the child.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// The command as a person would type it, with very long arguments shortened. A command
/// run on a test host ([`crate::Host::command`]) shows as `[NETNS] PROGRAM ARGS`.
pub fn describe(cmd: &Command) -> String {
    const LONGEST_ARG: usize = 120;
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    let (mut shown, args) = match args.as_slice() {
        [netns, exec, ns, program, rest @ ..]
            if cmd.get_program() == "ip" && [netns, exec] == ["netns", "exec"] =>
        {
            (format!("[{ns}] {program}"), rest)
        }
        all => (cmd.get_program().to_string_lossy().into_owned(), all),
    };
    for arg in args {
        shown.push(' ');
        if arg.len() > LONGEST_ARG {
            let cut = (0..=LONGEST_ARG).rev().find(|&i| arg.is_char_boundary(i)).unwrap_or(0);
            shown.push_str(&format!("{}…({} bytes)", &arg[..cut], arg.len()));
        } else if arg.is_empty() || arg.contains(char::is_whitespace) {
            shown.push_str(&format!("{arg:?}"));
        } else {
            shown.push_str(arg);
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_both_streams() {
        let out = Command::new("sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .output_within(Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    #[should_panic(expected = "`sh -c \"exit 1\"` failed")]
    fn stdout_within_panics_on_failure() {
        Command::new("sh").args(["-c", "exit 1"]).stdout_within(Duration::from_secs(10));
    }

    #[test]
    #[should_panic(expected = "to exit")]
    fn a_command_that_runs_over_is_killed() {
        Command::new("sleep").arg("30").output_within(Duration::from_millis(200));
    }

    #[test]
    fn describe_shortens_long_arguments() {
        let mut cmd = Command::new("curl");
        cmd.arg("x".repeat(1000));
        let shown = describe(&cmd);
        assert!(shown.ends_with("…(1000 bytes)"), "{shown}");
        assert!(shown.len() < 200);
    }

    #[test]
    fn describe_shows_a_host_command_by_its_namespace() {
        let host = crate::netns::Host::for_tests("nm1x0-h2", "/tmp/lan/h2");
        let mut cmd = host.command("nix");
        cmd.args(["store", "ping"]);
        assert_eq!(describe(&cmd), "[nm1x0-h2] nix store ping");
    }
}
