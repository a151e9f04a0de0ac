//! The `atelier` binary: a thin shell over the library crates.

use std::process::ExitCode;

mod cli;
mod cmd;

fn main() -> ExitCode {
    match cmd::run() {
        Ok(code) => code,
        Err(err) => {
            // One line, the whole cause chain.
            let mut msg = format!("error: {err}");
            for cause in err.chain().skip(1) {
                msg.push_str(&format!(": {cause}"));
            }
            eprintln!("{msg}");
            ExitCode::from(2)
        }
    }
}
