//! A fault-injecting TCP proxy for outage tests: put it between pgferry and a server, then
//! cut every connection ([`Proxy::reset_all`]), freeze them ([`Proxy::stall`]) or turn new
//! ones away ([`Proxy::refuse`]) while pgferry runs. Loopback only; plain threads (one to
//! accept, two per connection); it stops when dropped.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a pump looks at the controls while nothing arrives.
const TICK: Duration = Duration::from_millis(20);

pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    stalled: AtomicBool,
    refusing: AtomicBool,
    stopping: AtomicBool,
    accepted: AtomicUsize,
    next_id: AtomicU64,
    /// Both sockets of every live connection (clones), so that they can be cut from outside.
    live: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port and forwards to 127.0.0.1:`upstream_port`.
    pub fn start(upstream_port: u16) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
            stalled: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            live: Mutex::new(Vec::new()),
        });
        let acceptor = std::thread::spawn({
            let shared = shared.clone();
            move || accept_loop(listener, shared)
        });
        Ok(Proxy { port, shared, acceptor: Some(acceptor) })
    }

    /// The port to give pgferry instead of the server's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Cuts every current connection at once, both ways: each side sees its peer go away.
    pub fn reset_all(&self) {
        for (_, client, server) in self.shared.live.lock().unwrap().drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    /// While on, no byte moves in either direction (sockets stay open, new connections are
    /// accepted and frozen too): a network that black-holes traffic.
    pub fn stall(&self, on: bool) {
        self.shared.stalled.store(on, Ordering::SeqCst);
    }

    /// While on, new connections are closed as soon as they are accepted; current ones go on.
    pub fn refuse(&self, on: bool) {
        self.shared.refusing.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the blocking accept so that it sees `stopping`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.reset_all();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.refusing.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(shared.upstream) else { continue };
        let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) else { continue };
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        shared.live.lock().unwrap().push((id, c, s));
        let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) else { continue };
        let up = std::thread::spawn({
            let shared = shared.clone();
            move || pump(client, server, &shared)
        });
        std::thread::spawn({
            let shared = shared.clone();
            move || {
                pump(s, c, &shared);
                let _ = up.join();
                shared.live.lock().unwrap().retain(|(i, _, _)| *i != id);
            }
        });
    }
}

/// Copies `from` to `to` until either side closes; passes the end of the stream on.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let _ = from.set_read_timeout(Some(TICK));
    let mut buf = [0u8; 16 * 1024];
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        if shared.stalled.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // A read under way when the stall began: its bytes wait for the stall's end.
                while shared.stalled.load(Ordering::SeqCst) && !shared.stopping.load(Ordering::SeqCst) {
                    std::thread::sleep(TICK);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server: what a connection sends comes back.
    fn echo() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let mut writer = stream;
                    let _ = std::io::copy(&mut reader, &mut writer);
                });
            }
        });
        port
    }

    fn connect(proxy: &Proxy) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        stream
    }

    /// Sends `text` and reads back what arrives within the read timeout.
    fn round_trip(stream: &mut TcpStream, text: &str) -> std::io::Result<String> {
        stream.write_all(text.as_bytes())?;
        let mut buf = vec![0u8; text.len()];
        stream.read_exact(&mut buf)?;
        Ok(String::from_utf8(buf).unwrap())
    }

    #[test]
    fn forwards_stalls_resets_refuses_and_stops() {
        let proxy = Proxy::start(echo()).unwrap();
        let mut a = connect(&proxy);
        assert_eq!(round_trip(&mut a, "hello").unwrap(), "hello");

        proxy.stall(true);
        assert!(round_trip(&mut a, "frozen").is_err(), "nothing moves while stalled");
        proxy.stall(false);
        let mut late = vec![0u8; 6];
        a.read_exact(&mut late).unwrap();
        assert_eq!(&late, b"frozen", "what was held back arrives once the stall ends");

        proxy.reset_all();
        let mut buf = [0u8; 1];
        assert!(matches!(a.read(&mut buf), Ok(0) | Err(_)), "a reset connection is closed");

        proxy.refuse(true);
        let mut refused = connect(&proxy);
        assert!(matches!(refused.read(&mut buf), Ok(0) | Err(_)), "a refused connection is closed at once");
        proxy.refuse(false);
        let mut b = connect(&proxy);
        assert_eq!(round_trip(&mut b, "again").unwrap(), "again");
        assert_eq!(proxy.accepted(), 3);

        let port = proxy.port();
        drop(proxy);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "a dropped proxy no longer listens");
        assert!(matches!(b.read(&mut buf), Ok(0) | Err(_)), "a dropped proxy closes its connections");
    }
}
