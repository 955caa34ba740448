//! Free UDP ports on 127.0.0.1 for local clusters (`fleetsync demo`, tests).
//!
//! A local cluster must write every node's mesh address into the other
//! nodes' configs before any node starts, so ports are picked in advance.
//! Picking by binding port 0 and releasing it leaves a window in which any
//! other socket bound to port 0 (outgoing connections, other nodes' IPv6
//! sockets) may be handed the same port by the kernel; that was seen to
//! break a test run for the admin port. Ports below the kernel's ephemeral
//! range are never handed out for port 0, so a port picked there and found
//! free stays free unless somebody asks for exactly that number.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
};

/// How many ports below the ephemeral range the picks are taken from.
const SPAN: u32 = 8_000;

/// A UDP address on 127.0.0.1 that was free a moment ago and is outside the
/// range the kernel assigns for port 0. Successive calls in one process
/// never repeat a port (until the span wraps); different processes start at
/// different offsets. Falls back to a kernel-assigned port if the span is
/// exhausted or the ephemeral range is unusually low.
pub fn free_udp_addr() -> std::io::Result<SocketAddr> {
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = ephemeral_low();
    if low >= 1024 + SPAN {
        let base = low - SPAN;
        let start = *START.get_or_init(|| {
            let mut b = [0u8; 4];
            // The offset only spreads processes apart; a failure to get
            // randomness just makes them start at the same place.
            let _ = getrandom::fill(&mut b);
            u32::from_le_bytes(b) % SPAN
        });
        for _ in 0..SPAN {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = (base + (start + n) % SPAN) as u16;
            if let Ok(s) = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)) {
                return s.local_addr();
            }
        }
    }
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()
}

/// The first port of the kernel's ephemeral range (Linux's default when it
/// cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_distinct_free_ports_below_the_ephemeral_range() {
        let low = ephemeral_low();
        let picks: Vec<_> = (0..50).map(|_| free_udp_addr().unwrap()).collect();
        let mut ports: Vec<_> = picks.iter().map(|a| a.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), picks.len(), "a port was handed out twice");
        for a in &picks {
            assert!(a.ip().is_loopback());
            if low >= 1024 + SPAN {
                assert!((a.port() as u32) < low, "{a} is in the ephemeral range");
            }
            // Still free: the pick released its probe socket.
            UdpSocket::bind(a).unwrap();
        }
    }
}
