//! Free local ports, for the metrics endpoints of processors that tests and benchmarks start
//! and for containers whose port must be known before they start.

use std::net::SocketAddr;

/// A local address (127.0.0.1) whose port was free a moment ago: the OS picked it for a
/// listener that is closed again at once.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free local port")
}

/// The port of [`free_addr`].
pub fn free_port() -> u16 {
    free_addr().port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound() {
        let addr = free_addr();
        assert!(addr.ip().is_loopback() && addr.port() > 0);
        std::net::TcpListener::bind(addr).expect("the port is free");
    }
}
