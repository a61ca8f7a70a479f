//! Boots the Debian cloud kernel (bzImage and the unpacked ELF) with the busybox test
//! initramfs. Runs directly where /dev/kvm can run Linux, and inside the nested-KVM box
//! (resources/box/box.sh) elsewhere; the box is started on first use and stops when this test
//! process exits.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::{root, scratch, text};

/// Per-boot time limit, generous for nested KVM under TCG.
const TIMEOUT_SECS: &str = "600";

struct Env {
    boxed: bool,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let status = Command::new(root().join("resources/guest/build.sh"))
            .status()
            .expect("run resources/guest/build.sh");
        assert!(status.success(), "building guest images failed");
        let box_sh = root().join("resources/box/box.sh");
        let boxed = Command::new(&box_sh)
            .arg("need")
            .status()
            .expect("run box.sh need")
            .success();
        if boxed {
            let status = Command::new(&box_sh)
                .args(["start", "--owner", &std::process::id().to_string()])
                .status()
                .expect("run box.sh start");
            assert!(status.success(), "starting the nested-KVM box failed");
        }
        Env { boxed }
    })
}

fn guest(file: &str) -> String {
    root().join("build/guest").join(file).display().to_string()
}

/// Runs `sh -c SCRIPT` (which may use `$EMBER` for the binary under test) where Linux guests
/// can run, from the repository root.
fn sh(script: &str) -> Output {
    let script = format!("EMBER={}; {script}", env!("CARGO_BIN_EXE_ember"));
    let mut cmd = if env().boxed {
        let mut c = Command::new(root().join("resources/box/box.sh"));
        c.args(["exec", "--timeout", TIMEOUT_SECS, "--", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("timeout");
        c.args([TIMEOUT_SECS, "sh", "-c", &script]);
        c
    };
    cmd.current_dir(root())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs `ember run ARGS`.
fn ember_run(args: &str) -> Output {
    sh(&format!("exec \"$EMBER\" run {args}"))
}

/// Asserts a clean run whose /init reported `cpus` vCPUs and about `mem_mib` of memory.
fn assert_booted(out: &Output, cpus: u32, mem_mib: u64) {
    let (stdout, stderr) = text(out);
    let marker = stdout
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("EMBER-INIT-OK "))
        .unwrap_or_else(|| panic!("no EMBER-INIT-OK marker\nstdout: {stdout}\nstderr: {stderr}"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {stderr}\nstdout tail: {}",
        tail(&stdout)
    );
    let field = |name: &str| -> u64 {
        marker
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in `{marker}`"))
    };
    assert_eq!(field("cpus"), u64::from(cpus), "{marker}");
    // MemTotal excludes the kernel image and early reservations: expect 80–100 % of the RAM.
    let mem_kb = field("mem_kb");
    let ram_kb = mem_mib * 1024;
    assert!(
        mem_kb <= ram_kb && mem_kb * 100 >= ram_kb * 80,
        "MemTotal {mem_kb} kB for {mem_mib} MiB: {marker}"
    );
    assert!(
        stdout.contains("reboot: Restarting system"),
        "guest did not reboot: {}",
        tail(&stdout)
    );
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

#[test]
fn bzimage_with_initrd_2_vcpus_256m() {
    let out = ember_run(&format!(
        "--kernel {} --initrd {} --cpus 2 --memory 256M",
        guest("vmlinuz"),
        guest("initramfs.cpio.gz")
    ));
    assert_booted(&out, 2, 256);
}

#[test]
fn elf_vmlinux_with_initrd_1_vcpu_128m() {
    let out = ember_run(&format!(
        "--kernel {} --initrd {}",
        guest("vmlinux"),
        guest("initramfs.cpio.gz")
    ));
    assert_booted(&out, 1, 128);
    assert!(text(&out)
        .0
        .contains("Command line: console=ttyS0 reboot=k panic=1 pci=off"));
}

#[test]
fn firecracker_config_file_2_vcpus_256m() {
    let dir = scratch("linux-config");
    let cfg = dir.join("vm.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": "{}", "boot_args": "console=ttyS0 reboot=k panic=1 ember.echo=from-config"}},
                "machine-config": {{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}}, "drives": []}}"#,
            guest("vmlinuz"),
            guest("initramfs.cpio.gz")
        ),
    )
    .unwrap();
    let out = ember_run(&format!("--config-file {}", cfg.display()));
    assert_booted(&out, 2, 256);
    assert!(text(&out).0.contains("EMBER-ECHO from-config"));
}

#[test]
fn memory_sizes_including_ram_above_the_mmio_hole() {
    for (mem, vmlinux) in [(512u64, "vmlinuz"), (3584, "vmlinux")] {
        let out = ember_run(&format!(
            "--kernel {} --initrd {} --memory {mem}M",
            guest(vmlinux),
            guest("initramfs.cpio.gz")
        ));
        assert_booted(&out, 1, mem);
    }
}

#[test]
fn four_vcpus() {
    let out = ember_run(&format!(
        "--kernel {} --initrd {} --cpus 4 --memory 192M",
        guest("vmlinux"),
        guest("initramfs.cpio.gz")
    ));
    assert_booted(&out, 4, 192);
}

#[test]
fn kernel_panic_without_initrd_reboots_with_panic_1() {
    for kernel in ["vmlinuz", "vmlinux"] {
        let out = ember_run(&format!("--kernel {}", guest(kernel)));
        let (stdout, stderr) = text(&out);
        assert!(
            stdout.contains("Kernel panic - not syncing"),
            "{}",
            tail(&stdout)
        );
        assert_eq!(out.status.code(), Some(0), "{stderr}");
    }
}

#[test]
fn guest_triggered_panic_and_console_input() {
    let out = ember_run(&format!(
        "--kernel {} --initrd {} --cmdline 'console=ttyS0 reboot=k panic=1 ember.test=panic'",
        guest("vmlinuz"),
        guest("initramfs.cpio.gz")
    ));
    assert!(
        text(&out)
            .0
            .contains("Kernel panic - not syncing: sysrq triggered crash"),
        "{}",
        tail(&text(&out).0)
    );
    assert_eq!(out.status.code(), Some(0));

    // Typed input reaches a shell in the guest through the UART; the shell computes the answer.
    let dir = scratch("linux-input");
    let input: PathBuf = dir.join("input");
    std::fs::write(&input, "echo typed-$((6*7))\nexit\n").unwrap();
    let out = sh(&format!(
        "cat {} | \"$EMBER\" run --kernel {} --initrd {} --cmdline 'console=ttyS0 reboot=k panic=1 ember.test=shell'",
        input.display(),
        guest("vmlinux"),
        guest("initramfs.cpio.gz")
    ));
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("typed-42"), "{}\n{stderr}", tail(&stdout));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
