//! The crash demo, smaller: a journalled worker process SIGKILLed at random while it
//! drives operations against the mock server in its own process, restarted each time;
//! in the end every operation executed exactly once and none is pending.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

use std::path::PathBuf;
use std::process::Command;

/// The `crash` example's binary, built beside this test (`cargo test` builds the
/// examples); built here if this test was run on its own.
fn crash_example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let example = profile.join("examples").join("crash");
    if !example.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--example",
                "crash",
                "--features",
                "mock,journal-sqlite",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "could not build the crash example");
    }
    example
}

#[test]
fn a_worker_killed_at_random_still_executes_every_operation_once() {
    let output = Command::new(crash_example())
        .args([
            "--ops",
            "150",
            "--kills",
            "6",
            "--seed",
            "11",
            "--fault-rate",
            "0.2",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("OK: every operation executed exactly once"),
        "{stdout}"
    );
    // The table's row: kills, operations, executions, duplicates, pending, ...
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
        .unwrap();
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert!(
        cells[1].parse::<u32>().unwrap() >= 1,
        "at least one kill landed: {row}"
    );
    assert_eq!(&cells[2..6], ["150", "150", "0", "0"], "{row}");
}
