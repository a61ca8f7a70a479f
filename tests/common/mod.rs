//! Shared helpers for integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub mod linux;

/// Repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Path of a tiny test guest (`hello-pvh`, `fault-lm64`, ...), built on first use.
pub fn tiny(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let dir = root().join("target/test-guests");
        let status = Command::new(root().join("resources/test-guests/build.sh"))
            .arg(&dir)
            .status()
            .expect("run resources/test-guests/build.sh");
        assert!(status.success(), "building tiny test guests failed");
        dir
    });
    dir.join(format!("{name}.elf"))
}

/// A command running the `ember` binary under test.
pub fn ember() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ember"))
}

/// Runs `ember run ARGS` to completion with no console input.
pub fn run_ember(args: &[&str]) -> std::process::Output {
    ember()
        .arg("run")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// A VM running the `halt-pvh` tiny guest (it idles until killed) with `args` added, given
/// half a second to set its devices up; for tests about resources a running VM holds.
pub fn halted_vm(args: &[&str]) -> std::process::Child {
    let child = ember()
        .args(["run", "--kernel"])
        .arg(tiny("halt-pvh"))
        .args(args)
        .args(["--serial", "none"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    child
}

/// A fresh scratch directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-test-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts `out` is a clean startup failure: status 1 and one stderr line naming `needle`.
pub fn assert_rejected(out: &Output, needle: &str) {
    let (stdout, stderr) = text(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("ember: error: "), "{stderr}");
    assert!(
        lines[0].contains(needle),
        "expected `{needle}` in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
