//! The `ember` library used directly, as an embedding service would.

mod common;

use std::time::Duration;

use common::{scratch, tiny};
use ember::{ExitReason, SerialConfig, VmConfig, VmState};

fn config(guest: &str, serial: SerialConfig) -> VmConfig {
    let mut c = VmConfig::new(tiny(guest));
    c.machine.mem_size_mib = 32;
    c.serial = serial;
    c
}

#[test]
fn two_vms_run_side_by_side_in_one_process() {
    let dir = scratch("two-vms");
    let logs = [dir.join("a.log"), dir.join("b.log")];
    let vms: Vec<_> = ["hello-pvh", "hello-lm64"]
        .iter()
        .zip(&logs)
        .map(|(g, log)| {
            let mut c = config(g, SerialConfig::File(log.clone()));
            c.boot.cmdline = Some(format!("vm={g}"));
            ember::build(&c).unwrap()
        })
        .collect();
    for vm in &vms {
        assert_eq!(vm.state(), VmState::Created);
        vm.start().unwrap();
    }
    for vm in &vms {
        assert_eq!(vm.wait(), ExitReason::Reset);
        assert_eq!(vm.state(), VmState::Exited);
    }
    assert_eq!(
        std::fs::read_to_string(&logs[0]).unwrap(),
        "EMBER-TINY entry=pvh cmdline=vm=hello-pvh\n"
    );
    assert_eq!(
        std::fs::read_to_string(&logs[1]).unwrap(),
        "EMBER-TINY entry=lm64 cmdline=vm=hello-lm64\n"
    );
}

#[test]
fn pause_resume_stop() {
    let mut c = config("halt-pvh", SerialConfig::None);
    c.machine.vcpus = 4;
    let vm = ember::build(&c).unwrap();
    assert!(vm.pause().is_err(), "cannot pause before start");
    vm.start().unwrap();
    assert!(matches!(vm.start(), Err(ember::VmError::AlreadyStarted)));
    assert_eq!(vm.state(), VmState::Running);
    vm.pause().unwrap();
    assert_eq!(vm.state(), VmState::Paused);
    assert_eq!(vm.wait_timeout(Duration::from_millis(100)), None);
    vm.resume().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    vm.stop();
    assert_eq!(vm.wait(), ExitReason::Stopped);
    assert_eq!(vm.state(), VmState::Exited);
}

#[test]
fn guest_crash_is_reported_not_fatal_to_the_process() {
    let vm = ember::build(&config("fault-lm64", SerialConfig::None)).unwrap();
    vm.start().unwrap();
    assert_eq!(vm.wait(), ExitReason::TripleFault { vcpu: 0 });
    // The process carries on and can build another VM.
    let vm = ember::build(&config("hello-lm64", SerialConfig::None)).unwrap();
    vm.start().unwrap();
    assert!(vm.wait().is_clean());
}

#[test]
fn dropping_a_running_vm_stops_it() {
    let vm = ember::build(&config("halt-lm64", SerialConfig::None)).unwrap();
    vm.start().unwrap();
    drop(vm);
}

#[test]
fn build_errors_are_typed() {
    let mut c = config("hello-pvh", SerialConfig::None);
    c.machine.vcpus = 0;
    assert!(matches!(
        ember::build(&c),
        Err(ember::BuildError::VcpuCount { count: 0, .. })
    ));
}
