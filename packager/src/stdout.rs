//! What a command prints on stdout, the result a script reads.

use std::fmt::Display;
use std::io::{ErrorKind, Write};

use anyhow::Context;

/// Writes `text` to stdout. A reader that went away early (`kiln inspect …
/// | head -3`) is not an error: it took what it wanted. `print!` would
/// panic there, with a backtrace hint, after the work had succeeded.
pub fn print(text: impl Display) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match write!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        result => result.context("cannot write to stdout"),
    }
}
