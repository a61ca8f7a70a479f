//! A real tap device (needs CAP_NET_ADMIN to create one; skipped with a message without),
//! and the MAC address helpers.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::backend::Backend;
use crate::{parse_mac, random_mac, MacError, Tap, TapError, TUN_OFFLOADS};

/// A tap (or tun) created for one test, deleted on drop.
struct TempIf {
    name: String,
    mode: &'static str,
}

impl TempIf {
    /// None (with the reason printed) when interfaces cannot be created here.
    fn new(mode: &'static str) -> Option<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("emb{}t{n}", std::process::id() % 1_000_000);
        let out = Command::new("ip")
            .args(["tuntap", "add", "dev", &name, "mode", mode])
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { name, mode }),
            Ok(o) => {
                let why = String::from_utf8_lossy(&o.stderr);
                eprintln!("skipped: `ip tuntap add` failed (no CAP_NET_ADMIN?): {why}");
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run `ip`: {e}");
                None
            }
        }
    }
}

impl Drop for TempIf {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["tuntap", "del", "dev", &self.name, "mode", self.mode])
            .output();
    }
}

#[test]
fn attaches_to_an_existing_tap_once() {
    let Some(tap_if) = TempIf::new("tap") else {
        return;
    };
    let mut tap = Tap::open(&tap_if.name, true).unwrap();
    assert_eq!(tap.name(), tap_if.name);
    tap.set_offload(TUN_OFFLOADS).unwrap();
    tap.set_offload(libc::TUN_F_CSUM).unwrap();
    tap.set_offload(0).unwrap();
    // Nothing to read on a fresh tap, and the fd does not block.
    let mut buf = [0u8; 2048];
    let err = tap.read_frame(&mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);

    let err = Tap::open(&tap_if.name, false).unwrap_err();
    assert!(matches!(err, TapError::Busy(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "tap device `{}` is busy (already used by another process)",
            tap_if.name
        )
    );
    drop(tap);
    Tap::open(&tap_if.name, false).expect("free again once closed");
}

/// A raw packet socket on interface `name`, seeing every frame.
fn packet_socket(name: &str) -> OwnedFd {
    let index: i32 = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation; the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            proto.into(),
        )
    };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: the fd is new and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `sockaddr_ll` is plain old data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: bind reads `len` bytes of `addr`, valid for the call.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            len,
        )
    };
    assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
    fd
}

/// A broadcast frame of a local experimental ethertype, marked with `seed`.
fn test_frame(seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, seed, 0x88, 0xb5]);
    f.extend((0..46).map(|i: u8| i ^ seed));
    f
}

/// Polls `read` until it yields `want`; false after about a second.
fn wait_for(mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>, want: &[u8]) -> bool {
    let mut buf = vec![0u8; 70000];
    for _ in 0..200 {
        match read(&mut buf) {
            Ok(n) if &buf[..n] == want => return true,
            Ok(_) => continue,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
    false
}

#[test]
fn frames_cross_a_real_tap_with_the_12_byte_header() {
    let Some(tap_if) = TempIf::new("tap") else {
        return;
    };
    let mut tap = Tap::open(&tap_if.name, false).unwrap();
    let up = Command::new("ip")
        .args(["link", "set", "dev", &tap_if.name, "up"])
        .status()
        .unwrap();
    assert!(up.success());
    let sock = packet_socket(&tap_if.name);
    let sock_fd = sock.as_raw_fd();

    // Host to guest: the tap hands the frame over behind a 12-byte header.
    let frame = test_frame(0x11);
    let iov = [libc::iovec {
        iov_base: frame.as_ptr() as *mut _,
        iov_len: frame.len(),
    }];
    // SAFETY: `frame` is borrowed for the call.
    unsafe { crate::backend::writev_fd(sock_fd, &iov) }.unwrap();
    let mut buf = vec![0u8; 70000];
    let mut got = None;
    for _ in 0..200 {
        match tap.read_frame(&mut buf) {
            Ok(n) if buf[..n].ends_with(&frame) => {
                got = Some(buf[..n].to_vec());
                break;
            }
            Ok(_) => continue, // the host's own traffic (IPv6 autoconfiguration...)
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
    let got = got.expect("frame not read from the tap");
    assert_eq!(got.len(), crate::HDR_LEN + frame.len());
    assert_eq!(got[..10], [0; 10], "no flags, no GSO");

    // Guest to host: header plus frame in, frame alone out.
    let frame = test_frame(0x22);
    let hdr = [0u8; crate::HDR_LEN];
    let iov = [
        libc::iovec {
            iov_base: hdr.as_ptr() as *mut _,
            iov_len: hdr.len(),
        },
        libc::iovec {
            iov_base: frame.as_ptr() as *mut _,
            iov_len: frame.len(),
        },
    ];
    // SAFETY: `hdr` and `frame` are borrowed for the call.
    let n = unsafe { tap.write_frame(&iov) }.unwrap();
    assert_eq!(n, hdr.len() + frame.len());
    assert!(wait_for(
        |buf| crate::backend::read_fd(sock_fd, buf),
        &frame
    ));
}

#[test]
fn refuses_what_is_not_an_existing_tap() {
    let missing = format!("embnone{}", std::process::id() % 100_000);
    let err = Tap::open(&missing, false).unwrap_err();
    assert!(matches!(err, TapError::NotFound(_)), "{err:?}");
    assert!(err
        .to_string()
        .contains(&format!("tap device `{missing}` does not exist")));
    // Opening must not have created it.
    assert!(!std::path::Path::new("/sys/class/net")
        .join(&missing)
        .exists());

    let err = Tap::open("lo", false).unwrap_err();
    assert!(matches!(err, TapError::NotTap(_)), "{err:?}");
    assert!(err.to_string().contains("`lo`"));

    for bad in ["", "a-name-of-16-byt", "../lo", "a b", "a:b", ".", ".."] {
        let err = Tap::open(bad, false).unwrap_err();
        assert!(matches!(err, TapError::InvalidName(_)), "{bad:?}: {err:?}");
    }

    let Some(tun) = TempIf::new("tun") else {
        return;
    };
    let err = Tap::open(&tun.name, false).unwrap_err();
    assert!(matches!(err, TapError::NotTap(_)), "{err:?}");
}

#[test]
fn mac_addresses() {
    assert_eq!(
        parse_mac("02:aa:BB:cc:dd:0e"),
        Ok([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x0e])
    );
    for bad in [
        "",
        "02:aa:bb:cc:dd",
        "02:aa:bb:cc:dd:ee:ff",
        "02-aa-bb-cc-dd-ee",
        "2:aa:bb:cc:dd:ee",
        "02:aa:bb:cc:dd:eg",
        "+2:aa:bb:cc:dd:ee",
    ] {
        assert!(matches!(parse_mac(bad), Err(MacError::Syntax(_))), "{bad}");
    }
    assert!(matches!(
        parse_mac("01:00:5e:00:00:01"),
        Err(MacError::Multicast(_))
    ));
    let a = random_mac();
    let b = random_mac();
    assert_ne!(a, b);
    for mac in [a, b] {
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
    }
    assert_eq!(crate::format_mac(&a).len(), 17);
    assert_eq!(parse_mac(&crate::format_mac(&a)), Ok(a));
}
