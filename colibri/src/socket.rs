//! The media port's socket layer: batched receive (`recvmmsg`), batched send (`sendmmsg`,
//! and UDP GSO for runs of datagrams to one destination), and the address mapping of a
//! dual-stack socket. It knows nothing about media: whoever owns the buffers gets them back
//! through [`SendOwner`]. (quinn-udp does GSO and GRO well but sends to one destination per
//! call; a bridge's turn fans out to many, which `sendmmsg` does in one system call.)

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use tokio::net::UdpSocket;

/// Receive and send buffer requested for the media socket.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Where sent datagrams' buffers go back to, and who counts what the kernel did with them.
pub trait SendOwner {
    /// A buffer that was sent (or dropped), for reuse.
    fn recycle(&mut self, buf: Vec<u8>);
    /// `segments` datagrams went out in one GSO send.
    fn count_gso(&mut self, segments: u64);
    /// `n` datagrams could not be sent (full socket buffer, no route).
    fn count_send_dropped(&mut self, n: u64);
}

/// Datagrams read in one turn of the loop before outputs and timers are served.
pub(crate) const RECV_BATCH: usize = 32;
/// Datagrams handed to the kernel in one `sendmmsg`.
pub(crate) const SEND_BATCH: usize = 32;

/// Buffers for one `recvmmsg`.
pub(crate) struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    headers: nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
    /// Length and sender of each datagram received by the last call.
    got: Vec<(usize, Option<SocketAddr>)>,
}

impl RecvBatch {
    pub(crate) fn new() -> RecvBatch {
        RecvBatch {
            bufs: (0..RECV_BATCH).map(|_| vec![0u8; 2048]).collect(),
            headers: nix::sys::socket::MultiHeaders::preallocate(RECV_BATCH, None),
            got: Vec::with_capacity(RECV_BATCH),
        }
    }

    /// Read what is queued on `sock` (it polled readable) and call `f(now, from, data)` for each
    /// datagram; one clock reading per batch: they arrived together.
    pub(crate) fn each(&mut self, sock: &UdpSocket, mut f: impl FnMut(Instant, SocketAddr, &[u8])) {
        let fd = sock.as_raw_fd();
        match sock.try_io(tokio::io::Interest::READABLE, || self.receive(fd)) {
            Ok(()) => {
                let now = Instant::now();
                for (i, &(n, from)) in self.got.iter().enumerate() {
                    if let (Some(from), Some(data)) =
                        (from, self.bufs.get(i).and_then(|b| b.get(..n)))
                    {
                        f(now, from, data);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::debug!(error = %e, "media receive failed"),
        }
    }

    /// Read what is queued (at least one datagram, or `WouldBlock`).
    fn receive(&mut self, fd: RawFd) -> std::io::Result<()> {
        use nix::sys::socket::{MsgFlags, SockaddrLike, recvmmsg};
        self.got.clear();
        let mut iovs: Vec<[std::io::IoSliceMut<'_>; 1]> = self
            .bufs
            .iter_mut()
            .map(|b| [std::io::IoSliceMut::new(&mut b[..])])
            .collect();
        let res = recvmmsg(
            fd,
            &mut self.headers,
            &mut iovs,
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(std::io::Error::from)?;
        for m in res {
            let from = m.address.and_then(|a| match a.family() {
                Some(nix::sys::socket::AddressFamily::Inet) => {
                    a.as_sockaddr_in().map(|v| SocketAddr::from(*v))
                }
                Some(nix::sys::socket::AddressFamily::Inet6) => {
                    a.as_sockaddr_in6().map(|v| SocketAddr::from(*v))
                }
                _ => None,
            });
            // Larger than the buffer: truncated, useless.
            let truncated = m.flags.contains(MsgFlags::MSG_TRUNC);
            self.got
                .push((m.bytes, if truncated { None } else { from }));
        }
        if self.got.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    }
}

/// Datagrams waiting for one `sendmmsg`.
pub(crate) struct SendBatch {
    pub(crate) items: Vec<(SocketAddr, Vec<u8>)>,
    addrs: Vec<Option<nix::sys::socket::SockaddrStorage>>,
    headers: nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
    /// UDP GSO (Linux `UDP_SEGMENT`) works on this socket: runs of equal-sized datagrams to one
    /// destination go down the stack as one. Turned off for good at the first refusal.
    gso: bool,
    /// Scratch: item indices by destination; the ones sent singly.
    order: Vec<usize>,
    singles: Vec<(SocketAddr, Vec<u8>)>,
}

impl Default for SendBatch {
    fn default() -> SendBatch {
        SendBatch {
            items: Vec::with_capacity(SEND_BATCH),
            addrs: Vec::with_capacity(SEND_BATCH),
            headers: nix::sys::socket::MultiHeaders::preallocate(SEND_BATCH, None),
            gso: true,
            order: Vec::with_capacity(SEND_BATCH),
            singles: Vec::with_capacity(SEND_BATCH),
        }
    }
}

/// Segments in one GSO send at most (the kernel's UDP_MAX_SEGMENTS is 64 or more), and bytes.
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 60_000;

impl SendBatch {
    /// Send everything queued (what the socket buffer cannot take is dropped, as the network
    /// would) and give the buffers back to their owner.
    pub(crate) fn flush(&mut self, fd: RawFd, owner: &mut impl SendOwner) {
        if self.gso && (2..=64).contains(&self.items.len()) {
            self.send_gso_runs(fd, owner);
        }
        self.send_each(fd, owner);
    }

    /// For each destination with a run of equal-sized datagrams (the last of a run may be
    /// shorter), send its datagrams in order: each run with one GSO `sendmsg`, the others
    /// with plain ones. Other destinations' datagrams stay in `items` for `sendmmsg`.
    fn send_gso_runs(&mut self, fd: RawFd, owner: &mut impl SendOwner) {
        use nix::errno::Errno;
        use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
        let n = self.items.len();
        self.order.clear();
        self.order.extend(0..n);
        // Stable: each destination's datagrams keep their order.
        let items = &self.items;
        self.order.sort_by_key(|&i| items[i].0);
        // The end of the run starting at order[i] (exclusive).
        let run_end = |order: &[usize], i: usize| {
            let (to, size) = (items[order[i]].0, items[order[i]].1.len());
            let mut j = i + 1;
            let mut total = size;
            while j < n && j - i < GSO_MAX_SEGMENTS {
                let (t, d) = &items[order[j]];
                if *t != to || d.len() > size || total + d.len() > GSO_MAX_BYTES {
                    break;
                }
                total += d.len();
                j += 1;
                if d.len() < size {
                    break;
                }
            }
            j
        };
        // Bit k: item k is done with (sent, or dropped for a full buffer).
        let mut sent = 0u64;
        let mut start = 0;
        'destinations: while start < n {
            let to = items[self.order[start]].0;
            let end = (start..n)
                .find(|&k| items[self.order[k]].0 != to)
                .unwrap_or(n);
            let mut i = start;
            let has_run = (start..end).any(|k| run_end(&self.order, k) - k >= 2);
            if !has_run {
                start = end;
                continue;
            }
            let addr = SockaddrStorage::from(to);
            while i < end {
                let j = run_end(&self.order, i);
                let iovs: Vec<IoSlice<'_>> = self.order[i..j]
                    .iter()
                    .map(|&k| IoSlice::new(&items[k].1))
                    .collect();
                let seg = items[self.order[i]].1.len().min(usize::from(u16::MAX)) as u16;
                let gso = [ControlMessage::UdpGsoSegments(&seg)];
                let cmsgs: &[ControlMessage<'_>] = if j - i >= 2 { &gso } else { &[] };
                match sendmsg(fd, &iovs, cmsgs, MsgFlags::MSG_DONTWAIT, Some(&addr)) {
                    Ok(_) if j - i >= 2 => owner.count_gso((j - i) as u64),
                    Ok(_) => {}
                    Err(Errno::EAGAIN | Errno::ENOBUFS) => {
                        owner.count_send_dropped((j - i) as u64);
                    }
                    Err(Errno::EINTR) => continue,
                    // No GSO here (old kernel, no checksum offload, IPsec): the rest goes
                    // datagram by datagram (after what went, so in order).
                    Err(e) if j - i >= 2 => {
                        tracing::info!(error = %e, "UDP GSO refused: media sent datagram by datagram");
                        self.gso = false;
                        break 'destinations;
                    }
                    // This one datagram cannot go (e.g. no route): skip it.
                    Err(e) => {
                        tracing::debug!(error = %e, %to, "media send failed");
                        owner.count_send_dropped(1);
                    }
                }
                for &k in &self.order[i..j] {
                    sent |= 1 << k;
                }
                i = j;
            }
            start = end;
        }
        // Keep what is left (in its order) for sendmmsg, recycle what went.
        self.singles.clear();
        for (k, item) in self.items.drain(..).enumerate() {
            if sent & (1 << k) != 0 {
                owner.recycle(item.1);
            } else {
                self.singles.push(item);
            }
        }
        std::mem::swap(&mut self.items, &mut self.singles);
    }

    /// `sendmmsg` of everything in `items`.
    fn send_each(&mut self, fd: RawFd, owner: &mut impl SendOwner) {
        use nix::errno::Errno;
        use nix::sys::socket::{MsgFlags, SockaddrStorage, sendmmsg};
        let mut at = 0;
        while at < self.items.len() {
            let rest = &self.items[at..];
            let iovs: Vec<[IoSlice<'_>; 1]> = rest.iter().map(|(_, d)| [IoSlice::new(d)]).collect();
            self.addrs.clear();
            self.addrs
                .extend(rest.iter().map(|(a, _)| Some(SockaddrStorage::from(*a))));
            match sendmmsg(
                fd,
                &mut self.headers,
                &iovs,
                &self.addrs,
                [],
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(r) => {
                    let n = r.count();
                    if n == 0 {
                        owner.count_send_dropped((self.items.len() - at) as u64);
                        break;
                    }
                    at += n;
                }
                // The socket buffer is full: drop the rest.
                Err(Errno::EAGAIN | Errno::ENOBUFS) => {
                    owner.count_send_dropped((self.items.len() - at) as u64);
                    break;
                }
                Err(Errno::EINTR) => {}
                // This one datagram cannot go (e.g. no route): skip it.
                Err(e) => {
                    tracing::debug!(error = %e, to = %rest[0].0, "media send failed");
                    owner.count_send_dropped(1);
                    at += 1;
                }
            }
        }
        for (_, data) in self.items.drain(..) {
            owner.recycle(data);
        }
    }
}

/// The local address the engine takes a datagram from `from` as received on: the
/// (unspecified) one of the same family, on the media port.
pub(crate) fn local_for(from: SocketAddr, local: SocketAddr) -> SocketAddr {
    match from {
        SocketAddr::V4(_) => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), local.port()),
        SocketAddr::V6(_) => SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), local.port()),
    }
}

/// IPv4-mapped IPv6 addresses as plain IPv4.
pub(crate) fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The address to send to on `sock`: IPv4 destinations are mapped on an IPv6 socket.
pub(crate) fn destination(local: SocketAddr, to: SocketAddr) -> SocketAddr {
    match (local, to) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
        }
        _ => to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Counted {
        recycled: usize,
        dropped: u64,
    }

    impl SendOwner for Counted {
        fn recycle(&mut self, _: Vec<u8>) {
            self.recycled += 1;
        }
        fn count_gso(&mut self, _: u64) {}
        fn count_send_dropped(&mut self, n: u64) {
            self.dropped += n;
        }
    }

    /// A batch mixing runs of equal-sized datagrams (GSO) and odd ones, to two sockets on
    /// loopback: each datagram arrives once, whole, in its destination's order.
    #[test]
    fn batched_sends_arrive_once_whole_and_in_order() {
        use std::net::UdpSocket as StdSocket;
        let tx = StdSocket::bind("127.0.0.1:0").unwrap();
        let rx: Vec<StdSocket> = (0..2)
            .map(|_| {
                let s = StdSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
                    .unwrap();
                s
            })
            .collect();
        let to: Vec<SocketAddr> = rx.iter().map(|s| s.local_addr().unwrap()).collect();
        // (destination, size): a run of five with a shorter last one, interleaved with
        // uneven sizes to the other, then another run.
        let plan: Vec<(usize, usize)> = vec![
            (0, 1000),
            (1, 1000),
            (0, 1000),
            (1, 900),
            (0, 1000),
            (0, 1000),
            (1, 900),
            (0, 600),
            (1, 1000),
            (0, 1000),
            (0, 1000),
            (1, 50),
        ];
        let mut owner = Counted::default();
        for gso in [true, false] {
            let mut batch = SendBatch {
                gso,
                ..SendBatch::default()
            };
            for (k, &(d, size)) in plan.iter().enumerate() {
                let mut data = vec![k as u8; size];
                data[0] = d as u8;
                batch.items.push((to[d], data));
            }
            batch.flush(tx.as_raw_fd(), &mut owner);
            assert!(batch.items.is_empty());
            for (d, sock) in rx.iter().enumerate() {
                let want: Vec<(usize, usize)> = plan
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.0 == d)
                    .map(|(k, p)| (k, p.1))
                    .collect();
                let mut got = Vec::new();
                let mut buf = [0u8; 2048];
                while let Ok(n) = sock.recv(&mut buf) {
                    assert!(buf[..n].iter().skip(1).all(|b| *b == buf[n - 1]), "whole");
                    assert_eq!(usize::from(buf[0]), d);
                    got.push((usize::from(buf[n - 1]), n));
                }
                assert_eq!(got, want, "gso={gso} destination {d}");
            }
        }
        assert_eq!(owner.dropped, 0);
        assert_eq!(owner.recycled, 2 * plan.len());
    }

    #[test]
    fn dual_stack_addresses_are_mapped_both_ways() {
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:5000".parse().unwrap();
        let v4: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        assert_eq!(canonical(mapped), v4);
        assert_eq!(canonical(v6), v6);
        let any6: SocketAddr = "[::]:10000".parse().unwrap();
        let any4: SocketAddr = "0.0.0.0:10000".parse().unwrap();
        assert_eq!(destination(any6, v4), mapped);
        assert_eq!(destination(any6, v6), v6);
        assert_eq!(destination(any4, v4), v4);
    }
}
