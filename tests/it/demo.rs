//! `chunkgate demo` as a user runs it: the built binary, its exit status and its key lines.

use std::process::Command;
use std::time::{Duration, Instant};

/// The count on a line of the table, in the left (direct) or right (chunkgate) column:
/// `label  N    label  M` or `label  N of T    label  M of T`.
fn count(line: &str, right: bool) -> usize {
    let nums: Vec<usize> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let per_column = if line.contains(" of ") { 2 } else { 1 };
    assert_eq!(nums.len(), 2 * per_column, "unexpected count line {line:?}");
    nums[if right { per_column } else { 0 }]
}

#[test]
fn demo_shows_broken_stream_direct_and_clean_stream_through_chunkgate() {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_chunkgate"))
        .arg("demo")
        .env_remove("NO_COLOR")
        .output()
        .expect("run chunkgate demo");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    // Not a terminal: plain text.
    assert!(
        !stdout.contains('\x1b'),
        "colour escapes on a pipe:\n{stdout}"
    );

    assert!(stdout.contains("directly from the upstream"), "{stdout}");
    assert!(stdout.contains("through chunkgate"), "{stdout}");
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{stdout}"))
    };
    // Through chunkgate: clean Korean text, nothing broken.
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_end().ends_with("안녕하세요! 저는 청크게이트입니다.")),
        "{stdout}"
    );
    let chars = line("broken characters");
    let split = line("events split across reads");
    let unparseable = line("unparseable messages");
    assert_eq!(count(chars, true), 0, "{chars}");
    assert_eq!(count(split, true), 0, "{split}");
    assert_eq!(count(unparseable, true), 0, "{unparseable}");
    // Directly: the adversarial splits reached the naive client.
    assert!(count(split, false) > 0, "{split}");
    assert!(count(unparseable, false) > 0, "{unparseable}");
    // Verdicts.
    assert!(stdout.contains("\n  directly   FAIL  "), "{stdout}");
    assert!(stdout.contains("\n  chunkgate  PASS  "), "{stdout}");
}

#[test]
fn demo_no_color_flag_and_help() {
    let output = Command::new(env!("CARGO_BIN_EXE_chunkgate"))
        .args(["demo", "--help"])
        .output()
        .expect("run chunkgate demo --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--no-color"), "{help}");
}
