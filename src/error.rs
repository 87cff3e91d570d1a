//! The one place that decides exit codes. Commands return `anyhow::Result<()>`; an error that
//! should not exit 1 carries a [`CliError`] somewhere in its chain, and [`exit`] reads it:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | a node failed, `verify` found damage, or the work itself failed (a libtorch error, I/O) |
//! | 2 | bad input: a malformed pipeline, an unknown key, a wrong type, a cycle, a bad `--set` or flag value, a missing file, nothing computed yet for `results`/`report` |
//! | 130 | interrupted (Ctrl-C, SIGTERM) |

use std::fmt;
use std::process::ExitCode;

/// An error with the exit code it maps to. `message: None` means the command already told the
/// user (a run's failed nodes are in its report), so only the code is left to give.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    message: Option<String>,
}

pub const FAILED: u8 = 1;
pub const BAD_INPUT: u8 = 2;
pub const INTERRUPTED: u8 = 130;

impl CliError {
    /// Exit with `code`; the command has already printed why.
    pub fn reported(code: u8) -> anyhow::Error {
        anyhow::Error::new(CliError { code, message: None })
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => f.write_str(m),
            None => write!(f, "exit {}", self.code),
        }
    }
}

impl std::error::Error for CliError {}

/// Bad input (exit 2), with the message the user sees.
pub fn bad(message: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(CliError {
        code: BAD_INPUT,
        message: Some(message.to_string()),
    })
}

/// Maps a command's result to the process exit code, printing the error (with its context chain)
/// unless the command already reported it.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    match e.downcast_ref::<CliError>() {
        Some(CliError { code, message: None }) => ExitCode::from(*code),
        Some(CliError { code, .. }) => {
            eprintln!("error: {e:#}");
            ExitCode::from(*code)
        }
        None => {
            eprintln!("error: {e:#}");
            ExitCode::from(FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn code(r: anyhow::Result<()>) -> ExitCode {
        exit(r)
    }

    #[test]
    fn codes_survive_context() {
        assert_eq!(code(Ok(())), ExitCode::SUCCESS);
        assert_eq!(code(Err(anyhow::anyhow!("io"))), ExitCode::from(1));
        assert_eq!(code(Err(bad("no such key"))), ExitCode::from(2));
        let wrapped: anyhow::Result<()> = Err(bad("line 3: unknown field")).context("pipelines/x.toml");
        assert_eq!(code(wrapped), ExitCode::from(2));
        assert_eq!(code(Err(CliError::reported(INTERRUPTED))), ExitCode::from(130));
    }
}
