//! Multicast UDP sockets (socket2 for the options std does not expose).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Large buffers ride out scheduling hiccups at line rate; the kernel caps
/// them at net.core.{r,w}mem_max.
const BUFFER: usize = 16 << 20;

/// The sending socket: bound to `interface` (any if unspecified), multicast
/// leaves through it with `ttl`. Loopback stays on so a receiver on the
/// sender's own host works too.
pub fn sender(interface: Ipv4Addr, ttl: u32) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_send_buffer_size(BUFFER)?;
    if !interface.is_unspecified() {
        s.set_multicast_if_v4(&interface)?;
    }
    s.set_multicast_ttl_v4(ttl)?;
    s.set_multicast_loop_v4(true)?;
    s.bind(&SockAddr::from(SocketAddrV4::new(interface, 0)))?;
    Ok(s.into())
}

/// A receiving socket on `group`, joined through `interface`. Bound to the
/// group address itself so datagrams for other groups on the same port
/// never reach it; a short read timeout lets its thread notice a stop.
pub fn receiver(group: SocketAddrV4, interface: Ipv4Addr) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_recv_buffer_size(BUFFER)?;
    s.bind(&SockAddr::from(group))?;
    s.join_multicast_v4(group.ip(), &interface)?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(s.into())
}
