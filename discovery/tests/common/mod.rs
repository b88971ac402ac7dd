//! Support shared by the `weftctl` tests: the binary, run as an operator
//! runs it.

use std::process::Command;

/// Runs `weftctl` with `args`. Returns its exit code (-1 when a signal
/// ended it) and what it printed: stdout, then stderr.
pub fn weftctl(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(args)
        .output()
        .expect("run weftctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}
