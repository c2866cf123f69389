//! The tap backend: a tap device in a network namespace of its own, joined to the run's
//! [`Switch`] as the server's port (MAC of partition 1, IP 10.0.0.2), with a UDP responder in
//! that namespace answering `net-io`'s client. Frames cross the host kernel as they would in
//! production, and nothing leaves the namespace: it holds only `lo` and the tap.
//!
//! The namespace belongs to one thread: it calls `unshare(CLONE_NEWNET)` (network namespaces
//! are per thread), creates the tap and the responder socket there, and serves the responder.
//! Nothing else refers to the namespace, so it disappears when that thread has ended and the
//! tap's file is closed, which [`TapNet`]'s drop does, whether the run succeeded or not.
//! Needs CAP_NET_ADMIN and /dev/net/tun; without them [`TapNet::create`] says which is missing.

use std::fs::File;
use std::io::{Read, Write};
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::switch::{MAX_FRAME, Port, Switch, port_mac};

/// Name of the tap device inside its namespace.
pub const TAP_NAME: &str = "hvtap0";
/// Address of the responder (the server's, partition 1's, in `net-io`).
pub const RESPONDER_IP: [u8; 4] = [10, 0, 0, 2];
pub use hvlab_protocol::net::netio::PORT;
use hvlab_protocol::net::netio::{
    F_LAST, K_ACK, K_DATA, K_DONE, K_DONE_ACK, K_PING, K_PONG, MAGIC, PHDR,
};

/// Why the tap backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap backend: {what}: {err} (needs root or CAP_NET_ADMIN, and /dev/net/tun)")]
    Sys {
        what: &'static str,
        err: std::io::Error,
    },
    #[error("tap backend: the switch has no free port")]
    NoPort,
    #[error("tap backend: the namespace thread ended before it was ready")]
    Thread,
}

fn sys(what: &'static str) -> impl FnOnce(std::io::Error) -> TapError {
    move |err| TapError::Sys { what, err }
}

/// An `ifreq` as raw bytes: the name, then the union at offset 16.
fn ifreq(name: &str) -> [u8; 40] {
    let mut r = [0u8; 40];
    r[..name.len()].copy_from_slice(name.as_bytes());
    r
}

fn ioctl(
    fd: i32,
    req: libc::c_ulong,
    r: &mut [u8; 40],
    what: &'static str,
) -> Result<(), TapError> {
    // SAFETY: `r` is a 40-byte ifreq, as large as the kernel's struct ifreq, valid for the call.
    let rc = unsafe { libc::ioctl(fd, req as _, r.as_mut_ptr()) };
    if rc < 0 {
        return Err(TapError::Sys {
            what,
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn sockaddr_in(r: &mut [u8; 40], ip: [u8; 4]) {
    r[16..18].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    r[20..24].copy_from_slice(&ip);
}

/// Sets `name` up (with `ip`/24 when given) using the control socket `s`.
fn up(s: i32, name: &str, ip: Option<[u8; 4]>) -> Result<(), TapError> {
    if let Some(ip) = ip {
        let mut r = ifreq(name);
        sockaddr_in(&mut r, ip);
        ioctl(s, libc::SIOCSIFADDR, &mut r, "SIOCSIFADDR")?;
        let mut r = ifreq(name);
        sockaddr_in(&mut r, [255, 255, 255, 0]);
        ioctl(s, libc::SIOCSIFNETMASK, &mut r, "SIOCSIFNETMASK")?;
    }
    let mut r = ifreq(name);
    ioctl(s, libc::SIOCGIFFLAGS, &mut r, "SIOCGIFFLAGS")?;
    let flags = i16::from_ne_bytes([r[16], r[17]]) | (libc::IFF_UP | libc::IFF_RUNNING) as i16;
    r[16..18].copy_from_slice(&flags.to_ne_bytes());
    ioctl(s, libc::SIOCSIFFLAGS, &mut r, "SIOCSIFFLAGS")
}

/// In the calling thread: a new network namespace with `lo` and the tap up; returns the tap.
fn namespace_with_tap(mac: [u8; 6]) -> Result<File, TapError> {
    // SAFETY: unshare affects only this thread's namespaces; no memory is involved.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
        return Err(sys("unshare(CLONE_NEWNET)")(std::io::Error::last_os_error()));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(sys("open /dev/net/tun"))?;
    let mut r = ifreq(TAP_NAME);
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as i16;
    r[16..18].copy_from_slice(&flags.to_ne_bytes());
    ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut r, "TUNSETIFF")?;
    // SAFETY: a plain socket call; the descriptor is owned by `ctl` below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if s < 0 {
        return Err(sys("socket")(std::io::Error::last_os_error()));
    }
    // SAFETY: `s` is a fresh descriptor nothing else owns.
    let ctl = unsafe { File::from_raw_fd(s) };
    let mut r = ifreq(TAP_NAME);
    r[16..18].copy_from_slice(&1u16.to_ne_bytes()); // ARPHRD_ETHER
    r[18..24].copy_from_slice(&mac);
    ioctl(
        ctl.as_raw_fd(),
        libc::SIOCSIFHWADDR,
        &mut r,
        "SIOCSIFHWADDR",
    )?;
    up(ctl.as_raw_fd(), "lo", None)?;
    up(ctl.as_raw_fd(), TAP_NAME, Some(RESPONDER_IP))?;
    Ok(tun)
}

fn word(seq: u32, k: usize) -> [u8; 8] {
    ((u64::from(seq) << 32) | k as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .to_le_bytes()
}

/// A `net-io` payload of `len` bytes: the header, then the pattern of `seq`.
fn payload(kind: u8, seq: u32, aux: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len.max(PHDR)];
    p[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    p[4] = kind;
    p[8..12].copy_from_slice(&seq.to_le_bytes());
    p[12..16].copy_from_slice(&aux.to_le_bytes());
    for (k, chunk) in p[PHDR..].chunks_mut(8).enumerate() {
        let w = word(seq, k);
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
    p
}

/// Answers `net-io`'s client as its server does: PING gets PONG with the same bytes, a burst's
/// last DATA gets ACK, DONE gets DONE_ACK with the DATA count. Returns the reply, if any.
pub fn respond(msg: &[u8], data: &mut u32) -> Option<Vec<u8>> {
    if msg.len() < PHDR || msg[0..4] != MAGIC.to_le_bytes() {
        return None;
    }
    let seq = u32::from_le_bytes([msg[8], msg[9], msg[10], msg[11]]);
    match msg[4] {
        K_PING => {
            let mut r = msg.to_vec();
            r[4] = K_PONG;
            Some(r)
        }
        K_DATA => {
            *data += 1;
            (msg[5] & F_LAST != 0).then(|| payload(K_ACK, seq, *data, 18))
        }
        K_DONE => {
            let r = payload(K_DONE_ACK, 0, *data, 18);
            *data = 0;
            Some(r)
        }
        _ => None,
    }
}

/// The tap backend of one run; dropping it ends its threads and its namespace.
pub struct TapNet {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    port: Arc<Port>,
}

impl std::fmt::Debug for TapNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapNet").field("port", &self.port).finish()
    }
}

impl TapNet {
    /// Creates the namespace, the tap (as port `port_mac(1)` of `switch`) and the responder.
    pub fn create(switch: &Arc<Switch>) -> Result<TapNet, TapError> {
        let mac = port_mac(1);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let ns_stop = stop.clone();
        let ns = std::thread::Builder::new()
            .name("hv-netns".into())
            .spawn(move || {
                let made = namespace_with_tap(mac).and_then(|tap| {
                    let sock = UdpSocket::bind((std::net::Ipv4Addr::from(RESPONDER_IP), PORT))
                        .map_err(sys("bind the responder"))?;
                    sock.set_read_timeout(Some(Duration::from_millis(20)))
                        .map_err(sys("responder timeout"))?;
                    Ok((tap, sock))
                });
                let sock = match made {
                    Ok((tap, sock)) => {
                        let _ = tx.send(Ok(tap));
                        sock
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let mut buf = vec![0u8; 2048];
                let mut data = 0u32;
                while !ns_stop.load(Ordering::Acquire) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        if let Some(reply) = respond(&buf[..n], &mut data) {
                            let _ = sock.send_to(&reply, from);
                        }
                    }
                }
            })
            .map_err(sys("spawn the namespace thread"))?;
        let tap = match rx.recv() {
            Ok(Ok(tap)) => tap,
            Ok(Err(e)) => {
                let _ = ns.join();
                return Err(e);
            }
            Err(_) => return Err(TapError::Thread),
        };
        let tap = Arc::new(tap);
        let port = switch.add_port(mac).ok_or(TapError::NoPort)?;
        // Frames for the tap: written on the sender's thread, as they arrive.
        let writer = Mutex::new(tap.clone());
        let weak = Arc::downgrade(&port);
        port.set_waker(Box::new(move || {
            let Some(p) = weak.upgrade() else { return };
            let w = writer.lock().unwrap_or_else(PoisonError::into_inner);
            while let Some(f) = p.take() {
                let _ = (&**w).write(&f);
            }
        }));
        // Frames from the tap: a reader thread hands them to the switch.
        let rd_stop = stop.clone();
        let sw = switch.clone();
        let index = port.index();
        let reader = std::thread::Builder::new()
            .name("hv-tap-reader".into())
            .spawn(move || {
                let mut buf = vec![0u8; MAX_FRAME + 64];
                let fd = tap.as_raw_fd();
                while !rd_stop.load(Ordering::Acquire) {
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the duration of the call.
                    let n = unsafe { libc::poll(&mut pfd, 1, 20) };
                    if n <= 0 {
                        continue;
                    }
                    match (&*tap).read(&mut buf) {
                        Ok(len) if len > 0 => {
                            let _ = sw.send(index, &buf[..len]);
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
            .map_err(sys("spawn the tap reader"))?;
        Ok(TapNet {
            stop,
            threads: vec![ns, reader],
            port,
        })
    }

    /// `key=value` words of the tap port's counters.
    pub fn words(&self) -> String {
        self.port.words()
    }
}

impl Drop for TapNet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The port's waker still holds the tap file; the switch (and so the port) goes with
        // the run. Flush what waits so nothing is written after this.
        self.port.flush();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn the_responder_answers_as_the_server_does() {
        let mut data = 0;
        let ping = payload(K_PING, 7, 0, 100);
        let pong = respond(&ping, &mut data).unwrap();
        assert_eq!(pong[4], K_PONG);
        assert_eq!(pong[5..], ping[5..]);
        let mut d = payload(K_DATA, 3, 0, 50);
        assert!(respond(&d, &mut data).is_none());
        d[5] = F_LAST;
        let ack = respond(&d, &mut data).unwrap();
        assert_eq!((ack[4], ack[12]), (K_ACK, 2));
        let done = respond(&payload(K_DONE, 0, 2, 18), &mut data).unwrap();
        assert_eq!((done[4], done[12], data), (K_DONE_ACK, 2, 0));
        assert!(respond(b"junk", &mut data).is_none());
    }
}
