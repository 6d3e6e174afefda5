//! Opening a connection, shared by the HTTP/1.1 client (the JSON calls)
//! and the HTTP/2 one (enhanced fan-out): name lookup, connect, and the
//! TLS handshake with rustls.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// `host` as a URL writes it, without the brackets of an IPv6 address.
fn bare(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The addresses `host` resolves to. A failed lookup is the standard
/// library's error, which `client::is_lookup_failure` recognizes; a name
/// without addresses is reported in the same words.
pub(crate) fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let addresses: Vec<_> = (bare(host), port).to_socket_addrs()?.collect();
    if addresses.is_empty() {
        return Err(io::Error::other(format!(
            "failed to lookup address information: {host} has no address"
        )));
    }
    Ok(addresses)
}

/// Connects to each of `addresses` in turn; the last failure when none
/// answers.
pub(crate) fn connect(addresses: &[SocketAddr], timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::other("no address to connect to");
    for address in addresses {
        match TcpStream::connect_timeout(address, timeout) {
            Ok(socket) => return Ok(socket),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A TLS client session with `config` (its ALPN protocols as the caller
/// set them) for `host`; the error says why `host` is no server name.
pub(crate) fn tls_session(
    config: Arc<rustls::ClientConfig>,
    host: &str,
) -> Result<rustls::ClientConnection, String> {
    let bare = bare(host);
    let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
        .map_err(|e| format!("{bare:?} is not a valid server name: {e}"))?;
    rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())
}

/// Runs the TLS handshake on `socket` (within its read timeout). A
/// refused handshake is an `io::Error` holding the `rustls::Error`.
pub(crate) fn handshake(
    session: &mut rustls::ClientConnection,
    socket: &TcpStream,
) -> io::Result<()> {
    while session.is_handshaking() {
        session.complete_io(&mut &*socket)?;
    }
    Ok(())
}
