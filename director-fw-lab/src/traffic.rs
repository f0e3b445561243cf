//! One bounded, verified TCP or UDP exchange between two lab hosts.

use crate::{in_netns, Host};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How often the TCP listener polls for a connection.
const ACCEPT_POLL: Duration = Duration::from_millis(2);

static NONCE: AtomicU64 = AtomicU64::new(0);

fn nonce() -> String {
    let n = NONCE.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

fn check_timeout(timeout: Duration) -> Result<()> {
    ensure!(!timeout.is_zero(), "timeout must be non-zero");
    ensure!(
        timeout <= Duration::from_secs(600),
        "timeout {timeout:?} is unreasonably long"
    );
    Ok(())
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Time left until `deadline`, at least 1 ms (socket timeouts may not be zero).
fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// What one exchange sends and expects, and how errors name it.
struct Exchange {
    dst: SocketAddr,
    src_ip: IpAddr,
    request: Vec<u8>,
    reply: Vec<u8>,
    what: String,
}

impl Exchange {
    fn new(proto: &str, from: &Host, to: &Host, port: u16, ipv6: bool) -> Exchange {
        let dst = SocketAddr::new(to.addr(ipv6), port);
        let src_ip = from.addr(ipv6);
        let tag = nonce();
        Exchange {
            dst,
            src_ip,
            request: format!("dfw-lab {proto} {} -> {} {tag}\n", from.role, to.role).into_bytes(),
            reply: format!("dfw-lab {proto} reply {tag}\n").into_bytes(),
            what: format!("{proto} {}({src_ip}) -> {}({dst})", from.role, to.role),
        }
    }
}

/// Starts a TCP listener in `to`'s namespace on (`to`'s address, `port`), connects to it from
/// `from`'s namespace and sends one short message each way, checking both arrive intact and
/// that the listener saw `from`'s address as the source.
///
/// Returns `Ok(true)` when the exchange completed, `Ok(false)` when the connection did not
/// establish within `timeout` (the SYN or SYN-ACK was dropped), and `Err` on setup failure,
/// on any other connect error (refused, unreachable), or when a connection established but
/// the exchange then failed. Everything finishes within about `timeout` (plus the time to
/// spawn a few threads).
pub fn tcp_exchange(
    from: &Host,
    to: &Host,
    port: u16,
    ipv6: bool,
    timeout: Duration,
) -> Result<bool> {
    check_timeout(timeout)?;
    let Exchange {
        dst,
        src_ip,
        request,
        reply,
        what,
    } = Exchange::new("tcp", from, to, port, ipv6);

    let listener = in_netns(&to.ns, move || {
        TcpListener::bind(dst).with_context(|| format!("binding TCP listener on {dst}"))
    })?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let stop = Arc::new(AtomicBool::new(false));

    let server = {
        let stop = Arc::clone(&stop);
        let (request, reply) = (request.clone(), reply.clone());
        thread::Builder::new()
            .name("dfw-lab-tcp-srv".into())
            .spawn(move || tcp_serve_once(listener, src_ip, &request, &reply, deadline, &stop))
            .context("spawning TCP server thread")?
    };

    let client = in_netns(&from.ns, move || {
        let mut stream = match TcpStream::connect_timeout(&dst, timeout) {
            Ok(s) => s,
            Err(e) if is_timeout(&e) => return Ok(false),
            Err(e) => return Err(anyhow!(e).context(format!("connecting to {dst}"))),
        };
        stream.set_write_timeout(Some(left(deadline)))?;
        stream
            .write_all(&request)
            .context("connected, but sending the request failed")?;
        stream.set_read_timeout(Some(left(deadline)))?;
        let mut got = vec![0u8; reply.len()];
        stream
            .read_exact(&mut got)
            .context("connected, but no complete reply arrived")?;
        ensure!(
            got == reply,
            "connected, but the reply was garbled: {got:?}"
        );
        Ok(true)
    });
    stop.store(true, Ordering::Relaxed);
    let served = server
        .join()
        .map_err(|_| anyhow!("TCP server thread panicked"))?;

    match (client, served) {
        (Ok(false), _) => Ok(false),
        (Ok(true), Ok(true)) => Ok(true),
        (Ok(true), Ok(false)) => bail!("{what}: client finished but the server saw nothing"),
        (Ok(true), Err(e)) => Err(e.context(what)),
        (Err(e), Ok(_)) => Err(e.context(what)),
        (Err(e), Err(se)) => Err(e.context(format!("{what} (server side: {se:#})"))),
    }
}

/// Accepts one connection (polling until `deadline` or `stop`), checks the peer and the
/// request, and answers. `Ok(false)` when nobody connected.
fn tcp_serve_once(
    listener: TcpListener,
    expect_peer: IpAddr,
    request: &[u8],
    reply: &[u8],
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<bool> {
    let rounds = deadline
        .saturating_duration_since(Instant::now())
        .as_millis()
        / ACCEPT_POLL.as_millis()
        + 2;
    for _ in 0..rounds {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                ensure!(
                    peer.ip() == expect_peer,
                    "server: connection came from {peer}, expected {expect_peer}"
                );
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(left(deadline)))?;
                stream.set_write_timeout(Some(left(deadline)))?;
                let mut got = vec![0u8; request.len()];
                stream
                    .read_exact(&mut got)
                    .context("server: no complete request arrived")?;
                ensure!(got == request, "server: the request was garbled: {got:?}");
                stream
                    .write_all(reply)
                    .context("server: sending the reply failed")?;
                return Ok(true);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    return Ok(false);
                }
                thread::sleep(ACCEPT_POLL);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(anyhow!(e).context("server: accept failed")),
        }
    }
    Ok(false)
}

/// Binds a UDP socket in `to`'s namespace on (`to`'s address, `port`) and one in `from`'s
/// namespace on `from`'s address, sends one datagram there and one reply back, and checks
/// both payloads and source addresses.
///
/// Returns `Ok(true)` when the reply arrived, `Ok(false)` when the request was lost, and
/// `Err` on setup failure, a wrong payload or source, or a request that arrived whose reply
/// did not. Finishes within about `timeout`.
pub fn udp_exchange(
    from: &Host,
    to: &Host,
    port: u16,
    ipv6: bool,
    timeout: Duration,
) -> Result<bool> {
    check_timeout(timeout)?;
    let Exchange {
        dst,
        src_ip,
        request,
        reply,
        what,
    } = Exchange::new("udp", from, to, port, ipv6);

    let server_sock = in_netns(&to.ns, move || {
        UdpSocket::bind(dst).with_context(|| format!("binding UDP socket on {dst}"))
    })?;
    let client_sock = in_netns(&from.ns, move || {
        let src = SocketAddr::new(src_ip, 0);
        UdpSocket::bind(src).with_context(|| format!("binding UDP socket on {src}"))
    })?;
    let client_addr = client_sock.local_addr()?;
    let deadline = Instant::now() + timeout;

    let server = {
        let (request, reply) = (request.clone(), reply.clone());
        thread::Builder::new()
            .name("dfw-lab-udp-srv".into())
            .spawn(move || -> Result<bool> {
                let mut buf = [0u8; 512];
                server_sock.set_read_timeout(Some(left(deadline)))?;
                let (n, peer) = match server_sock.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e) if is_timeout(&e) => return Ok(false),
                    Err(e) => return Err(anyhow!(e).context("server: recv failed")),
                };
                ensure!(
                    peer == client_addr,
                    "server: datagram came from {peer}, expected {client_addr}"
                );
                ensure!(buf[..n] == request[..], "server: garbled request");
                server_sock
                    .send_to(&reply, peer)
                    .context("server: sending the reply failed")?;
                Ok(true)
            })
            .context("spawning UDP server thread")?
    };

    let client = (|| -> Result<bool> {
        client_sock
            .send_to(&request, dst)
            .with_context(|| format!("sending to {dst}"))?;
        let mut buf = [0u8; 512];
        client_sock.set_read_timeout(Some(left(deadline)))?;
        let (n, peer) = match client_sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if is_timeout(&e) => return Ok(false),
            Err(e) => return Err(anyhow!(e).context("client: recv failed")),
        };
        ensure!(
            peer == dst,
            "client: reply came from {peer}, expected {dst}"
        );
        ensure!(buf[..n] == reply[..], "client: garbled reply");
        Ok(true)
    })();
    let served = server
        .join()
        .map_err(|_| anyhow!("UDP server thread panicked"))?;

    match (client, served) {
        // The request got through and only the reply was lost: neither passed nor blocked,
        // and never to be taken for a block.
        (Ok(false), Ok(true)) => Err(anyhow!(
            "{what}: the request arrived, but its reply did not come back"
        )),
        (Ok(got), Ok(_)) => Ok(got),
        (Ok(_), Err(e)) => Err(e.context(what)),
        (Err(e), Ok(_)) => Err(e.context(what)),
        (Err(e), Err(se)) => Err(e.context(format!("{what} (server side: {se:#})"))),
    }
}
