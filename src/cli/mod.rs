//! Command-line parsing and the `run` subcommand. Flags map onto [`ember::VmConfig`]; with
//! `--config-file`, flags given explicitly override the file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ember::{ExitReason, SerialConfig, VmConfig};

use crate::{logger, terminal};

mod specs;

use specs::{parse_disk, parse_net, parse_vsock};

/// Exit status when the guest rebooted or powered off.
const EXIT_OK: u8 = 0;
/// Exit status for bad input or a VM that could not be built.
const EXIT_CONFIG: u8 = 1;
/// Exit status when the guest crashed (triple fault, crash event).
const EXIT_GUEST_CRASH: u8 = 3;
/// Exit status when KVM failed to run a vCPU.
const EXIT_VCPU_ERROR: u8 = 4;

#[derive(Parser)]
#[command(name = "ember", version, about = "Ember: a KVM-based microVM monitor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a microVM and run it until the guest reboots, powers off, or fails.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Firecracker-schema JSON config file; flags below override its settings.
    #[arg(long, value_name = "PATH")]
    config_file: Option<PathBuf>,
    /// Guest kernel: ELF vmlinux or bzImage.
    #[arg(long, value_name = "PATH", required_unless_present = "config_file")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1 pci=off"].
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    cpus: Option<u16>,
    /// Guest memory: 128M, 1G, or bytes [default: 128M].
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Back guest RAM with 4 KiB pages only, not transparent huge pages: host memory grows in
    /// smaller steps, the guest runs slower.
    #[arg(long)]
    no_huge_pages: bool,
    /// Block device: path=PATH[,readonly=on][,id=NAME][,root=on]. Repeatable; added after the
    /// config file's drives.
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    disk: Vec<ember::DriveConfig>,
    /// Add an entropy device (virtio-rng, the guest's /dev/hwrng).
    #[arg(long)]
    rng: bool,
    /// Network interface on an existing tap device: tap=NAME[,mac=MAC][,id=NAME][,offload=off].
    /// Repeatable; added after the config file's interfaces.
    #[arg(long, value_name = "SPEC", value_parser = parse_net)]
    net: Vec<ember::NetConfig>,
    /// vsock device: cid=N,socket=PATH (Firecracker's Unix-socket protocol at PATH).
    #[arg(long, value_name = "SPEC", value_parser = parse_vsock)]
    vsock: Option<ember::VsockConfig>,
    /// Log (at info level) when the guest writes 123 to I/O port 0x3f0, for boot-time
    /// measurements.
    #[arg(long)]
    boot_timer: bool,
    /// How the guest finds virtio devices: auto (ACPI unless the command line has acpi=off),
    /// acpi, or cmdline (virtio_mmio.device=).
    #[arg(long, value_name = "MODE", value_parser = parse_discovery)]
    discovery: Option<ember::DeviceDiscovery>,
    /// Serial console: stdio, file:PATH or none.
    #[arg(long, value_name = "MODE", default_value = "stdio")]
    serial: String,
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", default_value = "warn", value_parser = parse_level)]
    log_level: log::LevelFilter,
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse().map_err(|_| {
        format!("invalid log level `{s}`: expected off, error, warn, info, debug or trace")
    })
}

fn parse_serial(s: &str) -> Result<SerialConfig, String> {
    match s {
        "stdio" => Ok(SerialConfig::Stdio),
        "none" => Ok(SerialConfig::None),
        _ => match s.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SerialConfig::File(path.into())),
            _ => Err(format!(
                "invalid --serial `{s}`: expected stdio, file:PATH or none"
            )),
        },
    }
}

fn parse_discovery(s: &str) -> Result<ember::DeviceDiscovery, String> {
    match s {
        "auto" => Ok(ember::DeviceDiscovery::Auto),
        "acpi" => Ok(ember::DeviceDiscovery::Acpi),
        "cmdline" => Ok(ember::DeviceDiscovery::Cmdline),
        _ => Err(format!(
            "invalid --discovery `{s}`: expected auto, acpi or cmdline"
        )),
    }
}

/// Turns flags (and the optional config file) into a VM configuration.
fn to_config(args: &RunArgs) -> Result<VmConfig, String> {
    let mut config = match &args.config_file {
        Some(path) => ember::firecracker::load(path).map_err(|e| e.to_string())?,
        None => VmConfig::new(PathBuf::new()),
    };
    if let Some(kernel) = &args.kernel {
        config.boot.kernel = kernel.clone();
    }
    if let Some(initrd) = &args.initrd {
        config.boot.initrd = Some(initrd.clone());
    }
    if let Some(cmdline) = &args.cmdline {
        config.boot.cmdline = Some(cmdline.clone());
    }
    if let Some(cpus) = args.cpus {
        config.machine.vcpus = u8::try_from(cpus)
            .ok()
            .filter(|&n| n <= ember::MAX_VCPUS)
            .ok_or_else(|| {
                format!(
                    "invalid vCPU count {cpus}: must be between 1 and {}",
                    ember::MAX_VCPUS
                )
            })?;
    }
    if let Some(memory) = &args.memory {
        let bytes = ember::config::parse_size(memory).map_err(|e| e.to_string())?;
        if bytes % (1 << 20) != 0 {
            return Err(format!(
                "invalid memory size `{memory}`: must be a whole number of MiB"
            ));
        }
        config.machine.mem_size_mib = bytes >> 20;
    }
    if args.no_huge_pages {
        config.machine.huge_pages = false;
    }
    config.serial = parse_serial(&args.serial)?;
    for drive in &args.disk {
        let mut drive = drive.clone();
        if drive.id.is_empty() {
            drive.id = (0..)
                .map(|i| format!("disk{i}"))
                .find(|id| config.drives.iter().all(|d| &d.id != id))
                .unwrap_or_default();
        }
        config.drives.push(drive);
    }
    if args.rng {
        config.entropy = Some(ember::EntropyConfig {});
    }
    for net in &args.net {
        let mut net = net.clone();
        if net.id.is_empty() {
            net.id = (0..)
                .map(|i| format!("net{i}"))
                .find(|id| config.nets.iter().all(|n| &n.id != id))
                .unwrap_or_default();
        }
        config.nets.push(net);
    }
    if let Some(vsock) = &args.vsock {
        config.vsock = Some(vsock.clone());
    }
    config.boot_timer |= args.boot_timer;
    if let Some(discovery) = args.discovery {
        config.boot.device_discovery = discovery;
    }
    Ok(config)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            logger::init(args.log_level);
            match run(&args) {
                Ok(code) => ExitCode::from(code),
                Err(msg) => {
                    terminal::restore();
                    eprintln!("ember: error: {msg}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
    }
}

/// Signals that stop the VM instead of killing the process.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in STOP_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
    }
    set
}

/// Raises the soft open-file limit to the hard one: each vsock connection holds a host
/// socket, and the usual soft limit of 1024 is below what the devices allow.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer for getrlimit, and a valid input for setrlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                log::debug!("cannot raise the open-file limit");
            }
        }
    }
}

fn run(args: &RunArgs) -> Result<u8, String> {
    let config = to_config(args)?;
    raise_fd_limit();
    // Block stop signals in this thread before any VM thread exists, so they all inherit the
    // mask and the signals are only ever taken by the waiter thread below.
    let set = stop_signal_set();
    // SAFETY: `set` is a valid signal set; blocking signals in this thread is always sound.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let vm = Arc::new(ember::build(&config).map_err(|e| e.to_string())?);
    let _raw = match config.serial {
        SerialConfig::Stdio => terminal::RawTerminal::enter(),
        _ => None,
    };
    // The guest starts first; a stop signal that arrives meanwhile stays pending (it is
    // blocked in every thread) until the signal thread's sigwait takes it.
    vm.start().map_err(|e| e.to_string())?;
    let stopper = vm.clone();
    let signalled = Arc::new(std::sync::atomic::AtomicI32::new(0));
    let seen = signalled.clone();
    std::thread::Builder::new()
        .name("ember-signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `set` is valid and `sig` is a valid out-pointer; the stop signals are
            // blocked in every thread, so sigwait is the only consumer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                seen.store(sig, std::sync::atomic::Ordering::SeqCst);
                stopper.stop();
            }
        })
        .map_err(|e| format!("cannot start signal thread: {e}"))?;
    let reason = vm.wait();
    drop(_raw);
    Ok(match reason {
        ExitReason::Reset | ExitReason::PowerOff => EXIT_OK,
        ExitReason::Stopped => {
            let sig = signalled.load(std::sync::atomic::Ordering::SeqCst);
            eprintln!("ember: stopped by signal {sig}");
            128 + sig as u8
        }
        ExitReason::TripleFault { .. } | ExitReason::Crash { .. } => {
            eprintln!("ember: {reason}");
            EXIT_GUEST_CRASH
        }
        ExitReason::VcpuError { .. } => {
            eprintln!("ember: {reason}");
            EXIT_VCPU_ERROR
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from([&["ember", "run"], argv].concat()).unwrap();
        let Command::Run(a) = cli.command;
        a
    }

    #[test]
    fn flags_map_onto_the_config() {
        let c = to_config(&args(&[
            "--kernel",
            "k",
            "--cpus",
            "2",
            "--memory",
            "1G",
            "--serial",
            "file:/tmp/x",
        ]))
        .unwrap();
        assert_eq!((c.machine.vcpus, c.machine.mem_size_mib), (2, 1024));
        assert!(c.machine.huge_pages);
        assert_eq!(c.serial, SerialConfig::File("/tmp/x".into()));
        assert_eq!(c.boot.cmdline, None);
        let c = to_config(&args(&["--kernel", "k", "--no-huge-pages"])).unwrap();
        assert!(!c.machine.huge_pages);
    }

    #[test]
    fn disks_rng_and_discovery() {
        let c = to_config(&args(&[
            "--kernel",
            "k",
            "--disk",
            "path=/a.img",
            "--disk",
            "path=/r.ext4,readonly=on,root=on,id=rootfs",
            "--disk",
            "path=/b.img",
            "--rng",
            "--discovery",
            "cmdline",
        ]))
        .unwrap();
        let ids: Vec<_> = c.drives.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["disk0", "rootfs", "disk1"]);
        assert!(c.drives[1].read_only && c.drives[1].root);
        assert!(c.entropy.is_some());
        assert_eq!(c.boot.device_discovery, ember::DeviceDiscovery::Cmdline);
    }

    #[test]
    fn nets_and_vsock() {
        let c = to_config(&args(&[
            "--kernel",
            "k",
            "--net",
            "tap=tap0",
            "--net",
            "tap=tap1,mac=02:00:00:00:00:07,id=uplink,offload=off",
            "--net",
            "tap=tap2",
            "--vsock",
            "cid=3,socket=/run/v.sock",
        ]))
        .unwrap();
        let ids: Vec<_> = c.nets.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["net0", "uplink", "net1"]);
        assert_eq!(c.nets[1].mac.unwrap().to_string(), "02:00:00:00:00:07");
        assert!(c.nets[0].offload && !c.nets[1].offload);
        let v = c.vsock.unwrap();
        assert_eq!((v.guest_cid, v.uds_path.to_str()), (3, Some("/run/v.sock")));
    }

    #[test]
    fn bad_flags_are_rejected_with_a_reason() {
        for (argv, needle) in [
            (&["--kernel", "k", "--memory", "lots"][..], "invalid size"),
            (
                &["--kernel", "k", "--memory", "1000K"][..],
                "whole number of MiB",
            ),
            (
                &["--kernel", "k", "--cpus", "999"][..],
                "invalid vCPU count 999",
            ),
            (
                &["--kernel", "k", "--serial", "tcp:1"][..],
                "invalid --serial",
            ),
        ] {
            let err = to_config(&args(argv)).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
        assert!(
            Cli::try_parse_from(["ember", "run"]).is_err(),
            "kernel or config file required"
        );
    }
}
