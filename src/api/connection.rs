//! Whether a request's client is still connected. actix-web keeps running a handler after its
//! client has gone (actix/actix-web#3462), so handlers that spend a lot per request (`/classify`
//! decoding many images) look before each costly step and stop, giving back what they hold.
use std::os::fd::RawFd;

use actix_web::HttpRequest;

/// The socket of a connection, recorded when it is accepted (`HttpServer::on_connect`).
#[derive(Debug, Clone, Copy)]
pub struct PeerSocket(RawFd);

/// `HttpServer::on_connect`: records the TCP socket of each connection.
pub fn on_connect(conn: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    use std::os::fd::AsRawFd;
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        data.insert(PeerSocket(tcp.as_raw_fd()));
    }
}

/// True when the client of `req` has closed or reset its connection. Unknown (no socket
/// recorded) counts as connected. The connection's socket stays open while its request is being
/// handled, so the descriptor is still this connection's.
pub fn client_gone(req: &HttpRequest) -> bool {
    let Some(PeerSocket(fd)) = req.conn_data::<PeerSocket>().copied() else { return false };
    let mut byte = 0u8;
    // SAFETY: a non-blocking peek of one byte into a local buffer; the descriptor is open (see above).
    let n = unsafe { libc::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n == 0 {
        return true; // orderly shutdown: end of stream
    }
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return matches!(e.raw_os_error(), Some(libc::ECONNRESET) | Some(libc::ENOTCONN) | Some(libc::EPIPE));
    }
    false
}
