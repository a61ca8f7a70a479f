//! Real Linux guests using virtio devices: the stock Debian cloud kernel (virtio as modules
//! loaded by the test initramfs, devices found through ACPI) and the minimal microVM kernel
//! (virtio built in, devices found on the command line or through ACPI). Scripts run in the
//! guest through `ember.script=` (see resources/guest/init).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::linux::{b64, ember_run, guest, md5, microvm_kernel, pattern, tail};
use common::{root, scratch, text};

const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off quiet";

/// The guest side of the disk test. vda: host-written data; vdb: scratch; vdc: read-only.
const DISK_SCRIPT: &str = r#"
for i in $(seq 200); do [ -b /dev/vdc ] && [ -e /dev/hwrng ] && break; sleep 0.1; done
echo "VIRTIO-DEVICES $(ls /sys/bus/virtio/devices | wc -l)"
echo "PROBE-FAILURES $(dmesg | grep -c 'probe.*failed')"
echo "SUM-A $(md5sum </dev/vda | cut -d' ' -f1)"
echo "SERIAL $(cat /sys/block/vda/serial)"
dd if=/dev/vda of=/dev/vdb bs=64k count=16 conv=fsync 2>/dev/null && echo "COPY-OK"
echo "RO-FLAG $(cat /sys/block/vdc/ro)"
dd if=/dev/zero of=/dev/vdc bs=512 count=1 conv=fsync 2>/dev/null; echo "RO-WRITE-RC $?"
echo "RNG $(cat /sys/class/misc/hw_random/rng_current)"
echo "RNG-BYTES $(dd if=/dev/hwrng bs=64 count=4 2>/dev/null | wc -c)"
echo "MMIO-ON-CMDLINE $(tr ' ' '\n' </proc/cmdline | grep -c '^virtio_mmio.device=')"
echo "RNG-DISTINCT $(dd if=/dev/hwrng bs=16 count=8 2>/dev/null | od -An -tx1 -w16 | sort -u | wc -l)"
"#;

struct Disks {
    data: PathBuf,
    scratch: PathBuf,
    ro: PathBuf,
}

impl Disks {
    fn new(test: &str) -> Self {
        let dir = scratch(test);
        let d = Self {
            data: dir.join("data.img"),
            scratch: dir.join("scratch.img"),
            ro: dir.join("ro.img"),
        };
        std::fs::write(&d.data, pattern(4 << 20, 7)).unwrap();
        std::fs::File::create(&d.scratch)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        std::fs::write(&d.ro, pattern(1 << 20, 9)).unwrap();
        d
    }

    fn flags(&self) -> String {
        format!(
            "--disk path={},id=datadisk --disk path={} --disk path={},readonly=on --rng",
            self.data.display(),
            self.scratch.display(),
            self.ro.display()
        )
    }

    /// Checks what the guest printed and what it left in the images; `on_cmdline` is how many
    /// devices the command line must list (0 when they come from ACPI).
    fn verify(&self, out: &Output, on_cmdline: usize) {
        let (stdout, stderr) = text(out);
        let expect = |line: &str| {
            assert!(
                stdout.lines().any(|l| l.trim_end() == line),
                "guest did not print `{line}`\nstderr: {stderr}\nstdout: {}",
                tail(&stdout)
            )
        };
        let ro_before = md5(&self.ro);
        expect("VIRTIO-DEVICES 4");
        expect("PROBE-FAILURES 0");
        expect(&format!("SUM-A {}", md5(&self.data)));
        expect("SERIAL datadisk");
        expect("COPY-OK");
        expect("RO-FLAG 1");
        expect("RO-WRITE-RC 1");
        expect("RNG virtio_rng.0");
        expect("RNG-BYTES 256");
        expect("RNG-DISTINCT 8");
        expect(&format!("MMIO-ON-CMDLINE {on_cmdline}"));
        expect("EMBER-SCRIPT-EXIT 0");
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        // The guest's writes reached the scratch image, exactly and nowhere else.
        let data = std::fs::read(&self.data).unwrap();
        let written = std::fs::read(&self.scratch).unwrap();
        assert_eq!(written.len(), 4 << 20);
        assert!(
            written[..1 << 20] == data[..1 << 20],
            "scratch copy differs"
        );
        assert!(
            written[1 << 20..].iter().all(|&b| b == 0),
            "bytes past the copy"
        );
        assert_eq!(md5(&self.ro), ro_before);
        assert_eq!(std::fs::read(&self.ro).unwrap(), pattern(1 << 20, 9));
    }
}

#[test]
fn debian_kernel_finds_disks_and_rng_through_acpi() {
    let disks = Disks::new("virtio-acpi");
    let out = ember_run(&format!(
        "--kernel {} --initrd {} --cpus 2 --memory 256M {} --cmdline '{BASE_CMDLINE} ember.script={}'",
        guest("vmlinuz"),
        guest("initramfs.cpio.gz"),
        disks.flags(),
        b64(DISK_SCRIPT)
    ));
    disks.verify(&out, 0);
}

#[test]
fn microvm_kernel_finds_them_on_the_command_line_with_acpi_off() {
    let disks = Disks::new("virtio-cmdline");
    let out = ember_run(&format!(
        "--kernel {} --initrd {} --cpus 2 --memory 256M {} --cmdline '{BASE_CMDLINE} acpi=off ember.script={}'",
        microvm_kernel(),
        guest("initramfs.cpio.gz"),
        disks.flags(),
        b64(DISK_SCRIPT)
    ));
    disks.verify(&out, 4);
    // The MP table stands in for the MADT: both vCPUs are up without ACPI.
    assert!(
        text(&out).0.contains("EMBER-INIT-OK cpus=2 "),
        "{}",
        tail(&text(&out).0)
    );
}

#[test]
fn microvm_kernel_with_acpi_from_a_firecracker_config() {
    let disks = Disks::new("virtio-fc-config");
    let cfg = disks.data.with_file_name("vm.json");
    let json = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": "{}",
              "boot_args": "{BASE_CMDLINE} ember.script={}"}},
            "machine-config": {{"vcpu_count": 1, "mem_size_mib": 192}},
            "drives": [
              {{"drive_id": "datadisk", "path_on_host": "{}", "is_root_device": false}},
              {{"drive_id": "scratch", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}},
              {{"drive_id": "ro", "path_on_host": "{}", "is_root_device": false, "is_read_only": true}}
            ],
            "entropy": {{}}}}"#,
        microvm_kernel(),
        guest("initramfs.cpio.gz"),
        b64(DISK_SCRIPT),
        disks.data.display(),
        disks.scratch.display(),
        disks.ro.display()
    );
    std::fs::write(&cfg, json).unwrap();
    let out = ember_run(&format!("--config-file {}", cfg.display()));
    // Found through the DSDT alone: nothing on the command line.
    disks.verify(&out, 0);
}

/// Builds a fresh ext4 root image with resources/guest/rootfs.sh.
fn rootfs(test: &str) -> PathBuf {
    let img = scratch(test).join("root.ext4");
    let status = Command::new(root().join("resources/guest/rootfs.sh"))
        .arg(&img)
        .status()
        .expect("run resources/guest/rootfs.sh");
    assert!(
        status.success(),
        "building the root filesystem image failed"
    );
    img
}

const ROOT_SCRIPT: &str = r#"
echo "ROOT-FSTYPE $(awk '$2 == "/" { t = $3 } END { print t }' /proc/mounts)"
[ "$(awk '$5 == "/" { d = $3 } END { print d }' /proc/self/mountinfo)" = "$(cat /sys/block/vda/dev)" ] && echo "ROOT-IS-VDA"
echo "ROOT-CMDLINE $(tr ' ' '\n' </proc/cmdline | grep -E '^(root=|ro$|rw$)' | tr '\n' ' ')"
echo persisted >/etc/ember-written && sync && echo "ROOT-WRITE-OK"
"#;

fn assert_booted_from_disk(out: &Output, img: &Path) {
    let (stdout, stderr) = text(out);
    for line in [
        "EMBER-ROOTFS-INIT",
        "ROOT-FSTYPE ext4",
        "ROOT-IS-VDA",
        "ROOT-CMDLINE root=/dev/vda rw",
        "ROOT-WRITE-OK",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim_end() == line),
            "guest did not print `{line}`\nstderr: {stderr}\nstdout: {}",
            tail(&stdout)
        );
    }
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // The file the guest wrote is in the image: debugfs reads it without mounting.
    let cat = Command::new("debugfs")
        .args(["-R", "cat /etc/ember-written"])
        .arg(img)
        .output()
        .expect("run debugfs");
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "persisted\n");
}

#[test]
fn root_filesystem_on_an_ext4_image() {
    // The microVM kernel mounts /dev/vda itself (no initramfs).
    let img = rootfs("rootfs-microvm");
    let out = ember_run(&format!(
        "--kernel {} --disk path={},root=on --cmdline '{BASE_CMDLINE} ember.script={}'",
        microvm_kernel(),
        img.display(),
        b64(ROOT_SCRIPT)
    ));
    assert_booted_from_disk(&out, &img);

    // The Debian kernel needs its virtio and ext4 modules: the initramfs loads them and
    // switches to the disk.
    let img = rootfs("rootfs-debian");
    let out = ember_run(&format!(
        "--kernel {} --initrd {} --disk path={},root=on --cmdline '{BASE_CMDLINE} ember.script={}'",
        guest("vmlinuz"),
        guest("initramfs.cpio.gz"),
        img.display(),
        b64(ROOT_SCRIPT)
    ));
    assert_booted_from_disk(&out, &img);
}
