//! Boots the Debian cloud kernel (bzImage and the unpacked ELF) with the busybox test
//! initramfs. Runs directly where /dev/kvm can run Linux, and inside the nested-KVM box
//! (resources/box/box.sh) elsewhere; the box is started on first use and stops when this test
//! process exits.

mod common;

use std::process::Output;

use common::linux::{ember_run, guest, sh, tail, QUIET};
use common::{scratch, text};

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
    // MemTotal excludes the kernel image (about 35 MiB for this kernel) and early reservations
    // that grow with RAM (struct pages and friends, 4.5 % at 3.5 GiB): allow 48 MiB plus 5 %.
    let mem_kb = field("mem_kb");
    let ram_kb = mem_mib * 1024;
    let floor = ram_kb - 48 * 1024 - ram_kb * 5 / 100;
    assert!(
        mem_kb <= ram_kb && mem_kb >= floor,
        "MemTotal {mem_kb} kB for {mem_mib} MiB: {marker}"
    );
    assert!(
        stdout.contains("reboot: Restarting system"),
        "guest did not reboot: {}",
        tail(&stdout)
    );
}

#[test]
fn bzimage_with_initrd_2_vcpus_256m() {
    let out = ember_run(&format!(
        "--kernel {} --initrd {} --cpus 2 --memory 256M {QUIET}",
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

/// Boots from a Firecracker-schema config file written for `kernel` with the test initrd.
fn ember_run_config(test: &str, kernel: &str, boot_args: &str, machine: &str) -> Output {
    let cfg = scratch(test).join("vm.json");
    let json = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": "{}", "boot_args": "{boot_args}"}},
            "machine-config": {machine}, "drives": []}}"#,
        guest(kernel),
        guest("initramfs.cpio.gz")
    );
    std::fs::write(&cfg, json).unwrap();
    ember_run(&format!("--config-file {}", cfg.display()))
}

#[test]
fn firecracker_config_file_2_vcpus_256m() {
    let out = ember_run_config(
        "linux-config",
        "vmlinuz",
        "console=ttyS0 reboot=k panic=1 pci=off quiet ember.echo=from-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}"#,
    );
    assert_booted(&out, 2, 256);
    assert!(text(&out).0.contains("EMBER-ECHO from-config"));
}

#[test]
fn memory_sizes_including_ram_above_the_mmio_hole() {
    for (mem, vmlinux) in [(512u64, "vmlinuz"), (3584, "vmlinux")] {
        let out = ember_run(&format!(
            "--kernel {} --initrd {} --memory {mem}M {QUIET}",
            guest(vmlinux),
            guest("initramfs.cpio.gz")
        ));
        assert_booted(&out, 1, mem);
    }
}

#[test]
fn smt_pair_from_config_file() {
    let out = ember_run_config(
        "linux-smt",
        "vmlinux",
        "console=ttyS0 reboot=k panic=1 pci=off quiet",
        r#"{"vcpu_count": 2, "mem_size_mib": 192, "smt": true}"#,
    );
    assert_booted(&out, 2, 192);
}

#[test]
fn kernel_panic_without_initrd_reboots_with_panic_1() {
    for kernel in ["vmlinuz", "vmlinux"] {
        let out = ember_run(&format!("--kernel {} {QUIET}", guest(kernel)));
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
        "--kernel {} --initrd {} --cmdline 'console=ttyS0 reboot=k panic=1 pci=off quiet ember.test=panic'",
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

    // Typed input reaches a shell in the guest through the UART, typed once the prompt shows
    // (as a person would: bytes sent before the guest's UART driver is up are lost, as on
    // hardware); the shell computes the answer, so an echo of the input cannot pass. The FIFO
    // lives in /dev/shm because the box's 9p-shared filesystem cannot hold one.
    let dir = scratch("linux-input");
    let out = sh(&format!(
        r#"cd {dir}; in=$(mktemp -u /dev/shm/ember-input.XXXXXX); mkfifo "$in" || exit 99
           "$EMBER" run --kernel {} --initrd {} \
             --cmdline 'console=ttyS0 reboot=k panic=1 pci=off quiet ember.test=shell' <"$in" >out 2>err &
           exec 3>"$in"; rm -f "$in"
           n=0; until grep -q '/ # ' out; do sleep 1; n=$((n+1)); [ $n -lt 300 ] || break; done
           echo 'echo typed-$((6*7))' >&3; echo exit >&3
           wait $!; rc=$?; cat out; cat err >&2; exit $rc"#,
        guest("vmlinux"),
        guest("initramfs.cpio.gz"),
        dir = dir.display(),
    ));
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("typed-42"), "{}\n{stderr}", tail(&stdout));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn guest_poweroff_ends_the_vm_through_acpi() {
    let out = ember_run(&format!(
        "--kernel {} --initrd {} --cpus 2 --cmdline 'console=ttyS0 reboot=k panic=1 pci=off quiet ember.test=poweroff'",
        guest("vmlinuz"),
        guest("initramfs.cpio.gz")
    ));
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("EMBER-INIT-OK"), "{}", tail(&stdout));
    assert!(stdout.contains("reboot: Power down"), "{}", tail(&stdout));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
