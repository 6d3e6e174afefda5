//! The socket under a connection: plain TCP (h2c) or TLS with ALPN `h2`
//! (rustls), shared by the reader thread and the writers.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::connection::{Target, lock};
use super::error::Http2Error;
use crate::aws::socket;

/// The socket, plain or wrapped in TLS.
pub(super) enum Transport {
    Plain(TcpStream),
    Tls {
        // Boxed: a TLS session is a kilobyte, a socket a few bytes.
        session: Box<Mutex<rustls::ClientConnection>>,
        socket: TcpStream,
    },
}

impl Transport {
    pub(super) fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls { socket, .. } => socket,
        }
    }

    /// Writes all of `bytes` (the caller holds the writer lock). TLS:
    /// encrypted under the session lock, in pieces as large as rustls's
    /// buffer takes, and each piece written to the socket after the
    /// session lock is released, so that a socket write waiting for the
    /// server never holds the lock the reader thread needs. An error may
    /// leave a partial frame on the wire: the caller closes the connection.
    pub(super) fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(s) => (&*s).write_all(bytes),
            Transport::Tls { session, socket } => {
                let mut rest = bytes;
                loop {
                    let (taken, records) = {
                        let mut session = lock(session);
                        let taken = session.writer().write(rest)?;
                        (taken, tls_records(&mut session)?)
                    };
                    (&*socket).write_all(&records)?;
                    rest = &rest[taken..];
                    if rest.is_empty() {
                        return Ok(());
                    }
                    if taken == 0 && records.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "the TLS session takes no more bytes",
                        ));
                    }
                }
            }
        }
    }

    /// Reads decrypted bytes (only the reader thread calls this). TLS
    /// records are read off the socket without holding the session lock,
    /// so writers are never blocked by a read waiting for the server; what
    /// the session must send back (an alert, a key update) is written
    /// under the writer lock (`writer`, taken before the session lock as
    /// everywhere), so records reach the wire in the order of encryption.
    pub(super) fn read(
        &self,
        writer: &Mutex<()>,
        pending: &mut Vec<u8>,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let (session, socket) = match self {
            Transport::Plain(s) => return (&*s).read(buf),
            Transport::Tls { session, socket } => (session, socket),
        };
        loop {
            let mut reply = false;
            {
                let mut s = lock(session);
                if !pending.is_empty() {
                    let fed = s.read_tls(&mut &pending[..])?;
                    pending.drain(..fed);
                    s.process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    reply = s.wants_write();
                }
                if !reply {
                    match s.reader().read(buf) {
                        Ok(n) => return Ok(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            if reply {
                let _writer = lock(writer);
                let records = tls_records(&mut lock(session))?;
                (&*socket).write_all(&records)?;
                continue;
            }
            if !pending.is_empty() {
                continue;
            }
            let mut raw = [0u8; 16 * 1024];
            let n = (&*socket).read(&mut raw)?;
            if n == 0 {
                // Tell rustls the stream ended: a close_notify reads as 0,
                // a cut connection as UnexpectedEof.
                let mut s = lock(session);
                s.read_tls(&mut &[][..])?;
                s.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                return match s.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    other => other,
                };
            }
            pending.extend_from_slice(&raw[..n]);
        }
    }
}

/// The TLS records the session has ready to send.
fn tls_records(session: &mut rustls::ClientConnection) -> io::Result<Vec<u8>> {
    let mut records = Vec::new();
    while session.wants_write() {
        session.write_tls(&mut records)?;
    }
    Ok(records)
}

/// Resolves and connects, trying each address in turn.
pub(super) fn open_socket(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, Http2Error> {
    let addresses = socket::resolve(host, port)
        .map_err(|e| Http2Error::HostNotFound(format!("{host}: {e}")))?;
    socket::connect(&addresses, timeout).map_err(|e| Http2Error::io(&e))
}

/// The TLS handshake, offering only `h2`; an error unless the server
/// chose it.
pub(super) fn tls_handshake(
    socket: TcpStream,
    config: &Arc<rustls::ClientConfig>,
    target: &Target,
) -> Result<Transport, Http2Error> {
    let mut config = (**config).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let mut session =
        socket::tls_session(Arc::new(config), &target.host).map_err(Http2Error::Tls)?;
    let io = |e: io::Error| Http2Error::io(&e);
    socket
        .set_read_timeout(Some(target.connect_timeout.max(target.read_timeout)))
        .map_err(io)?;
    socket::handshake(&mut session, &socket).map_err(|e| {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => Http2Error::Tls(tls.to_string()),
            None => Http2Error::io(&e),
        }
    })?;
    if session.alpn_protocol() != Some(b"h2") {
        let chosen = match session.alpn_protocol() {
            Some(p) => format!("it chose {:?}", String::from_utf8_lossy(p)),
            None => "it chose no protocol".to_owned(),
        };
        return Err(Http2Error::NotHttp2(format!(
            "the TLS server did not agree to HTTP/2 (ALPN h2; {chosen})"
        )));
    }
    // The reader thread blocks until data or the socket's shutdown.
    socket.set_read_timeout(None).map_err(io)?;
    Ok(Transport::Tls {
        session: Box::new(Mutex::new(session)),
        socket,
    })
}
