//! Running Linux guests: directly where /dev/kvm can run Linux, inside the nested-KVM box
//! (resources/box/box.sh) elsewhere. The box is private to the test process, started on first
//! use and stopped when the process exits.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

use super::root;

/// Per-command time limit, generous for nested KVM under TCG (the longest test script takes
/// about a minute in the box).
pub const TIMEOUT_SECS: &str = "300";
/// Command line for most boots: `quiet`, because every console byte is a (slow, when nested)
/// VM exit. Panic and reboot messages still show.
pub const QUIET: &str = "--cmdline 'console=ttyS0 reboot=k panic=1 pci=off quiet'";

struct Env {
    /// State directory of this process's private box, when Linux needs the box here.
    box_dir: Option<PathBuf>,
}

fn box_sh(box_dir: &Path) -> Command {
    let mut c = Command::new(root().join("resources/box/box.sh"));
    // EMBER_BOX_DEBUG keeps the box kernel's log in its console.log, for post-mortems.
    c.env("EMBER_BOX_DIR", box_dir).env("EMBER_BOX_DEBUG", "1");
    c
}

/// One guest at a time: nested KVM under TCG has crashed the box's own kernel when several
/// guests booted at once, and serial boots are easier to read in logs anyway.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let status = Command::new(root().join("resources/guest/build.sh"))
            .status()
            .expect("run resources/guest/build.sh");
        assert!(status.success(), "building guest images failed");
        let need = Command::new(root().join("resources/box/box.sh"))
            .arg("need")
            .status()
            .expect("run box.sh need");
        if !need.success() {
            return Env { box_dir: None };
        }
        // A private box owned by this process: it stops when the tests end, and neither
        // disturbs nor depends on a box a developer has running.
        let dir = std::env::temp_dir().join(format!("ember-test-box-{}", std::process::id()));
        let status = box_sh(&dir)
            .args(["start", "--owner", &std::process::id().to_string()])
            .status()
            .expect("run box.sh start");
        assert!(status.success(), "starting the nested-KVM box failed");
        Env { box_dir: Some(dir) }
    })
}

pub fn guest(file: &str) -> String {
    root().join("build/guest").join(file).display().to_string()
}

/// Runs `sh -c SCRIPT` (which may use `$EMBER` for the binary under test) where Linux guests
/// can run, from the repository root.
pub fn sh(script: &str) -> Output {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let script = format!("EMBER={}; {script}", env!("CARGO_BIN_EXE_ember"));
    let Some(dir) = &env().box_dir else {
        let mut direct = Command::new("timeout");
        direct.args([TIMEOUT_SECS, "sh", "-c", &script]);
        return direct
            .current_dir(root())
            .stdin(Stdio::null())
            .output()
            .unwrap();
    };
    let mut attempt = 1;
    loop {
        let out = box_sh(dir)
            .args(["exec", "--timeout", TIMEOUT_SECS, "--", "sh", "-c", &script])
            .current_dir(root())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        // 125: the box itself failed (its kernel died or wedged), not the command. 124 with a
        // guest kernel reporting a stalled CPU: a nested vCPU stopped running, which nested
        // SVM under TCG does now and then to QEMU's guests too. Show why, and give the command
        // one more chance in a fresh box; the command's other failures are final.
        let why = match out.status.code() {
            Some(125) => "nested-KVM box failed",
            Some(124) if guest_stalled(&out.stdout) => "guest CPU stalled in the nested-KVM box",
            _ => return out,
        };
        if attempt == 2 {
            return out;
        }
        let log = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
        eprintln!(
            "{why}; guest output ends with:\n{}\nbox console ends with:\n{}\nretrying in a fresh box",
            tail(&String::from_utf8_lossy(&out.stdout)),
            tail(&log)
        );
        let _ = box_sh(dir).arg("stop").status();
        let started = box_sh(dir)
            .args(["start", "--owner", &std::process::id().to_string()])
            .status()
            .expect("run box.sh start");
        assert!(started.success(), "restarting the nested-KVM box failed");
        attempt += 1;
    }
}

/// True if a guest kernel's console output reports a CPU stall (RCU) or a soft lockup.
fn guest_stalled(stdout: &[u8]) -> bool {
    let out = String::from_utf8_lossy(stdout);
    out.contains("rcu: INFO: rcu_") && out.contains("detected stall")
        || out.contains("watchdog: BUG: soft lockup")
}

/// Runs `ember run ARGS`.
pub fn ember_run(args: &str) -> Output {
    sh(&format!("exec \"$EMBER\" run {args}"))
}

/// The minimal microVM kernel (resources/kernel/build.sh: virtio built in,
/// `VIRTIO_MMIO_CMDLINE_DEVICES`), built on first use (about 8 minutes from scratch, instant
/// when up to date).
pub fn microvm_kernel() -> String {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(root().join("resources/kernel/build.sh"))
            .status()
            .expect("run resources/kernel/build.sh");
        assert!(status.success(), "building the microVM kernel failed");
    });
    root().join("build/kernel/vmlinux").display().to_string()
}

/// The last 25 lines of `s`.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// `script` in base64, for `ember.script=`.
pub fn b64(script: &str) -> String {
    let out = Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(script.as_bytes())?;
            c.wait_with_output()
        })
        .expect("run base64");
    String::from_utf8(out.stdout).unwrap()
}

/// The md5 of a file, as hex.
pub fn md5(path: &Path) -> String {
    let out = Command::new("md5sum")
        .arg(path)
        .output()
        .expect("run md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
