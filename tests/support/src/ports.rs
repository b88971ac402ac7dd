//! Free loopback ports for the processes of a test.
//!
//! Several tests (and several test binaries) run at once, and most processes
//! need their ports before they start (Consul's five ports, a sidecar's inbound
//! port registered in Consul before the sidecar runs, the agent restarted on
//! the same ports). So ports are picked here rather than with port 0: random
//! ones below the kernel's ephemeral range (32768+ on Linux, where outgoing
//! connections take theirs), probed with a TCP and a UDP bind, and never
//! handed out twice by this process.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::{Mutex, OnceLock};

use rand::Rng as _;

/// Lowest and highest port handed out: above the usual service ports, below
/// the ephemeral range.
const RANGE: std::ops::Range<u16> = 20_000..32_000;

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A loopback port that is free for TCP and UDP right now and that this
/// process has not handed out before.
pub fn free_port() -> anyhow::Result<u16> {
    let mut rng = rand::rng();
    for _ in 0..1_000 {
        let port = rng.random_range(RANGE);
        {
            // A poisoned set is still a valid set of numbers.
            let mut taken = handed_out().lock().unwrap_or_else(|e| e.into_inner());
            if !taken.insert(port) {
                continue;
            }
        }
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, port));
        if tcp.is_ok() && udp.is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port found in {RANGE:?} after 1000 tries")
}
