//! Network and vsock backends, checked with tiny guests directly on /dev/kvm: real tap
//! devices and Unix sockets on this host, refused with one line when they cannot be used.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{assert_rejected, halted_vm, run_ember as run, scratch, text, tiny};

/// A tap device for one test, deleted on drop. `None` (and a note) when this host cannot
/// create taps (no CAP_NET_ADMIN): the tests that need one then check nothing.
struct TestTap(String);

impl TestTap {
    fn new(tag: &str) -> Option<Self> {
        let name = format!("emb{tag}{}", std::process::id() % 100_000);
        let out = Command::new("ip")
            .args(["tuntap", "add", "dev", &name, "mode", "tap"])
            .output()
            .expect("run ip");
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot create tap devices here: {}",
                text(&out).1.trim()
            );
            return None;
        }
        Some(Self(name))
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

#[test]
fn a_tap_device_is_attached_and_announced() {
    let Some(tap) = TestTap::new("a") else { return };
    let kernel = tiny("hello-pvh");
    let out = run(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 acpi=off",
        "--net",
        &format!("tap={},mac=02:00:00:00:00:09", tap.0),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("virtio_mmio.device=4K@0xd0000000:5"),
        "{stdout}"
    );
    // The VM let go of the tap: it can be attached again.
    let again = run(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--net",
        &format!("tap={}", tap.0),
    ]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again).1);
}

#[test]
fn unusable_taps_are_refused_with_one_line() {
    let kernel = tiny("hello-pvh");
    let k = kernel.to_str().unwrap();
    let missing = format!("embnone{}", std::process::id() % 100_000);
    assert_rejected(
        &run(&["--kernel", k, "--net", &format!("tap={missing}")]),
        &format!("tap device `{missing}` does not exist"),
    );
    assert_rejected(
        &run(&["--kernel", k, "--net", "tap=lo"]),
        "`lo` is not a tap device",
    );
    assert_rejected(
        &run(&["--kernel", k, "--net", "tap=a/b"]),
        "invalid tap device name",
    );
    let Some(tap) = TestTap::new("b") else { return };
    let spec = format!("tap={}", tap.0);
    assert_rejected(
        &run(&["--kernel", k, "--net", &spec, "--net", &spec]),
        &format!("tap `{}` is used by both `net0` and `net1`", tap.0),
    );
    // A tap held by a running VM is busy for everyone else.
    let mut first = halted_vm(&["--net", &spec]);
    assert_rejected(
        &run(&["--kernel", k, "--net", &spec]),
        &format!("tap device `{}` is busy", tap.0),
    );
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn vsock_socket_is_created_and_removed_and_bad_settings_are_refused() {
    let dir = scratch("vsock-input");
    let sock = dir.join("v.sock");
    let spec = format!("cid=3,socket={}", sock.display());
    let mut vm = halted_vm(&["--vsock", &spec]);
    assert!(sock.exists(), "the VM did not create {}", sock.display());
    // The path is taken while the VM runs.
    let k = tiny("hello-pvh");
    let k = k.to_str().unwrap();
    assert_rejected(&run(&["--kernel", k, "--vsock", &spec]), "already exists");
    // A host client that connects and goes away does not disturb the VM.
    drop(std::os::unix::net::UnixStream::connect(&sock).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    assert!(vm.try_wait().unwrap().is_none(), "the VM exited");
    // SIGTERM stops the VM cleanly, and the socket goes with it.
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(vm.id() as i32, libc::SIGTERM) };
    assert_eq!(vm.wait().unwrap().code(), Some(143));
    assert!(!sock.exists(), "{} left behind", sock.display());

    for (vsock, needle) in [
        (
            format!("cid=2,socket={}", sock.display()),
            "guest CID 2 is invalid",
        ),
        (
            format!("cid=3,socket={}", dir.join("no/such/dir/v.sock").display()),
            "parent directory does not exist",
        ),
    ] {
        assert_rejected(&run(&["--kernel", k, "--vsock", &vsock]), needle);
    }
    // A regular file in the way is never deleted.
    std::fs::write(&sock, b"keep").unwrap();
    assert_rejected(&run(&["--kernel", k, "--vsock", &spec]), "already exists");
    assert_eq!(std::fs::read(&sock).unwrap(), b"keep");
    assert!(Path::new(&sock).is_file());
}
