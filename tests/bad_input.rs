//! Bad input is rejected with one readable line and exit status 1, never a panic.

mod common;

use common::{assert_rejected, run_ember as run, scratch, tiny};

#[test]
fn missing_unreadable_and_corrupt_kernels() {
    let dir = scratch("kernels");
    let missing = dir.join("nope");
    assert_rejected(
        &run(&["--kernel", missing.to_str().unwrap()]),
        "cannot open kernel",
    );
    assert_rejected(&run(&["--kernel", dir.to_str().unwrap()]), "is a directory");
    for (name, bytes) in [
        ("empty", Vec::new()),
        (
            "garbage",
            (0..65536u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
        ("text", b"#!/bin/sh\necho not a kernel\n".to_vec()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        assert_rejected(
            &run(&["--kernel", path.to_str().unwrap()]),
            "neither an x86_64 ELF nor a bzImage",
        );
    }
    let elf = std::fs::read(tiny("hello-pvh")).unwrap();
    let truncated = dir.join("truncated.elf");
    std::fs::write(&truncated, &elf[..200]).unwrap();
    assert_rejected(
        &run(&["--kernel", truncated.to_str().unwrap()]),
        "invalid kernel image",
    );
    // A bzImage header with a bogus protocol version.
    let mut bz = vec![0u8; 8192];
    bz[0x1f1] = 4;
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x206..0x208].copy_from_slice(&0x0100u16.to_le_bytes());
    let bad_bz = dir.join("bzimage");
    std::fs::write(&bad_bz, bz).unwrap();
    assert_rejected(&run(&["--kernel", bad_bz.to_str().unwrap()]), "bzimage");
}

#[test]
fn missing_or_oversized_initrd() {
    let dir = scratch("initrd");
    let k = tiny("hello-pvh");
    let k = k.to_str().unwrap();
    let missing = dir.join("missing.img");
    assert_rejected(
        &run(&["--kernel", k, "--initrd", missing.to_str().unwrap()]),
        "cannot open initrd",
    );
    let big = dir.join("big.img");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    assert_rejected(
        &run(&[
            "--kernel",
            k,
            "--memory",
            "32M",
            "--initrd",
            big.to_str().unwrap(),
        ]),
        "does not fit",
    );
}

#[test]
fn absurd_memory_and_vcpu_counts() {
    let k = tiny("hello-pvh");
    let k = k.to_str().unwrap();
    assert_rejected(&run(&["--kernel", k, "--memory", "0"]), "too small");
    assert_rejected(&run(&["--kernel", k, "--memory", "1M"]), "too small");
    assert_rejected(
        &run(&["--kernel", k, "--memory", "64T"]),
        "exceeds the host",
    );
    assert_rejected(
        &run(&["--kernel", k, "--memory", "99999999999T"]),
        "invalid size",
    );
    assert_rejected(&run(&["--kernel", k, "--memory", "12Q"]), "invalid size");
    assert_rejected(
        &run(&["--kernel", k, "--cpus", "0"]),
        "invalid vCPU count 0",
    );
    assert_rejected(
        &run(&["--kernel", k, "--cpus", "4096"]),
        "invalid vCPU count 4096",
    );
}

#[test]
fn malformed_config_files() {
    let dir = scratch("configs");
    let k = tiny("hello-pvh");
    let cases = [
        (
            "truncated.json",
            "{\"boot-source\": {".to_string(),
            "malformed config file",
        ),
        (
            "unknown.json",
            format!(
                r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "gpu": {{}}}}"#,
                k.display()
            ),
            "unknown config file section `gpu`",
        ),
        (
            "drives.json",
            format!(
                r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "drives": [{{"drive_id": "rootfs"}}]}}"#,
                k.display()
            ),
            "in `drives`: missing field `path_on_host`",
        ),
        (
            "balloon.json",
            format!(
                r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "balloon": {{"amount_mib": 8}}}}"#,
                k.display()
            ),
            "section `balloon` is not supported",
        ),
        (
            "vsock.json",
            format!(
                r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "vsock": {{"guest_cid": 1, "uds_path": "{}"}}}}"#,
                k.display(),
                dir.join("v.sock").display()
            ),
            "vsock guest CID 1 is invalid",
        ),
        (
            "net.json",
            format!(
                r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "embnosuchtap"}}]}}"#,
                k.display()
            ),
            "network interface `eth0`: tap device `embnosuchtap` does not exist",
        ),
        (
            "typo.json",
            format!(r#"{{"boot-source": {{"kernel_path": "{}"}}}}"#, k.display()),
            "unknown field `kernel_path`",
        ),
        (
            "badcpus.json",
            format!(
                r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": 0, "mem_size_mib": 64}}}}"#,
                k.display()
            ),
            "invalid vCPU count 0",
        ),
    ];
    for (name, text, needle) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        assert_rejected(&run(&["--config-file", path.to_str().unwrap()]), needle);
    }
    assert_rejected(
        &run(&["--config-file", dir.join("absent.json").to_str().unwrap()]),
        "cannot read config file",
    );
}

#[test]
fn overlong_command_line_and_bad_serial_target() {
    let k = tiny("hello-lm64");
    let k = k.to_str().unwrap();
    let long = "x".repeat(5000);
    assert_rejected(
        &run(&["--kernel", k, "--cmdline", &long]),
        "command line is 5001 bytes",
    );
    assert_rejected(
        &run(&[
            "--kernel",
            k,
            "--serial",
            "file:/nonexistent-dir/console.log",
        ]),
        "cannot open serial output file",
    );
}

#[test]
fn missing_kvm_device_is_reported() {
    // Hide /dev/kvm in a private mount namespace (needs root and unshare).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0
        || std::process::Command::new("unshare")
            .arg("--help")
            .output()
            .is_err()
    {
        eprintln!("skipping: needs root and unshare");
        return;
    }
    let script = format!(
        "mount -t tmpfs none /dev && exec {} run --kernel {}",
        env!("CARGO_BIN_EXE_ember"),
        tiny("hello-pvh").display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_rejected(&out, "cannot open /dev/kvm");
}
