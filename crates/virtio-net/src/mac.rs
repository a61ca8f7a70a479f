//! MAC addresses: parsing the `aa:bb:cc:dd:ee:ff` form and generating random ones.

/// Why a MAC address string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not six colon-separated pairs of hex digits.
    #[error("invalid MAC address `{0}`: expected six hex pairs such as 02:aa:bb:cc:dd:ee")]
    Syntax(String),
    /// The group bit is set: a guest NIC needs a unicast address.
    #[error("invalid MAC address `{0}`: multicast addresses cannot identify a NIC")]
    Multicast(String),
}

/// Parses `02:aa:bb:cc:dd:ee` (case-insensitive) into bytes. Multicast addresses are refused.
pub fn parse_mac(s: &str) -> Result<[u8; 6], MacError> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next().unwrap_or_default();
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(MacError::Syntax(s.to_string()));
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| MacError::Syntax(s.to_string()))?;
    }
    if parts.next().is_some() {
        return Err(MacError::Syntax(s.to_string()));
    }
    if mac[0] & 0x01 != 0 {
        return Err(MacError::Multicast(s.to_string()));
    }
    Ok(mac)
}

/// A random locally administered unicast address (from `getrandom(2)`; falls back to time
/// and pid if that fails, which only lowers the quality of the randomness).
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: the kernel writes at most `mac.len()` bytes into `mac`, which we own.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = nanos ^ (u64::from(std::process::id()) << 40);
        mac.copy_from_slice(&seed.to_le_bytes()[..6]);
    }
    // Locally administered (bit 1 set), unicast (bit 0 clear).
    mac[0] = (mac[0] | 0x02) & !0x01;
    mac
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}
