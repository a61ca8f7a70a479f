//! Parsers for the `KEY=VALUE,...` device flags (`--disk`, `--net`, `--vsock`).

use std::path::PathBuf;

/// Splits `spec` into `(key, value)` pairs; `flag` and `usage` go into the error.
fn pairs<'a>(
    flag: &'a str,
    spec: &'a str,
    usage: &'a str,
) -> impl Iterator<Item = Result<(&'a str, &'a str), String>> + 'a {
    spec.split(',').map(move |part| {
        part.split_once('=').ok_or_else(|| {
            format!("invalid {flag} `{spec}`: `{part}` is not KEY=VALUE (expected {usage})")
        })
    })
}

fn parse_on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("invalid {key}=`{value}`: expected on or off")),
    }
}

const DISK_USAGE: &str = "path=PATH[,readonly=on][,id=NAME][,root=on]";

/// Parses `path=PATH[,readonly=on][,id=NAME][,root=on]`; the id is filled in later if absent.
pub(super) fn parse_disk(spec: &str) -> Result<ember::DriveConfig, String> {
    let mut drive = ember::DriveConfig {
        id: String::new(),
        path: PathBuf::new(),
        read_only: false,
        root: false,
    };
    for pair in pairs("--disk", spec, DISK_USAGE) {
        let (key, value) = pair?;
        match key {
            "path" if !value.is_empty() => drive.path = value.into(),
            "id" if !value.is_empty() => drive.id = value.into(),
            "readonly" | "ro" => drive.read_only = parse_on_off(key, value)?,
            "root" => drive.root = parse_on_off(key, value)?,
            _ => return Err(format!("invalid --disk `{spec}`: unknown or empty `{key}`")),
        }
    }
    if drive.path.as_os_str().is_empty() {
        return Err(format!("invalid --disk `{spec}`: path=PATH is required"));
    }
    Ok(drive)
}

const NET_USAGE: &str = "tap=NAME[,mac=MAC][,id=NAME][,offload=off]";

/// Parses `tap=NAME[,mac=MAC][,id=NAME][,offload=off]`; the id is filled in later if absent.
pub(super) fn parse_net(spec: &str) -> Result<ember::NetConfig, String> {
    let mut net = ember::NetConfig {
        id: String::new(),
        tap: String::new(),
        mac: None,
        offload: true,
    };
    for pair in pairs("--net", spec, NET_USAGE) {
        let (key, value) = pair?;
        match key {
            "tap" if !value.is_empty() => net.tap = value.into(),
            "id" if !value.is_empty() => net.id = value.into(),
            "mac" => net.mac = Some(value.parse().map_err(|e| format!("{e}"))?),
            "offload" => net.offload = parse_on_off(key, value)?,
            _ => return Err(format!("invalid --net `{spec}`: unknown or empty `{key}`")),
        }
    }
    if net.tap.is_empty() {
        return Err(format!("invalid --net `{spec}`: tap=NAME is required"));
    }
    Ok(net)
}

const VSOCK_USAGE: &str = "cid=N,socket=PATH";

/// Parses `cid=N,socket=PATH`.
pub(super) fn parse_vsock(spec: &str) -> Result<ember::VsockConfig, String> {
    let (mut cid, mut socket) = (None, None);
    for pair in pairs("--vsock", spec, VSOCK_USAGE) {
        let (key, value) = pair?;
        match key {
            "cid" => {
                cid = Some(value.parse::<u32>().map_err(|_| {
                    format!("invalid --vsock `{spec}`: cid `{value}` is not a number between 3 and 4294967294")
                })?)
            }
            "socket" | "path" if !value.is_empty() => socket = Some(PathBuf::from(value)),
            _ => return Err(format!("invalid --vsock `{spec}`: unknown or empty `{key}`")),
        }
    }
    match (cid, socket) {
        (Some(guest_cid), Some(uds_path)) => Ok(ember::VsockConfig {
            guest_cid,
            uds_path,
        }),
        _ => Err(format!("invalid --vsock `{spec}`: expected {VSOCK_USAGE}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_specs_are_refused_with_the_flag_named() {
        for bad in [
            "readonly=on",
            "path=/a,readonly=maybe",
            "path=/a,size=1",
            "path=/a,junk",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
        for (bad, needle) in [
            ("mac=02:00:00:00:00:01", "tap=NAME is required"),
            ("tap=t,mac=xx", "invalid MAC address `xx`"),
            ("tap=t,mac=01:00:00:00:00:01", "multicast"),
            ("tap=t,offload=maybe", "expected on or off"),
            ("tap=t,queues=2", "unknown or empty `queues`"),
            ("tap", "is not KEY=VALUE"),
        ] {
            let err = parse_net(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        for (bad, needle) in [
            ("cid=3", "expected cid=N,socket=PATH"),
            ("socket=/v", "expected cid=N,socket=PATH"),
            ("cid=x,socket=/v", "cid `x` is not a number"),
            ("cid=3,socket=/v,port=1", "unknown or empty `port`"),
        ] {
            let err = parse_vsock(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
