//! The crash demo, smaller: journalled worker processes SIGKILLed at random while they
//! drive operations against the mock server in its own process, restarted each time;
//! in the end every operation executed exactly once and none is pending. Once with one
//! worker on a SQLite journal, once with a fleet of three on a PostgreSQL one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::path::PathBuf;
use std::process::Command;

/// The `crash` example's binary, brought up to date first (`cargo test --all-features`
/// has built it already, and then this is quick; a test run on its own builds it).
fn crash_example() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--example", "crash", "--all-features"])
        .status()
        .unwrap();
    assert!(status.success(), "could not build the crash example");
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(|deps| deps.parent()).unwrap();
    profile.join("examples").join("crash")
}

/// Runs the demo with these arguments and checks its verdict and its table's row:
/// kills, operations, executions, duplicates, pending.
fn crash_demo(args: &[&str], ops: &str) {
    let output = Command::new(crash_example()).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("OK: every operation executed exactly once"),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
        .unwrap();
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert!(
        cells[1].parse::<u32>().unwrap() >= 1,
        "at least one kill landed: {row}"
    );
    assert_eq!(&cells[2..6], [ops, ops, "0", "0"], "{row}");
}

#[test]
fn a_worker_killed_at_random_still_executes_every_operation_once() {
    crash_demo(
        &[
            "--ops",
            "150",
            "--kills",
            "6",
            "--seed",
            "11",
            "--fault-rate",
            "0.2",
        ],
        "150",
    );
}

/// The fleet: three worker processes share one PostgreSQL journal and one mock server,
/// killed at random; every operation executes exactly once.
#[test]
fn a_fleet_sharing_a_postgres_journal_executes_every_operation_once() {
    let Some(cluster) = support::postgres::Cluster::start("fleet") else {
        return;
    };
    crash_demo(
        &[
            "--ops",
            "150",
            "--kills",
            "4",
            "--seed",
            "5",
            "--fault-rate",
            "0.2",
            "--workers",
            "3",
            "--postgres",
            &cluster.url,
        ],
        "150",
    );
}
