//! Running the binary under a time limit, shared by the test binaries that hand it inputs that
//! could block or read forever (a FIFO opened for reading or writing, `/dev/zero`): such a run
//! fails its test instead of hanging the suite.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` with stdout and stderr captured; kills it and fails the test if it has not
/// finished within 30 s.
pub(crate) fn output_within_30s(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("{cmd:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
