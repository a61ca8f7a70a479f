//! Device configuration, checked with tiny guests directly on /dev/kvm: what the kernel
//! command line says about devices, disk locking, and bad device input.

mod common;

use std::process::Output;

use common::{assert_rejected, halted_vm, run_ember as run, scratch, text, tiny};

/// The command line a tiny guest saw.
fn guest_cmdline(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    stdout
        .trim_end()
        .split_once("cmdline=")
        .map(|(_, c)| c.to_string())
        .unwrap_or_else(|| panic!("no cmdline in {stdout}"))
}

fn image(dir: &std::path::Path, name: &str, size: u64) -> String {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    path.display().to_string()
}

#[test]
fn command_line_discovery_lists_each_device_once_and_acpi_adds_nothing() {
    let dir = scratch("discovery");
    let (a, r) = (image(&dir, "a.img", 1 << 20), image(&dir, "r.img", 1 << 20));
    let kernel = tiny("hello-pvh");
    let k = kernel.to_str().unwrap();
    let disks = [
        "--disk",
        &format!("path={a}"),
        "--disk",
        &format!("path={r},root=on,readonly=on"),
        "--rng",
    ];
    let cmdline = guest_cmdline(&run(&[
        &["--kernel", k, "--cmdline", "console=ttyS0 acpi=off"][..],
        &disks[..],
    ]
    .concat()));
    // Root drive first (it is /dev/vda), then the others, then the entropy device.
    assert_eq!(
        cmdline,
        "console=ttyS0 acpi=off root=/dev/vda ro \
         virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 \
         virtio_mmio.device=4K@0xd0002000:7"
    );
    let forced = guest_cmdline(&run(&[
        &[
            "--kernel",
            k,
            "--cmdline",
            "console=ttyS0",
            "--discovery",
            "cmdline",
        ][..],
        &disks[..],
    ]
    .concat()));
    assert!(
        forced.contains("virtio_mmio.device=4K@0xd0002000:7"),
        "{forced}"
    );
    // With ACPI the devices are in the DSDT only.
    let acpi = guest_cmdline(&run(&[
        &["--kernel", k, "--cmdline", "console=ttyS0"][..],
        &disks[..],
    ]
    .concat()));
    assert_eq!(acpi, "console=ttyS0 root=/dev/vda ro");
}

#[test]
fn a_disk_in_use_by_another_vm_is_refused() {
    let dir = scratch("disk-lock");
    let img = image(&dir, "shared.img", 1 << 20);
    let disk = format!("path={img}");
    let mut first = halted_vm(&["--disk", &disk]);
    let kernel = tiny("hello-pvh");
    let k = kernel.to_str().unwrap();
    assert_rejected(
        &run(&["--kernel", k, "--disk", &disk]),
        "is in use by another process",
    );
    let ro = format!("{disk},readonly=on");
    assert_rejected(
        &run(&["--kernel", k, "--disk", &ro]),
        "is in use by another process",
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // Two read-only users may share an image.
    let mut reader = halted_vm(&["--disk", &ro]);
    assert_eq!(run(&["--kernel", k, "--disk", &ro]).status.code(), Some(0));
    reader.kill().unwrap();
    reader.wait().unwrap();
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        1 << 20,
        "image untouched"
    );
}

#[test]
fn bad_drive_input_is_rejected_with_one_line() {
    let dir = scratch("bad-drives");
    let img = image(&dir, "d.img", 1 << 20);
    let kernel = tiny("hello-pvh");
    let k = kernel.to_str().unwrap();
    let missing = dir.join("missing.img").display().to_string();
    for (args, needle) in [
        (
            vec!["--disk", &format!("path={missing}")],
            "cannot open disk image",
        ),
        (
            vec!["--disk", &format!("path={}", dir.display())],
            "Is a directory",
        ),
        (
            vec![
                "--disk",
                &format!("path={img},id=x"),
                "--disk",
                &format!("path={img},id=x"),
            ],
            "drive id `x` is used twice",
        ),
        (
            vec![
                "--disk",
                &format!("path={img},root=on,readonly=on"),
                "--cmdline",
                "root=/dev/sda",
            ],
            "already sets root=",
        ),
    ] {
        assert_rejected(&run(&[&["--kernel", k][..], &args[..]].concat()), needle);
    }
    // Malformed flags are usage errors (status 2) that name the problem.
    for (args, needle) in [
        (vec!["--disk", "readonly=on"], "path=PATH is required"),
        (
            vec!["--disk", &format!("path={img},bogus=1")],
            "unknown or empty `bogus`",
        ),
        (vec!["--discovery", "magic"], "invalid --discovery"),
    ] {
        let out = run(&[&["--kernel", k][..], &args[..]].concat());
        let stderr = text(&out).1;
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(needle) && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
    // The same image twice in one VM for writing conflicts with itself.
    assert_rejected(
        &run(&[
            "--kernel",
            k,
            "--disk",
            &format!("path={img}"),
            "--disk",
            &format!("path={img}"),
        ]),
        "is in use",
    );
    // 20 devices exceed the 19 interrupt lines available.
    let mut many = vec!["--kernel".to_string(), k.to_string()];
    for i in 0..20 {
        many.push("--disk".into());
        many.push(format!("path={},readonly=on,id=d{i}", img));
    }
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_rejected(&run(&many), "too many devices");
}
