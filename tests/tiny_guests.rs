//! Boots hand-written tiny guests directly on /dev/kvm (they need only a few instructions of
//! port I/O, so they also run on software KVMs that cannot run Linux).

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{ember, scratch, text, tiny};

#[test]
fn pvh_and_64bit_entries_boot_and_see_the_command_line() {
    for entry in ["pvh", "lm64"] {
        let out = ember()
            .args(["run", "--kernel"])
            .arg(tiny(&format!("hello-{entry}")))
            .args([
                "--cmdline",
                "console=ttyS0 marker=42",
                "--cpus",
                "2",
                "--memory",
                "64M",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{entry}: {stderr}");
        assert_eq!(
            stdout,
            format!("EMBER-TINY entry={entry} cmdline=console=ttyS0 marker=42\n")
        );
        assert_eq!(stderr, "", "a clean run prints nothing on stderr");
    }
}

#[test]
fn default_command_line_is_passed() {
    let out = ember()
        .args(["run", "--kernel"])
        .arg(tiny("hello-lm64"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        text(&out).0,
        format!(
            "EMBER-TINY entry=lm64 cmdline={}\n",
            ember::config::DEFAULT_CMDLINE
        )
    );
}

#[test]
fn console_input_reaches_the_guest() {
    let mut child = ember()
        .args(["run", "--kernel"])
        .arg(tiny("echo-pvh"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // More than the 64-byte UART FIFO, so input backpressure is exercised.
    let line = format!("{}\n", "0123456789abcdef".repeat(20));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stdout,
        format!("EMBER-TINY echo-ready\n{line}EMBER-TINY echo-done\n")
    );
}

#[test]
fn triple_fault_exits_with_status_3_and_one_line() {
    for entry in ["pvh", "lm64"] {
        let out = ember()
            .args(["run", "--kernel"])
            .arg(tiny(&format!("fault-{entry}")))
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert_eq!(stderr, "ember: guest triple fault on vCPU 0\n");
    }
}

#[test]
fn serial_output_to_file_and_to_nowhere() {
    let dir = scratch("serial");
    let log = dir.join("console.log");
    let out = ember()
        .args(["run", "--kernel"])
        .arg(tiny("hello-pvh"))
        .arg("--serial")
        .arg(format!("file:{}", log.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.starts_with("EMBER-TINY entry=pvh"), "{logged}");
    let out = ember()
        .args(["run", "--serial", "none", "--kernel"])
        .arg(tiny("hello-pvh"))
        .output()
        .unwrap();
    assert_eq!((out.status.code(), out.stdout.len()), (Some(0), 0));
}

#[test]
fn firecracker_config_file_boots() {
    let dir = scratch("config");
    let cfg = dir.join("vm.json");
    let json = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "from-config-file"}},
            "machine-config": {{"vcpu_count": 2, "mem_size_mib": 32, "smt": false}},
            "drives": [], "network-interfaces": []}}"#,
        tiny("hello-lm64").display()
    );
    std::fs::write(&cfg, json).unwrap();
    let out = ember()
        .args(["run", "--config-file"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        text(&out).0,
        "EMBER-TINY entry=lm64 cmdline=from-config-file\n"
    );
    // Flags override the file.
    let out = ember()
        .args(["run", "--config-file"])
        .arg(&cfg)
        .args(["--cmdline", "from-flag"])
        .output()
        .unwrap();
    assert_eq!(text(&out).0, "EMBER-TINY entry=lm64 cmdline=from-flag\n");
}

#[test]
fn sigterm_and_sigint_stop_a_running_guest() {
    for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let child = ember()
            .args(["run", "--cpus", "2", "--kernel"])
            .arg(tiny("halt-pvh"))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let start = Instant::now();
        let out = child.wait_with_output().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "stop took {:?}",
            start.elapsed()
        );
        assert_eq!(out.status.code(), Some(code), "{}", text(&out).1);
        assert_eq!(text(&out).1, format!("ember: stopped by signal {signal}\n"));
    }
}

#[test]
fn many_vcpus_and_large_memory_build_and_run() {
    // Only vCPU 0 runs the guest; the others must still be created, configured and torn down.
    for (cpus, mem) in [("32", "64M"), ("64", "4G")] {
        let out = ember()
            .args(["run", "--cpus", cpus, "--memory", mem, "--kernel"])
            .arg(tiny("hello-lm64"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{cpus} vCPUs, {mem}: {stderr}");
        assert!(stdout.starts_with("EMBER-TINY entry=lm64"), "{stdout}");
    }
}

#[test]
fn console_input_from_a_regular_file() {
    // `ember run < commands.txt`: epoll cannot watch a file, so Ember pipes it through.
    let dir = scratch("stdin-file");
    let input = dir.join("input.txt");
    let line = format!("{}\n", "from-a-file ".repeat(12));
    std::fs::write(&input, &line).unwrap();
    // Without input the echo guest would wait forever: bound the run.
    let out = std::process::Command::new("timeout")
        .args(["60", env!("CARGO_BIN_EXE_ember"), "run", "--kernel"])
        .arg(tiny("echo-lm64"))
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stdout,
        format!("EMBER-TINY echo-ready\n{line}EMBER-TINY echo-done\n")
    );
}

/// The `VmFlags` of the anonymous mapping of exactly `kib` KiB in process `pid`'s smaps.
fn ram_vm_flags(pid: u32, kib: u64) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut size_matches = false;
    for line in smaps.lines() {
        if let Some(size) = line.strip_prefix("Size:") {
            size_matches = size.trim() == format!("{kib} kB");
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            if size_matches {
                return flags.trim().to_string();
            }
        }
    }
    panic!("no {kib} KiB mapping in /proc/{pid}/smaps");
}

#[test]
fn guest_ram_asks_for_huge_pages_unless_told_not_to() {
    if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
        eprintln!("skipped: this kernel has no transparent huge pages");
        return;
    }
    for (args, want, not) in [
        (&["--memory", "96M"][..], "hg", "nh"),
        (&["--memory", "96M", "--no-huge-pages"][..], "nh", "hg"),
    ] {
        let mut vm = common::halted_vm(args);
        let flags = ram_vm_flags(vm.id(), 96 << 10);
        vm.kill().unwrap();
        vm.wait().unwrap();
        let flags: Vec<&str> = flags.split_whitespace().collect();
        assert!(flags.contains(&want), "{args:?}: {flags:?}");
        assert!(!flags.contains(&not), "{args:?}: {flags:?}");
    }
}
