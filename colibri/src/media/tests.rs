//! The engine against str0m "browsers" on a virtual clock: datagrams are passed by hand
//! between one `MediaEngine` and a few client `Rtc`s (ICE controlled, DTLS client, a VP8
//! camera with 3 simulcast layers + RTX and an Opus mic). No sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::config::Fingerprint;
use str0m::ice::IceCreds;
use str0m::media::{MediaKind, Mid, Rid};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::rtp::{ExtensionValues, RawPacket, RtpPacket, RtpWrite};
use str0m::{Candidate, Event, Input, Output, Rtc};

use super::*;
use crate::colibri2::{IceUdpTransport, Media, Sources};

const CONF: &str = "conf1";

fn engine_addr() -> SocketAddr {
    "127.0.0.1:10000".parse().unwrap()
}

/// The engine's ICE-TCP passive candidate.
fn engine_tcp_addr() -> SocketAddr {
    "127.0.0.1:4443".parse().unwrap()
}

/// The offer as the focus would pass it to the bridge (Jicofo's lists).
fn offer_medias() -> Vec<Media> {
    jitsi_default_medias()
}

/// A fake browser.
struct Client {
    name: String,
    addr: SocketAddr,
    rtc: Rtc,
    ufrag: String,
    pwd: String,
    audio: u32,
    /// (ssrc, rtx) per simulcast layer, lowest first.
    layers: [(u32, u32); 3],
    next_timeout: Instant,
    connected: bool,
    rtp: Vec<RtpPacket>,
    raw_rx_ssrcs: Vec<u32>,
    /// RTCP from the bridge, as str0m parsed it.
    rtcp_rx: Vec<str0m::rtp::rtcp::Rtcp>,
    keyframe_requests: Vec<Option<Rid>>,
    // Sending state.
    seq: HashMap<u32, u64>,
    frame: u32,
    force_keyframe: [bool; 3],
    /// What the mic sends in [`Net::media`].
    voice: Voice,
    audio_sent: u32,
    /// Cut off from the network (both directions).
    paused: bool,
    /// SSRC rewriting: the client learns remote SSRCs from the source maps only.
    rewriting: bool,
    /// The bridge channel as an SCTP data channel: the client connects the association and
    /// opens the channel as lib-jitsi-meet does.
    sctp: bool,
    channel: Option<str0m::channel::ChannelId>,
    /// Text messages received on the data channel.
    channel_rx: Vec<String>,
    /// Behind a firewall that drops UDP: reaches the bridge by ICE-TCP only.
    tcp: bool,
    /// Slot SSRC → (owner, source) from the source maps.
    mapped: HashMap<u32, (String, String)>,
    id_byte: u8,
    /// Packets per frame on each layer, and filler bytes in each packet.
    video_packets: [usize; 3],
    video_filler: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Voice {
    /// -30 dBov on every packet.
    Steady,
    /// Speech: a -87 dBov noise floor every 10th packet, -17 dBov otherwise.
    Talking,
    /// -127 dBov: the sender's silence.
    Silent,
}

use crate::testkit::{self};

impl Client {
    /// A client of the bridge at `bridge`.
    fn of_bridge(n: u32, now: Instant, bridge: SocketAddr) -> Client {
        let name = format!("ep{n}");
        let addr: SocketAddr = format!("127.0.0.1:{}", 5000 + n).parse().unwrap();
        let mut rtc = testkit::client_rtc(now, |c| c.enable_raw_packets(true));
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        // The browser learns the bridge's candidate from the offer.
        rtc.add_remote_candidate(Candidate::host(bridge, "udp").unwrap());
        let creds = rtc.direct_api().local_ice_credentials();
        let base = n * 100;
        let layers = [
            (base + 11, base + 12),
            (base + 21, base + 22),
            (base + 31, base + 32),
        ];
        let audio = base + 1;
        testkit::declare_client_streams(&mut rtc, audio, &layers);
        Client {
            name,
            addr,
            rtc,
            ufrag: creds.ufrag,
            pwd: creds.pass,
            audio,
            layers,
            next_timeout: now,
            connected: false,
            rtp: Vec::new(),
            raw_rx_ssrcs: Vec::new(),
            rtcp_rx: Vec::new(),
            keyframe_requests: Vec::new(),
            seq: HashMap::new(),
            frame: 0,
            force_keyframe: [true; 3],
            voice: Voice::Steady,
            audio_sent: 0,
            paused: false,
            rewriting: false,
            sctp: false,
            channel: None,
            channel_rx: Vec::new(),
            tcp: false,
            mapped: HashMap::new(),
            id_byte: n as u8,
            video_packets: [1; 3],
            video_filler: 20,
        }
    }

    /// The transport of the session-accept: ufrag/pwd, fingerprint (setup=active), no
    /// candidates.
    fn transport(&mut self) -> IceUdpTransport {
        let fp = self.rtc.direct_api().local_dtls_fingerprint().clone();
        IceUdpTransport::client_answer(&self.ufrag, &self.pwd, &fp.bytes)
    }

    /// The sources of the session-accept: one mic, one camera with SIM + 3 FID groups.
    fn sources(&self) -> Sources {
        testkit::client_sources(&self.name, self.audio, &self.layers)
    }

    /// What the focus signals to the others (source-add): the mic and the FIRST SIM SSRC
    /// with its FID partner only.
    fn expect_from(&mut self, other: &Client) {
        // One mid per remote source: str0m keeps one receive stream per mid/rid.
        let ma = Mid::from(format!("a{}", other.audio).as_str());
        let mv = Mid::from(format!("v{}", other.layers[0].0).as_str());
        let mut api = self.rtc.direct_api();
        if api.stream_rx(&other.audio.into()).is_some() {
            return;
        }
        api.declare_media(ma, MediaKind::Audio);
        api.declare_media(mv, MediaKind::Video);
        api.expect_stream_rx(other.audio.into(), None, ma, None);
        api.expect_stream_rx(
            other.layers[0].0.into(),
            Some(other.layers[0].1.into()),
            mv,
            None,
        );
    }

    /// What lib-jitsi-meet does with a source map: a local source-add for new SSRCs (with
    /// the RTX as FID partner), a relabel for known ones.
    fn apply_map(&mut self, kind: MediaType, sources: &[MappedSource]) {
        for m in sources {
            self.mapped
                .insert(m.ssrc, (m.owner.clone(), m.source.clone()));
            let mid = Mid::from(format!("m{}", m.ssrc % 100_000).as_str());
            let mut api = self.rtc.direct_api();
            if api.stream_rx(&m.ssrc.into()).is_some() {
                continue;
            }
            let mk = match kind {
                MediaType::Audio => MediaKind::Audio,
                MediaType::Video => MediaKind::Video,
            };
            api.declare_media(mid, mk);
            api.expect_stream_rx(m.ssrc.into(), m.rtx.map(Into::into), mid, None);
        }
    }

    fn start(&mut self, engine: &MediaEngine) {
        let fp: Fingerprint = format!("sha-256 {}", engine.dtls_fingerprint())
            .parse()
            .unwrap();
        let mut api = self.rtc.direct_api();
        api.set_remote_fingerprint(fp);
        // The offer's ICE credentials are the ones the service handed out: the test uses the
        // client's name for both.
        api.set_remote_ice_credentials(IceCreds {
            ufrag: bridge_ufrag(&self.name),
            pass: bridge_pwd(&self.name),
        });
        api.start_dtls(true).unwrap();
        if self.tcp {
            // The browser's active TCP candidate, and the bridge's passive one from the offer.
            let active = Candidate::builder()
                .tcp()
                .host(self.addr)
                .tcptype(TcpType::Active)
                .build()
                .unwrap();
            self.rtc.add_local_candidate(active);
            let passive = Candidate::builder()
                .tcp()
                .host(engine_tcp_addr())
                .tcptype(TcpType::Passive)
                .build()
                .unwrap();
            self.rtc.add_remote_candidate(passive);
        }
        let mut api = self.rtc.direct_api();
        if self.sctp {
            api.start_sctp(true);
            api.create_data_channel(str0m::channel::ChannelConfig {
                label: "JVB data channel".into(),
                protocol: "http://jitsi.org/protocols/colibri".into(),
                ..Default::default()
            });
        }
    }

    fn next_seq(&mut self, ssrc: u32) -> u64 {
        let s = self
            .seq
            .entry(ssrc)
            .or_insert(u64::from(ssrc) * 7 % 1000 + 100);
        *s += 1;
        *s
    }

    /// The next mic packet's level for the client's [`Voice`].
    fn next_level(&mut self) -> i8 {
        self.audio_sent += 1;
        match self.voice {
            Voice::Steady => -30,
            Voice::Talking if self.audio_sent.is_multiple_of(10) => -87,
            Voice::Talking => -17,
            Voice::Silent => -127,
        }
    }

    fn send_audio(&mut self, now: Instant, level: i8) {
        let seq = self.next_seq(self.audio);
        let ts = (seq as u32).wrapping_mul(960);
        let ext = ExtensionValues {
            audio_level: Some(level),
            voice_activity: Some(true),
            ..Default::default()
        };
        let mut api = self.rtc.direct_api();
        let s = api.stream_tx(&self.audio.into()).unwrap();
        s.write_rtp(
            RtpWrite::new(111.into(), seq.into(), ts, now, vec![0xAA, seq as u8, 1, 2])
                .ext_vals(ext),
        );
    }

    /// One frame on every layer (`video_packets` packets each, the last with the marker);
    /// every payload ends with [layer, frame].
    fn send_video_frame(&mut self, now: Instant) {
        self.frame += 1;
        for i in 0..3 {
            let (ssrc, _) = self.layers[i];
            let keyframe = std::mem::take(&mut self.force_keyframe[i]);
            let pid = (self.frame + 1000 * i as u32) as u16 & 0x7fff;
            let tl0 = (self.frame as u8).wrapping_add(50 * i as u8);
            let ts = 1_000_000 * (i as u32 + 1) + self.frame * 3000;
            let n = self.video_packets[i].max(1);
            for k in 0..n {
                let seq = self.next_seq(ssrc);
                // X bit, and S (start of partition) on the first packet only.
                let first = if k == 0 { 0x90 } else { 0x80 };
                let mut payload = vec![first, 0xe0, 0x80 | (pid >> 8) as u8, pid as u8, tl0, 0x00];
                if k == 0 && keyframe {
                    let h = [180u16, 360, 720][i];
                    let w = h * 16 / 9;
                    payload.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a]);
                    payload.extend_from_slice(&w.to_le_bytes());
                    payload.extend_from_slice(&h.to_le_bytes());
                } else if k == 0 {
                    payload.extend_from_slice(&[0x31, 0x00, 0x00]);
                }
                payload.extend(std::iter::repeat_n(self.id_byte, self.video_filler));
                payload.extend_from_slice(&[i as u8, self.frame as u8]);
                let mut api = self.rtc.direct_api();
                let s = api.stream_tx(&ssrc.into()).unwrap();
                s.write_rtp(
                    RtpWrite::new(100.into(), seq.into(), ts, now, payload)
                        .marker(k + 1 == n)
                        .nackable(true),
                );
            }
        }
    }

    /// Drain the client's outputs; returns the datagrams it sends.
    fn poll(&mut self) -> Vec<(SocketAddr, SocketAddr, Vec<u8>, Protocol)> {
        let mut out = Vec::new();
        loop {
            match self.rtc.poll_output().unwrap() {
                Output::Transmit(t) => {
                    out.push((t.source, t.destination, t.contents.to_vec(), t.proto));
                }
                Output::Event(e) => match e {
                    Event::Connected => self.connected = true,
                    Event::ChannelOpen(id, _) => self.channel = Some(id),
                    Event::ChannelData(d) => {
                        self.channel_rx.push(String::from_utf8(d.data).unwrap());
                    }
                    Event::RtpPacket(p) => self.rtp.push(p),
                    Event::KeyframeRequest(r) => {
                        self.keyframe_requests.push(r.rid);
                        if let Some(i) = r.rid.and_then(|rid| {
                            (0..3).find(|i| rid == Rid::from(format!("l{i}").as_str()))
                        }) {
                            self.force_keyframe[i] = true;
                        }
                    }
                    Event::RawPacket(raw) => match *raw {
                        RawPacket::RtpRx(h, _) => self.raw_rx_ssrcs.push(*h.ssrc),
                        RawPacket::RtcpRx(r) => self.rtcp_rx.push(r),
                        _ => {}
                    },
                    _ => {}
                },
                Output::Timeout(t) => {
                    self.next_timeout = t;
                    return out;
                }
            }
        }
    }

    /// Received RTP on one SSRC.
    fn received(&self, ssrc: u32) -> Vec<&RtpPacket> {
        self.rtp.iter().filter(|p| *p.header.ssrc == ssrc).collect()
    }
}

fn bridge_ufrag(name: &str) -> String {
    format!("br{name}")
}

fn bridge_pwd(name: &str) -> String {
    format!("bridgepassword{name}xxxxxxxx")
}

fn vp8_pid_tl0(payload: &[u8]) -> (u16, u8) {
    let d = Vp8Descriptor::parse(payload).unwrap();
    (d.picture_id().unwrap(), d.tl0_pic_idx().unwrap())
}

/// Engine + clients + the wire between them.
/// Decides whether a datagram from a client (its address, the data) reaches the engine.
type ToEngine = dyn FnMut(SocketAddr, &[u8]) -> bool;
/// Decides whether a datagram from the engine, sent at the instant, reaches its client.
type ToClient = dyn FnMut(&Transmit, Instant) -> bool;

struct Net {
    now: Instant,
    engine: MediaEngine,
    engine_timeout: Instant,
    clients: Vec<Client>,
    events: Vec<EngineEvent>,
    /// Return false to lose a datagram from the engine to a client (sent at the instant).
    deliver_to_client: Box<ToClient>,
    /// Return false to lose a datagram from a client (its address, the data) to the engine.
    deliver_to_engine: Box<ToEngine>,
}

/// The engine's start: `instant`, at a fixed wall-clock time.
fn test_clock(instant: Instant) -> Clock {
    Clock {
        instant,
        system: std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    }
}

impl Net {
    fn new(n: u32) -> Net {
        Net::build(n, &[], EngineConfig::default())
    }

    /// `rewriting`: the names of the clients created with the `ssrc-rewriting` capability.
    fn build(n: u32, rewriting: &[&str], cfg: EngineConfig) -> Net {
        Net::build_with(
            n,
            |c| c.rewriting = rewriting.contains(&c.name.as_str()),
            cfg,
        )
    }

    /// `n` clients, each set up by `setup` before it joins.
    fn build_with(n: u32, setup: impl Fn(&mut Client), cfg: EngineConfig) -> Net {
        Net::bridge_at(Instant::now(), engine_addr(), 1..=n, setup, cfg)
    }

    /// The bridge at `addr` with clients `ep<i>` for `i` in `clients`.
    fn bridge_at(
        now: Instant,
        addr: SocketAddr,
        clients: std::ops::RangeInclusive<u32>,
        setup: impl Fn(&mut Client),
        cfg: EngineConfig,
    ) -> Net {
        // Virtual time from `now`, a fixed wall clock and a fixed seed: every run the same.
        let engine = MediaEngine::new(
            EngineConfig {
                local_addrs: vec![addr],
                tcp_local_addrs: vec![engine_tcp_addr()],
                ..cfg
            },
            test_clock(now),
            7,
        );
        let mut clients: Vec<Client> = clients.map(|i| Client::of_bridge(i, now, addr)).collect();
        for c in &mut clients {
            setup(c);
        }
        let mut net = Net {
            now,
            engine,
            engine_timeout: now,
            clients,
            events: Vec::new(),
            deliver_to_client: Box::new(|_, _| true),
            deliver_to_engine: Box::new(|_, _| true),
        };
        for i in 0..net.clients.len() {
            net.join(i);
        }
        net
    }

    /// Colibri2 allocation, session-accept, sources, and the source-adds to the others.
    fn join(&mut self, i: usize) {
        let now = self.now;
        let name = self.clients[i].name.clone();
        let e = &mut self.engine;
        e.add_endpoint(
            CONF,
            &name,
            &bridge_ufrag(&name),
            &bridge_pwd(&name),
            self.clients[i].rewriting,
            self.clients[i].sctp,
            &offer_medias(),
            now,
        );
        let t = self.clients[i].transport();
        e.set_remote_transport((CONF, &name), &t, now);
        e.set_sources((CONF, &name), &self.clients[i].sources());
        self.clients[i].start(&self.engine);
        for j in 0..self.clients.len() {
            if j != i {
                let (a, b) = pair(&mut self.clients, i, j);
                if !a.rewriting {
                    a.expect_from(b);
                }
                if !b.rewriting {
                    b.expect_from(a);
                }
            }
        }
    }

    /// Every client's layers at about 250 kbit/s, 500 kbit/s and 1.5 Mbit/s.
    fn realistic_layers(&mut self) {
        for c in &mut self.clients {
            c.video_packets = [1, 2, 6];
            c.video_filler = 1000;
        }
    }

    fn client(&mut self, name: &str) -> &mut Client {
        self.clients.iter_mut().find(|c| c.name == name).unwrap()
    }

    /// Move everything that can move at `self.now` until nothing does.
    fn pump(&mut self) {
        let now = self.now;
        for _ in 0..10_000 {
            let mut moved = false;
            // Engine → clients.
            loop {
                match self.engine.poll_output() {
                    EngineOutput::Transmit(t) => {
                        moved = true;
                        if !(self.deliver_to_client)(&t, now) {
                            continue;
                        }
                        if let Some(c) = self
                            .clients
                            .iter_mut()
                            .find(|c| c.addr == t.to && !c.paused)
                        {
                            let r = Receive::new(t.proto, t.from, t.to, &t.data).unwrap();
                            c.rtc.handle_input(Input::Receive(now, r)).unwrap();
                            // One pending RTP packet in str0m's RTP mode: poll after each.
                            for t in c.poll() {
                                if (self.deliver_to_engine)(t.0, &t.2) {
                                    deliver(&mut self.engine, now, c.tcp, t);
                                }
                            }
                        }
                    }
                    EngineOutput::Event(e) => {
                        moved = true;
                        if let EngineEvent::SourcesMap {
                            endpoint,
                            kind,
                            sources,
                            ..
                        } = &e
                            && let Some(c) = self.clients.iter_mut().find(|c| &c.name == endpoint)
                        {
                            c.apply_map(*kind, sources);
                        }
                        self.events.push(e);
                    }
                    EngineOutput::Timeout(t) => {
                        self.engine_timeout = t;
                        break;
                    }
                }
            }
            // Clients → engine.
            for c in &mut self.clients {
                for t in c.poll() {
                    moved = true;
                    if !c.paused && (self.deliver_to_engine)(t.0, &t.2) {
                        deliver(&mut self.engine, now, c.tcp, t);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("network never settled");
    }

    /// Advance the virtual clock by `d`, running every timer on the way.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.pump();
            let next = self
                .clients
                .iter()
                .map(|c| c.next_timeout)
                .chain([self.engine_timeout])
                .min()
                .unwrap()
                .max(self.now + Duration::from_micros(500));
            if next > end {
                break;
            }
            self.now = next;
            self.tick();
        }
        self.now = end;
        self.tick();
        self.pump();
    }

    fn tick(&mut self) {
        let now = self.now;
        self.engine.handle_timeout(now);
        for c in &mut self.clients {
            if c.next_timeout <= now {
                c.rtc.handle_input(Input::Timeout(now)).unwrap();
            }
        }
    }

    /// Run `d` of media: audio every 20 ms from everyone, video frames every 33 ms.
    fn media(&mut self, d: Duration, video: bool) {
        let end = self.now + d;
        let mut next_video = self.now;
        while self.now < end {
            let now = self.now;
            for c in &mut self.clients {
                if c.connected {
                    let level = c.next_level();
                    c.send_audio(now, level);
                }
            }
            if video && now >= next_video {
                next_video = now + Duration::from_millis(33);
                for c in &mut self.clients {
                    if c.connected {
                        c.send_video_frame(now);
                    }
                }
            }
            self.advance(Duration::from_millis(20));
        }
    }

    fn connect(&mut self) {
        for _ in 0..100 {
            self.advance(Duration::from_millis(10));
            if self.clients.iter().all(|c| c.connected) {
                // Let the engine see its side too.
                self.advance(Duration::from_millis(10));
                return;
            }
        }
        panic!("not connected");
    }
}

/// A client's datagram to the engine: over UDP, or as a frame of its ICE-TCP connection. A
/// client behind a UDP-blocking firewall (`tcp_only`) loses its UDP.
fn deliver(
    engine: &mut MediaEngine,
    now: Instant,
    tcp_only: bool,
    (from, to, data, proto): (SocketAddr, SocketAddr, Vec<u8>, Protocol),
) {
    match proto {
        Protocol::Tcp => engine.handle_tcp_frame(now, from, to, &data),
        _ if tcp_only => {}
        _ => engine.handle_datagram(now, from, to, &data),
    }
}

fn pair<T>(v: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert_ne!(i, j);
    if i < j {
        let (a, b) = v.split_at_mut(j);
        (&mut a[i], &mut b[0])
    } else {
        let (a, b) = v.split_at_mut(i);
        (&mut b[0], &mut a[j])
    }
}

fn assert_consecutive(seqs: &[u64], what: &str) {
    assert!(!seqs.is_empty(), "{what}: nothing received");
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{what}: gap or reorder in {seqs:?}");
    }
}

fn connected_events(events: &[EngineEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::Connected { endpoint, .. } => Some(endpoint.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn fingerprint_is_sha256_upper_hex() {
    let e = MediaEngine::new(EngineConfig::default(), test_clock(Instant::now()), 1);
    let fp = e.dtls_fingerprint();
    assert_eq!(fp.len(), 32 * 3 - 1);
    assert!(
        fp.chars()
            .all(|c| c == ':' || c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
    );
}

#[test]
fn ice_and_dtls_connect_without_remote_candidates() {
    let mut net = Net::new(1);
    net.connect();
    assert_eq!(connected_events(&net.events), vec!["ep1".to_string()]);
    let s = net.engine.stats();
    assert_eq!((s.endpoints, s.conferences), (1, 1));
    assert!(s.packets_in > 0 && s.packets_out > 0);
    assert_eq!(s.dropped_datagrams, 0);
}

#[test]
fn audio_reaches_every_other_endpoint() {
    let mut net = Net::new(3);
    net.connect();
    let mut ev = connected_events(&net.events);
    ev.sort();
    assert_eq!(ev, ["ep1", "ep2", "ep3"]);
    net.media(Duration::from_millis(500), false);
    let a_audio = net.clients[0].audio;
    for name in ["ep2", "ep3"] {
        let c = net.client(name);
        let got = c.received(a_audio);
        assert!(got.len() >= 20, "{name} got {} audio packets", got.len());
        let seqs: Vec<u64> = got.iter().map(|p| *p.seq_no).collect();
        assert_consecutive(&seqs, name);
        assert_eq!(got[0].header.ext_vals.audio_level, Some(-30));
        assert_eq!(got[0].payload[0], 0xAA);
    }
    // Nobody gets its own audio back.
    let c1 = &net.clients[0];
    assert!(c1.received(a_audio).is_empty());
    assert!(!c1.received(net.clients[1].audio).is_empty());
}

#[test]
fn video_lowest_layer_by_default_on_the_signalled_ssrc() {
    let mut net = Net::new(2);
    net.connect();
    net.media(Duration::from_millis(1000), true);
    let (a_l0, a_rtx0) = net.clients[0].layers[0];
    let b = &net.clients[1];
    let got = b.received(a_l0);
    assert!(got.len() >= 20, "got {} video packets", got.len());
    // Nothing on the other layers' SSRCs: they were never signalled.
    assert!(
        b.rtp
            .iter()
            .all(|p| *p.header.ssrc != net.clients[0].layers[1].0)
    );
    // Only layer 0 (the last payload bytes are [layer, frame]).
    assert!(got.iter().all(|p| p.payload[p.payload.len() - 2] == 0));
    let seqs: Vec<u64> = got.iter().map(|p| *p.seq_no).collect();
    assert_consecutive(&seqs, "video");
    assert!(!b.raw_rx_ssrcs.contains(&a_rtx0), "no loss, no RTX");
    // The forwarded set was announced.
    assert!(net.events.iter().any(|e| matches!(e,
        EngineEvent::ForwardedSources { endpoint, sources, .. }
            if endpoint == "ep2" && sources == &["ep1-v0".to_string()])));
}

#[test]
fn constraint_720_switches_at_a_keyframe_with_continuity() {
    let mut net = Net::new(2);
    net.connect();
    net.media(Duration::from_millis(600), true);
    let a_l0 = net.clients[0].layers[0].0;
    let before = net.clients[1].received(a_l0).len();
    assert!(before > 5);
    let plis_before = net.clients[0].keyframe_requests.len();
    let switches_before = net.engine.stats().layer_switches;
    net.engine.set_receiver_constraints(
        (CONF, "ep2"),
        ReceiverConstraints {
            constraints: [("ep1-v0".to_string(), 720)].into_iter().collect(),
            ..Default::default()
        },
    );
    net.media(Duration::from_millis(1000), true);
    // The bridge asked ep1 for a keyframe on the top layer.
    let new_plis = &net.clients[0].keyframe_requests[plis_before..];
    assert!(
        new_plis.contains(&Some(Rid::from("l2"))),
        "PLIs: {new_plis:?}"
    );
    assert!(net.engine.stats().layer_switches > switches_before);
    let got = net.clients[1].received(a_l0);
    let layers: Vec<u8> = got.iter().map(|p| p.payload[p.payload.len() - 2]).collect();
    let first2 = layers
        .iter()
        .position(|l| *l == 2)
        .expect("switched to layer 2");
    assert!(layers[..first2].iter().all(|l| *l == 0));
    assert!(layers[first2..].iter().all(|l| *l == 2), "{layers:?}");
    // The first layer-2 packet is a keyframe.
    assert!(starts_keyframe(VideoCodec::Vp8, &got[first2].payload));
    assert_eq!(vp8_keyframe_height(&got[first2].payload), Some(720));
    // Continuity of seq, timestamp, picture id and TL0PICIDX across the switch.
    let seqs: Vec<u64> = got.iter().map(|p| *p.seq_no).collect();
    assert_consecutive(&seqs, "video");
    for w in got.windows(2) {
        let dt = w[1].header.timestamp.wrapping_sub(w[0].header.timestamp);
        assert!(dt > 0 && dt < 90_000, "timestamp step {dt}");
        let (p0, t0) = vp8_pid_tl0(&w[0].payload);
        let (p1, t1) = vp8_pid_tl0(&w[1].payload);
        assert_eq!(p1, (p0 + 1) & 0x7fff, "picture id");
        assert_eq!(t1, t0.wrapping_add(1), "tl0picidx");
    }
    // ForwardedSources did not change (still ep1-v0).
    assert_eq!(
        net.events
            .iter()
            .filter(
                |e| matches!(e, EngineEvent::ForwardedSources { endpoint, .. } if endpoint == "ep2")
            )
            .count(),
        1
    );
}

#[test]
fn last_n_zero_stops_video_but_not_audio() {
    let mut net = Net::new(2);
    net.connect();
    net.engine.set_receiver_constraints(
        (CONF, "ep2"),
        ReceiverConstraints {
            last_n: Some(0),
            ..Default::default()
        },
    );
    net.media(Duration::from_millis(500), true);
    let (a_l0, a_audio) = (net.clients[0].layers[0].0, net.clients[0].audio);
    assert!(net.clients[1].received(a_l0).is_empty());
    assert!(!net.clients[1].received(a_audio).is_empty());
    assert!(
        !net.clients[0]
            .received(net.clients[1].layers[0].0)
            .is_empty()
    );
    assert!(net.events.iter().any(|e| matches!(e,
        EngineEvent::ForwardedSources { endpoint, sources, .. } if endpoint == "ep2" && sources.is_empty())));
}

#[test]
fn nack_is_answered_from_the_rtx_cache() {
    let mut net = Net::new(2);
    net.connect();
    net.media(Duration::from_millis(300), true);
    let (a_l0, a_rtx0) = net.clients[0].layers[0];
    let b_addr = net.clients[1].addr;
    // Lose every 7th RTP packet from the engine to ep2 for a while.
    let mut n = 0u32;
    net.deliver_to_client = Box::new(move |t, _| {
        let rtp = t.data.len() >= 12 && t.data[0] >> 6 == 2 && !(192..=223).contains(&t.data[1]);
        if t.to != b_addr || !rtp {
            return true;
        }
        n += 1;
        !n.is_multiple_of(7)
    });
    net.media(Duration::from_millis(1000), true);
    net.deliver_to_client = Box::new(|_, _| true);
    net.media(Duration::from_millis(500), true);
    assert!(net.engine.stats().retransmissions > 0);
    let b = &net.clients[1];
    assert!(
        b.raw_rx_ssrcs.contains(&a_rtx0),
        "ep2 got retransmissions on the RTX SSRC it was told about"
    );
    let mut seqs: Vec<u64> = b.received(a_l0).iter().map(|p| *p.seq_no).collect();
    seqs.sort();
    seqs.dedup();
    assert_consecutive(&seqs, "video after repair");
}

/// RTP (not RTCP, STUN or DTLS).
fn is_rtp_packet(d: &[u8]) -> bool {
    d.len() >= 12 && d[0] >> 6 == 2 && !(192..=223).contains(&d[1])
}

#[test]
fn senders_get_transport_cc_receiver_reports_and_sender_reports_they_can_parse() {
    use str0m::rtp::rtcp::Rtcp;
    let mut net = Net::new(2);
    net.connect();
    net.media(Duration::from_millis(2500), true);
    let a = &net.clients[0];
    let twcc: Vec<_> = a
        .rtcp_rx
        .iter()
        .filter_map(|r| match r {
            Rtcp::Twcc(t) => Some(t),
            _ => None,
        })
        .collect();
    assert!(
        twcc.len() >= 20,
        "transport-cc every 100 ms: {}",
        twcc.len()
    );
    assert!(twcc.iter().all(|t| t.status_count > 0));
    // Consecutive feedbacks: each starts where the previous ended.
    for w in twcc.windows(2) {
        assert_eq!(
            w[1].base_seq,
            w[0].base_seq.wrapping_add(w[0].status_count),
            "feedback ranges are contiguous"
        );
    }
    let reported: Vec<u32> = a
        .rtcp_rx
        .iter()
        .filter_map(|r| match r {
            Rtcp::ReceiverReport(rr) => {
                Some(rr.reports.iter().map(|b| *b.ssrc).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect();
    for ssrc in [a.audio, a.layers[0].0, a.layers[2].0] {
        assert!(reported.contains(&ssrc), "RR about {ssrc}: {reported:?}");
    }
    let b_layer = net.clients[1].layers[0].0;
    let srs = a
        .rtcp_rx
        .iter()
        .filter(|r| matches!(r, Rtcp::SenderReport(_)))
        .count();
    assert!(
        srs >= 2,
        "sender reports for what ep1 receives (from {b_layer}'s source)"
    );
}

#[test]
fn upstream_losses_are_nacked_and_repaired() {
    use str0m::rtp::rtcp::Rtcp;
    let mut net = Net::new(2);
    net.connect();
    net.media(Duration::from_millis(300), true);
    let a_addr = net.clients[0].addr;
    let (a_l0, _) = net.clients[0].layers[0];
    // Lose every 4th packet of ep1's lowest layer (the one ep2 gets) for a second.
    let mut n = 0u32;
    net.deliver_to_engine = Box::new(move |from, d| {
        if from != a_addr
            || !is_rtp_packet(d)
            || u32::from_be_bytes([d[8], d[9], d[10], d[11]]) != a_l0
        {
            return true;
        }
        n += 1;
        !n.is_multiple_of(4)
    });
    net.media(Duration::from_millis(1000), true);
    net.deliver_to_engine = Box::new(|_, _| true);
    net.media(Duration::from_millis(500), true);
    let nacked = net.clients[0]
        .rtcp_rx
        .iter()
        .any(|r| matches!(r, Rtcp::Nack(n) if *n.ssrc == a_l0));
    assert!(nacked, "the bridge NACKed ep1's lost packets");
    let mut seqs: Vec<u64> = net.clients[1]
        .received(a_l0)
        .iter()
        .map(|p| *p.seq_no)
        .collect();
    seqs.sort();
    seqs.dedup();
    assert_consecutive(&seqs, "ep1's video at ep2 after upstream repair");
}

#[test]
fn nacks_after_a_layer_switch_are_answered_with_the_switched_stream() {
    let mut net = Net::new(2);
    net.connect();
    net.media(Duration::from_millis(400), true);
    net.engine.set_receiver_constraints(
        (CONF, "ep2"),
        ReceiverConstraints {
            constraints: [("ep1-v0".to_string(), 720)].into_iter().collect(),
            ..Default::default()
        },
    );
    net.media(Duration::from_millis(600), true);
    let switches = net.engine.stats().layer_switches;
    assert!(switches > 0);
    let (a_l0, a_rtx0) = net.clients[0].layers[0];
    let b_addr = net.clients[1].addr;
    // Lose every 5th RTP packet to ep2 for a while: the repairs come from ep1's top layer,
    // through the offsets of the switch.
    let mut n = 0u32;
    net.deliver_to_client = Box::new(move |t, _| {
        if t.to != b_addr || !is_rtp_packet(&t.data) {
            return true;
        }
        n += 1;
        !n.is_multiple_of(5)
    });
    net.media(Duration::from_millis(800), true);
    net.deliver_to_client = Box::new(|_, _| true);
    net.media(Duration::from_millis(400), true);
    assert!(net.engine.stats().retransmissions > 0);
    assert!(net.clients[1].raw_rx_ssrcs.contains(&a_rtx0));
    let got = net.clients[1].received(a_l0);
    let mut seqs: Vec<u64> = got.iter().map(|p| *p.seq_no).collect();
    seqs.sort();
    seqs.dedup();
    assert_consecutive(&seqs, "layer 2 video after repair");
    // Repaired packets carry the top layer's payload with this stream's picture ids.
    let mut by_seq: Vec<&RtpPacket> = got.to_vec();
    by_seq.sort_by_key(|p| *p.seq_no);
    by_seq.dedup_by_key(|p| *p.seq_no);
    let tail: Vec<&&RtpPacket> = by_seq.iter().rev().take(30).collect();
    assert!(tail.iter().all(|p| p.payload[p.payload.len() - 2] == 2));
    for w in tail.windows(2) {
        let (p1, _) = vp8_pid_tl0(&w[0].payload);
        let (p0, _) = vp8_pid_tl0(&w[1].payload);
        assert!(
            p1 == p0 || p1 == (p0 + 1) & 0x7fff,
            "picture ids {p0} -> {p1}"
        );
    }
}

#[test]
fn a_receivers_pli_becomes_a_keyframe_request_to_the_sender() {
    let mut net = Net::new(2);
    net.connect();
    net.media(Duration::from_millis(600), true);
    let a_l0 = net.clients[0].layers[0].0;
    let before = net.clients[0].keyframe_requests.len();
    // ep2's decoder lost track of ep1's video: PLI on the SSRC it receives it on.
    net.clients[1]
        .rtc
        .direct_api()
        .stream_rx(&a_l0.into())
        .expect("ep2 receives ep1's video")
        .request_keyframe(str0m::media::KeyframeRequestKind::Pli);
    net.media(Duration::from_millis(200), true);
    assert!(net.engine.stats().receiver_keyframe_requests >= 1);
    let new = &net.clients[0].keyframe_requests[before..];
    assert!(
        new.contains(&Some(Rid::from("l0"))),
        "ep1 was asked for a keyframe on the layer ep2 gets: {new:?}"
    );
}

#[test]
fn garbage_is_dropped_and_counted() {
    let mut net = Net::new(2);
    net.connect();
    net.media(Duration::from_millis(200), true);
    let now = net.now;
    let stranger: SocketAddr = "127.0.0.1:6666".parse().unwrap();
    let to = engine_addr();
    let before = net.engine.stats().dropped_datagrams;
    let mut seed = 0x1234_5678u32;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let mut sent = 0;
    for len in [0usize, 1, 2, 11, 12, 19, 20, 21, 100, 1500] {
        for _ in 0..20 {
            let data: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
            net.engine.handle_datagram(now, stranger, to, &data);
            sent += 1;
        }
    }
    // Truncated STUN binding request with a known ufrag.
    let mut stun = vec![0x00, 0x01, 0x00, 0x20, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[7; 12]);
    stun.extend_from_slice(&[0x00, 0x06, 0x00, 0x0b]);
    stun.extend_from_slice(b"brep1:xx");
    net.engine.handle_datagram(now, stranger, to, &stun);
    // A complete one with a known ufrag but no integrity.
    let mut stun2 = vec![0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
    stun2.extend_from_slice(&[7; 12]);
    stun2.extend_from_slice(&[0x00, 0x06, 0x00, 0x08]);
    stun2.extend_from_slice(b"brep1:xx");
    net.engine.handle_datagram(now, stranger, to, &stun2);
    // Unknown ufrag.
    let mut stun3 = stun2.clone();
    stun3[24..28].copy_from_slice(b"nope");
    net.engine.handle_datagram(now, stranger, to, &stun3);
    // RTP and DTLS from an unknown address.
    let mut rtp = vec![0x80, 100, 0, 1, 0, 0, 0, 1, 0, 0, 0, 111];
    rtp.extend_from_slice(&[0; 40]);
    net.engine.handle_datagram(now, stranger, to, &rtp);
    net.engine
        .handle_datagram(now, stranger, to, &[22, 254, 253, 0, 0]);
    sent += 5;
    let after = net.engine.stats().dropped_datagrams;
    assert_eq!(after - before, sent, "every stray datagram is dropped");
    // Garbage from a known address reaches that endpoint's Rtc, which survives it.
    let a_addr = net.clients[0].addr;
    for len in [1usize, 12, 13, 40, 200] {
        let data: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
        net.engine.handle_datagram(now, a_addr, to, &data);
        net.engine
            .handle_datagram(now, a_addr, to, &rtp[..len.min(rtp.len())]);
    }
    let got_before = net.clients[1].received(net.clients[0].audio).len();
    net.media(Duration::from_millis(300), true);
    assert!(net.clients[1].received(net.clients[0].audio).len() > got_before + 5);
}

#[test]
fn fast_path_rejects_forged_replayed_and_malformed_rtp() {
    let mut net = Net::new(2);
    net.connect();
    net.media(Duration::from_millis(200), true);
    let a_addr = net.clients[0].addr;
    let a_audio = net.clients[0].audio;
    let (a_l0, a_rtx0) = net.clients[0].layers[0];
    // Keep a copy of ep1's real SRTP packets as they go by.
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::<Vec<u8>>::new()));
    let keep = seen.clone();
    net.deliver_to_engine = Box::new(move |from, d| {
        if from == a_addr && is_rtp_packet(d) {
            keep.borrow_mut().push(d.to_vec());
        }
        true
    });
    net.media(Duration::from_millis(200), true);
    net.deliver_to_engine = Box::new(|_, _| true);
    let now = net.now;
    let to = engine_addr();
    let before = net.engine.stats().dropped_datagrams;
    let got = net.clients[1].received(a_audio).len();
    // Replays of authentic packets.
    let replays: Vec<Vec<u8>> = seen.borrow().iter().take(20).cloned().collect();
    assert!(!replays.is_empty());
    for d in &replays {
        net.engine.handle_datagram(now, a_addr, to, d);
    }
    // Forged packets on the endpoint's own SSRCs (they reach decryption), with every kind of
    // header damage, and truncations of a real packet.
    let mut seed = 0x9e37_79b9u32;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let mut forged = 0;
    for ssrc in [a_audio, a_l0, a_rtx0] {
        for len in [12usize, 13, 16, 20, 28, 29, 40, 100, 1200] {
            let mut d: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
            d[0] = 0x80 | (d[0] & 0x3f); // V=2, random P/X/CC
            d[1] &= 0x7f;
            if (64..=95).contains(&d[1]) {
                d[1] = 100;
            }
            d[8..12].copy_from_slice(&ssrc.to_be_bytes());
            net.engine.handle_datagram(now, a_addr, to, &d);
            forged += 1;
        }
    }
    let real = replays[0].clone();
    for n in 12..real.len() {
        net.engine.handle_datagram(now, a_addr, to, &real[..n]);
    }
    let dropped = net.engine.stats().dropped_datagrams - before;
    assert!(
        dropped >= replays.len() as u64 + forged,
        "replayed and forged packets are dropped and counted ({dropped})"
    );
    net.pump();
    assert_eq!(
        net.clients[1].received(a_audio).len(),
        got,
        "nothing of it was forwarded"
    );
    // And media keeps flowing.
    net.media(Duration::from_millis(300), true);
    assert!(net.clients[1].received(a_audio).len() > got + 5);
}

#[test]
fn removing_an_endpoint_stops_its_media() {
    let mut net = Net::new(3);
    net.connect();
    net.media(Duration::from_millis(300), false);
    net.engine.remove_endpoint((CONF, "ep1"));
    assert_eq!(net.engine.stats().endpoints, 2);
    let a_audio = net.clients[0].audio;
    let got = net.clients[1].received(a_audio).len();
    net.media(Duration::from_millis(300), false);
    assert_eq!(net.clients[1].received(a_audio).len(), got);
    // The others still hear each other.
    let c_audio = net.clients[2].audio;
    let got_c = net.clients[1].received(c_audio).len();
    net.media(Duration::from_millis(200), false);
    assert!(net.clients[1].received(c_audio).len() > got_c);
    net.engine.remove_conference(CONF);
    let s = net.engine.stats();
    assert_eq!((s.endpoints, s.conferences), (0, 0));
}

#[test]
fn silent_client_is_reported_disconnected() {
    let mut net = Net::new(2);
    net.connect();
    net.media(Duration::from_millis(200), false);
    // ep1 vanishes from the network.
    net.clients.remove(0);
    net.advance(Duration::from_secs(30));
    assert!(
        net.events.iter().any(|e| matches!(e,
            EngineEvent::Disconnected { endpoint, .. } if endpoint == "ep1")),
        "{:?}",
        net.events
    );
    assert!(!net.events.iter().any(|e| matches!(e,
        EngineEvent::Disconnected { endpoint, .. } if endpoint == "ep2")));
}

#[test]
fn removed_source_is_no_longer_forwarded() {
    let mut net = Net::new(2);
    net.connect();
    net.media(Duration::from_millis(600), true);
    let a_l0 = net.clients[0].layers[0].0;
    assert!(!net.clients[1].received(a_l0).is_empty());
    // ep1 stops its camera: only the mic remains in its sources.
    let mut s = net.clients[0].sources();
    s.media_sources.retain(|m| m.kind == MediaType::Audio);
    net.engine.set_sources((CONF, "ep1"), &s);
    let got = net.clients[1].received(a_l0).len();
    net.media(Duration::from_millis(300), true);
    assert_eq!(net.clients[1].received(a_l0).len(), got);
    assert!(net.events.iter().any(|e| matches!(e,
        EngineEvent::ForwardedSources { endpoint, sources, .. } if endpoint == "ep2" && sources.is_empty())));
}

fn speaker_events(events: &[EngineEvent]) -> Vec<(String, Vec<String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::DominantSpeaker {
                endpoint,
                previous,
                silence,
                ..
            } => {
                assert!(!silence);
                Some((endpoint.clone(), previous.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn dominant_speaker_follows_who_talks() {
    let mut net = Net::new(3);
    net.connect();
    net.client("ep1").voice = Voice::Talking;
    net.client("ep2").voice = Voice::Silent;
    net.client("ep3").voice = Voice::Silent;
    net.media(Duration::from_millis(2000), false);
    let ev = speaker_events(&net.events);
    assert_eq!(ev, [("ep1".to_string(), vec![])]);
    assert_eq!(net.engine.recent_speakers(CONF), ["ep1"]);
    // ep2 starts talking, ep1 stops.
    net.client("ep1").voice = Voice::Silent;
    net.client("ep2").voice = Voice::Talking;
    net.media(Duration::from_millis(3000), false);
    let ev = speaker_events(&net.events);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[1], ("ep2".to_string(), vec!["ep1".to_string()]));
    // Both talk: no flapping (ep2 stays).
    net.client("ep1").voice = Voice::Talking;
    net.media(Duration::from_millis(2000), false);
    assert_eq!(speaker_events(&net.events).len(), 2);
    assert_eq!(net.engine.stats().dominant_speaker_changes, 2);
    // The dominant speaker leaves: the list shrinks and is announced.
    net.engine.remove_endpoint((CONF, "ep2"));
    net.pump();
    let ev = speaker_events(&net.events);
    assert_eq!(ev.last().unwrap(), &("ep1".to_string(), vec![]));
    net.engine.remove_endpoint((CONF, "ep1"));
    net.pump();
    assert!(
        net.events
            .iter()
            .any(|e| matches!(e, EngineEvent::SpeakersCleared { .. }))
    );
    assert!(net.engine.recent_speakers(CONF).is_empty());
}

#[test]
fn the_dominant_speaker_comes_first_for_last_n() {
    let mut net = Net::new(3);
    net.connect();
    net.engine.set_receiver_constraints(
        (CONF, "ep1"),
        ReceiverConstraints {
            last_n: Some(1),
            ..Default::default()
        },
    );
    net.media(Duration::from_millis(600), true);
    // Join order first: ep2.
    let (l2, l3) = (net.clients[1].layers[0].0, net.clients[2].layers[0].0);
    assert!(!net.clients[0].received(l2).is_empty());
    assert!(net.clients[0].received(l3).is_empty());
    net.client("ep2").voice = Voice::Silent;
    net.client("ep3").voice = Voice::Talking;
    net.media(Duration::from_millis(3000), true);
    assert_eq!(net.engine.recent_speakers(CONF)[0], "ep3");
    assert!(net.events.iter().any(|e| matches!(e,
        EngineEvent::ForwardedSources { endpoint, sources, .. }
            if endpoint == "ep1" && sources == &["ep3-v0".to_string()])));
    assert!(!net.clients[0].received(l3).is_empty());
}

#[test]
fn silence_is_dropped_and_sequence_numbers_stay_continuous() {
    let mut net = Net::new(2);
    net.connect();
    let a_audio = net.clients[0].audio;
    // 10 loud, 30 silent, 10 loud packets from ep1; ep2 stays quiet on its own.
    net.client("ep2").voice = Voice::Silent;
    let levels: Vec<i8> = [vec![-30i8; 10], vec![-127; 30], vec![-30; 10]].concat();
    for l in levels {
        let now = net.now;
        net.clients[0].send_audio(now, l);
        let level = net.clients[1].next_level();
        net.clients[1].send_audio(now, level);
        net.advance(Duration::from_millis(20));
    }
    net.advance(Duration::from_millis(100));
    let got = net.clients[1].received(a_audio);
    let got_levels: Vec<i8> = got
        .iter()
        .map(|p| p.header.ext_vals.audio_level.unwrap())
        .collect();
    assert_eq!(got.len(), 10 + 4 + 10, "{got_levels:?}");
    assert_eq!(got_levels[10..14], [-127; 4]);
    let seqs: Vec<u64> = got.iter().map(|p| *p.seq_no).collect();
    assert_consecutive(&seqs, "audio");
    // ep2's silence beyond the first 4 packets never reached ep1.
    assert_eq!(net.clients[0].received(net.clients[1].audio).len(), 4);
    assert_eq!(net.engine.stats().silence_dropped, 26 + 46);
}

#[test]
fn connectivity_follows_packet_flow() {
    let mut net = Net::new(2);
    // An endpoint whose client never shows up.
    net.engine.add_endpoint(
        CONF,
        "ghost",
        "brghost",
        "bridgepasswordghostxxxxxxxx",
        false,
        false,
        &[],
        net.now,
    );
    net.connect();
    net.media(Duration::from_millis(200), false);
    let status = |events: &[EngineEvent], who: &str| -> Vec<bool> {
        events
            .iter()
            .filter_map(|e| match e {
                EngineEvent::Connected { endpoint, .. } if endpoint == who => Some(true),
                EngineEvent::Disconnected { endpoint, .. } if endpoint == who => Some(false),
                _ => None,
            })
            .collect()
    };
    assert_eq!(status(&net.events, "ep1"), [true]);
    assert_eq!(status(&net.events, "ghost"), Vec::<bool>::new());
    // ep1 drops off the network for 9 s: inactive after 8 s, the others stay active.
    net.client("ep1").paused = true;
    net.media(Duration::from_millis(7000), false);
    assert_eq!(status(&net.events, "ep1"), [true]);
    net.media(Duration::from_millis(2000), false);
    assert_eq!(status(&net.events, "ep1"), [true, false]);
    assert_eq!(status(&net.events, "ep2"), [true]);
    // The ghost never connected: announced inactive once, 15 s after creation.
    net.media(Duration::from_millis(7000), false);
    assert_eq!(status(&net.events, "ghost"), [false]);
    // ep1 is back.
    net.client("ep1").paused = false;
    net.media(Duration::from_millis(3000), false);
    assert_eq!(status(&net.events, "ep1"), [true, false, true]);
    assert_eq!(status(&net.events, "ghost"), [false]);
}

fn maps(events: &[EngineEvent], who: &str, kind: MediaType) -> Vec<Vec<MappedSource>> {
    events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::SourcesMap {
                endpoint,
                kind: k,
                sources,
                ..
            } if endpoint == who && *k == kind => Some(sources.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_late_rewriting_joiner_gets_each_source_on_one_slot() {
    // ep3 joins while the others already send: its slots are bound once (an endpoint built
    // first with default medias and rebuilt with the offered ones got two sets of mappings,
    // and the web app showed every remote video twice, once dead).
    let mut net = Net::build(3, &["ep3"], EngineConfig::default());
    net.connect();
    net.media(Duration::from_millis(1000), true);
    for kind in [MediaType::Video, MediaType::Audio] {
        let mut seen: HashMap<String, u32> = HashMap::new();
        for map in maps(&net.events, "ep3", kind) {
            for m in map {
                let first = *seen.entry(m.source.clone()).or_insert(m.ssrc);
                assert_eq!(first, m.ssrc, "{} mapped to two SSRCs", m.source);
            }
        }
        assert_eq!(seen.len(), 2, "{kind:?}");
    }
}

#[test]
fn ssrc_rewriting_forwards_on_announced_slots() {
    let mut net = Net::build(3, &["ep1"], EngineConfig::default());
    net.connect();
    net.media(Duration::from_millis(1000), true);
    let video = maps(&net.events, "ep1", MediaType::Video);
    let last = video.last().expect("a VideoSourcesMap");
    let mut names: Vec<(&str, &str)> = last
        .iter()
        .map(|m| (m.owner.as_str(), m.source.as_str()))
        .collect();
    names.sort();
    assert_eq!(names, [("ep2", "ep2-v0"), ("ep3", "ep3-v0")]);
    assert!(
        last.iter()
            .all(|m| m.rtx.is_some() && m.video_type == "CAMERA")
    );
    let audio = maps(&net.events, "ep1", MediaType::Audio);
    let last_audio = audio.last().expect("an AudioSourcesMap");
    assert_eq!(last_audio.len(), 2);
    assert!(last_audio.iter().all(|m| m.rtx.is_none()));
    // Everything ep1 gets rides on slot SSRCs, none of them a sender's.
    let senders: Vec<u32> = net.clients[1..]
        .iter()
        .flat_map(|c| std::iter::once(c.audio).chain(c.layers.iter().flat_map(|l| [l.0, l.1])))
        .collect();
    let c1 = &net.clients[0];
    assert!(!c1.rtp.is_empty());
    for p in &c1.rtp {
        assert!(!senders.contains(&p.header.ssrc), "sender SSRC leaked");
        assert!(c1.mapped.contains_key(&p.header.ssrc));
    }
    for m in last.iter().chain(last_audio) {
        let got = c1.received(m.ssrc);
        assert!(got.len() >= 15, "{} got {}", m.source, got.len());
        let seqs: Vec<u64> = got.iter().map(|p| *p.seq_no).collect();
        assert_consecutive(&seqs, &m.source);
    }
    // Video on ep2-v0's slot is ep2's.
    let slot = last.iter().find(|m| m.owner == "ep2").unwrap().ssrc;
    assert!(
        c1.received(slot)
            .iter()
            .all(|p| p.payload[p.payload.len() - 3] == 2)
    );
    // The others still get the senders' own SSRCs and no maps.
    assert!(
        !net.clients[1]
            .received(net.clients[0].layers[0].0)
            .is_empty()
    );
    assert!(!net.clients[1].received(net.clients[2].audio).is_empty());
    assert!(maps(&net.events, "ep2", MediaType::Video).is_empty());
}

#[test]
fn ssrc_rewriting_remaps_a_full_pool_with_continuity() {
    let cfg = EngineConfig {
        rewrite_video_slots: 1,
        ..EngineConfig::default()
    };
    let mut net = Net::build(3, &["ep1"], cfg);
    net.connect();
    net.engine.set_receiver_constraints(
        (CONF, "ep1"),
        ReceiverConstraints {
            last_n: Some(1),
            ..Default::default()
        },
    );
    net.client("ep3").voice = Voice::Silent;
    net.client("ep2").voice = Voice::Talking;
    net.media(Duration::from_millis(1500), true);
    let video = maps(&net.events, "ep1", MediaType::Video);
    let first = video.last().unwrap().clone();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].source, "ep2-v0");
    let slot = first[0].ssrc;
    // ep3 becomes the dominant speaker: lastN 1 now means ep3-v0, on the same slot.
    net.client("ep2").voice = Voice::Silent;
    net.client("ep3").voice = Voice::Talking;
    net.media(Duration::from_millis(3000), true);
    assert_eq!(net.engine.recent_speakers(CONF)[0], "ep3");
    let video = maps(&net.events, "ep1", MediaType::Video);
    let now = video.last().unwrap();
    assert_eq!(now.len(), 1);
    assert_eq!((now[0].source.as_str(), now[0].ssrc), ("ep3-v0", slot));
    assert_eq!(net.clients[0].mapped[&slot].0, "ep3");
    let got = net.clients[0].received(slot);
    let owners: Vec<u8> = got.iter().map(|p| p.payload[p.payload.len() - 3]).collect();
    let switch = owners
        .iter()
        .position(|o| *o == 3)
        .expect("ep3's video on the slot");
    assert!(owners[..switch].iter().all(|o| *o == 2));
    assert!(owners[switch..].iter().all(|o| *o == 3), "{owners:?}");
    assert!(starts_keyframe(VideoCodec::Vp8, &got[switch].payload));
    let seqs: Vec<u64> = got.iter().map(|p| *p.seq_no).collect();
    assert_consecutive(&seqs, "slot");
    for w in got.windows(2) {
        let dt = w[1].header.timestamp.wrapping_sub(w[0].header.timestamp);
        assert!(dt > 0 && dt < 90_000, "timestamp step {dt}");
        let (p0, _) = vp8_pid_tl0(&w[0].payload);
        let (p1, _) = vp8_pid_tl0(&w[1].payload);
        assert_eq!(p1, (p0 + 1) & 0x7fff, "picture id");
    }
}

/// As JVB: a receiver with SSRC rewriting gets slots for every video source while there are
/// slots, not only for what lastN forwards, so the app has a track for everyone and shows
/// those outside last-N as such.
#[test]
fn ssrc_rewriting_maps_sources_outside_last_n() {
    let mut net = Net::build(3, &["ep1"], EngineConfig::default());
    net.connect();
    net.engine.set_receiver_constraints(
        (CONF, "ep1"),
        ReceiverConstraints {
            last_n: Some(1),
            ..Default::default()
        },
    );
    net.client("ep3").voice = Voice::Silent;
    net.client("ep2").voice = Voice::Talking;
    net.media(Duration::from_millis(1500), true);
    let map = maps(&net.events, "ep1", MediaType::Video)
        .last()
        .unwrap()
        .clone();
    let mut names: Vec<&str> = map.iter().map(|m| m.source.as_str()).collect();
    names.sort();
    assert_eq!(names, ["ep2-v0", "ep3-v0"]);
    assert_eq!(forwarded(&net.events, "ep1").unwrap(), ["ep2-v0"]);
    // Each mapping is announced once (as JVB): the same SSRC twice while the client is still
    // renegotiating the first would become a second remote track in lib-jitsi-meet.
    let mut announced: Vec<String> = net
        .events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::SourcesMap {
                endpoint,
                kind: MediaType::Video,
                changed,
                ..
            } if endpoint == "ep1" => Some(changed.iter().map(|m| m.source.clone())),
            _ => None,
        })
        .flatten()
        .collect();
    announced.sort();
    assert_eq!(announced, ["ep2-v0", "ep3-v0"]);
    let ep3 = map.iter().find(|m| m.source == "ep3-v0").unwrap().ssrc;
    assert!(
        net.clients[0].received(ep3).is_empty(),
        "ep3-v0 is outside lastN"
    );
}

/// As JVB's SSRC cache: a source that leaves takes its slot along, and the next one gets a new
/// SSRC (a new remote track in lib-jitsi-meet) instead of the departed one's.
#[test]
fn ssrc_rewriting_gives_a_new_ssrc_after_a_departure() {
    // One slot: ep3-v0 (outside lastN) has none until ep2 leaves.
    let cfg = EngineConfig {
        rewrite_video_slots: 1,
        ..EngineConfig::default()
    };
    let mut net = Net::build(3, &["ep1"], cfg);
    net.connect();
    net.engine.set_receiver_constraints(
        (CONF, "ep1"),
        ReceiverConstraints {
            last_n: Some(1),
            ..Default::default()
        },
    );
    net.client("ep3").voice = Voice::Silent;
    net.client("ep2").voice = Voice::Talking;
    net.media(Duration::from_millis(1500), true);
    let first = maps(&net.events, "ep1", MediaType::Video)
        .last()
        .unwrap()
        .clone();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].source, "ep2-v0");
    net.engine.remove_endpoint((CONF, "ep2"));
    net.media(Duration::from_millis(1500), true);
    let now = maps(&net.events, "ep1", MediaType::Video)
        .last()
        .unwrap()
        .clone();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].source, "ep3-v0");
    assert_ne!(
        now[0].ssrc, first[0].ssrc,
        "ep3-v0 must not inherit ep2-v0's SSRC"
    );
    assert!(!net.clients[0].received(now[0].ssrc).is_empty());
}

fn sender_constraints(events: &[EngineEvent], who: &str, source: &str) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::SenderSourceConstraints {
                endpoint,
                source: s,
                max_height,
                ..
            } if endpoint == who && s == source => Some(*max_height),
            _ => None,
        })
        .collect()
}

fn forwarded(events: &[EngineEvent], who: &str) -> Option<Vec<String>> {
    events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::ForwardedSources {
                endpoint, sources, ..
            } if endpoint == who => Some(sources.clone()),
            _ => None,
        })
        .next_back()
}

#[test]
fn sender_source_constraints_are_the_largest_effective_height() {
    let mut net = Net::new(3);
    net.connect();
    net.media(Duration::from_millis(300), true);
    // Nobody has sent constraints: everyone wants everything at the default 180.
    for who in ["ep1", "ep2", "ep3"] {
        let src = format!("{who}-v0");
        assert_eq!(sender_constraints(&net.events, who, &src), [180], "{who}");
    }
    assert_eq!(
        net.engine.sender_source_constraints((CONF, "ep1")),
        [("ep1-v0".to_string(), Some(180))]
    );
    let set = |net: &mut Net, who: &str, c: ReceiverConstraints| {
        net.engine.set_receiver_constraints((CONF, who), c);
        net.pump();
    };
    // ep2 wants ep1's camera at 720.
    let c720 = ReceiverConstraints {
        constraints: [("ep1-v0".to_string(), 720)].into_iter().collect(),
        ..Default::default()
    };
    set(&mut net, "ep2", c720.clone());
    // Unlimited (−1) is announced as lib-jitsi-meet's maximum.
    let unlimited = ReceiverConstraints {
        constraints: [("ep1-v0".to_string(), -1)].into_iter().collect(),
        ..Default::default()
    };
    set(&mut net, "ep2", unlimited);
    // ep2 goes audio-only: ep3's default 180 remains.
    set(
        &mut net,
        "ep2",
        ReceiverConstraints {
            last_n: Some(0),
            ..c720
        },
    );
    // ep3 wants nothing by default: nobody needs ep1's camera.
    set(
        &mut net,
        "ep3",
        ReceiverConstraints {
            default_max_height: Some(0),
            ..Default::default()
        },
    );
    assert_eq!(
        sender_constraints(&net.events, "ep1", "ep1-v0"),
        [180, 720, 2160, 180, 0]
    );
    // ep2's own camera is still wanted by ep1 (default) but no longer by ep3.
    assert_eq!(sender_constraints(&net.events, "ep2", "ep2-v0"), [180]);
    // The 0 took effect: ep1's video no longer reaches anyone (aggressive suspension is up
    // to the client, the bridge stops forwarding anyway).
    let l0 = net.clients[0].layers[0].0;
    let got = (
        net.clients[1].received(l0).len(),
        net.clients[2].received(l0).len(),
    );
    net.media(Duration::from_millis(300), true);
    assert_eq!(
        (
            net.clients[1].received(l0).len(),
            net.clients[2].received(l0).len()
        ),
        got
    );
    // ep3 selects ep1's camera at 360 again, then leaves: back to 0.
    set(
        &mut net,
        "ep3",
        ReceiverConstraints {
            default_max_height: Some(0),
            constraints: [("ep1-v0".to_string(), 360)].into_iter().collect(),
            selected: vec!["ep1-v0".into()],
            ..Default::default()
        },
    );
    net.engine.remove_endpoint((CONF, "ep3"));
    net.pump();
    assert_eq!(
        sender_constraints(&net.events, "ep1", "ep1-v0"),
        [180, 720, 2160, 180, 0, 360, 0]
    );
    // A source added later is announced at once.
    let mut s = net.clients[1].sources();
    let mut desk = s.media_sources[1].clone();
    desk.id = "ep2-v1".into();
    for x in &mut desk.sources {
        x.ssrc += 5000;
    }
    for g in &mut desk.ssrc_groups {
        for x in &mut g.ssrcs {
            *x += 5000;
        }
    }
    s.media_sources.push(desk);
    net.engine.set_sources((CONF, "ep2"), &s);
    net.pump();
    assert_eq!(sender_constraints(&net.events, "ep2", "ep2-v1"), [180]);
}

#[test]
fn a_lone_sender_is_told_nobody_needs_its_video() {
    let mut net = Net::new(1);
    net.connect();
    assert_eq!(sender_constraints(&net.events, "ep1", "ep1-v0"), [0]);
}

#[test]
fn video_type_from_the_channel_reaches_maps_and_allocation() {
    let mut net = Net::build(3, &["ep1"], EngineConfig::default());
    net.connect();
    // Declared before the source is known to matter: kept for the endpoint.
    net.engine
        .set_source_video_type((CONF, "ep3"), "ep3-v0", "desktop");
    net.media(Duration::from_millis(800), true);
    let video = maps(&net.events, "ep1", MediaType::Video);
    let last = video.last().expect("a VideoSourcesMap");
    let ty = |m: &[MappedSource], s: &str| {
        m.iter()
            .find(|x| x.source == s)
            .map(|x| x.video_type.clone())
    };
    assert_eq!(ty(last, "ep3-v0").as_deref(), Some("DESKTOP"));
    assert_eq!(ty(last, "ep2-v0").as_deref(), Some("CAMERA"));
    // A change is announced in a new map (same slot).
    let before = video.len();
    net.engine
        .set_source_video_type((CONF, "ep2"), "ep2-v0", "desktop_high_fps");
    net.pump();
    let video = maps(&net.events, "ep1", MediaType::Video);
    assert_eq!(video.len(), before + 1);
    assert_eq!(
        ty(video.last().unwrap(), "ep2-v0").as_deref(),
        Some("DESKTOP_HIGH_FPS")
    );
    net.engine
        .set_source_video_type((CONF, "ep2"), "ep2-v0", "camera");
    // Both selected, lastN 1: the screenshare wins over the camera (and over join order).
    net.engine.set_receiver_constraints(
        (CONF, "ep1"),
        ReceiverConstraints {
            last_n: Some(1),
            selected: vec!["ep2-v0".into(), "ep3-v0".into()],
            ..Default::default()
        },
    );
    net.pump();
    assert_eq!(
        forwarded(&net.events, "ep1"),
        Some(vec!["ep3-v0".to_string()])
    );
    // A source declared `none` sends nothing: it does not take ep2's only lastN slot.
    net.engine.set_receiver_constraints(
        (CONF, "ep2"),
        ReceiverConstraints {
            last_n: Some(1),
            ..Default::default()
        },
    );
    net.pump();
    assert_eq!(
        forwarded(&net.events, "ep2"),
        Some(vec!["ep1-v0".to_string()])
    );
    net.engine
        .set_source_video_type((CONF, "ep1"), "ep1-v0", "none");
    net.pump();
    assert_eq!(
        forwarded(&net.events, "ep2"),
        Some(vec!["ep3-v0".to_string()])
    );
    // Nobody needs it now.
    assert_eq!(
        sender_constraints(&net.events, "ep1", "ep1-v0").last(),
        Some(&0)
    );
    // Another endpoint cannot declare ep1's source.
    net.engine
        .set_source_video_type((CONF, "ep2"), "ep1-v0", "camera");
    net.pump();
    assert_eq!(
        forwarded(&net.events, "ep2"),
        Some(vec!["ep3-v0".to_string()])
    );
}

fn expired(events: &[EngineEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::Expired {
                endpoint, ufrag, ..
            } => Some((endpoint.clone(), ufrag.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn unconnected_and_silent_endpoints_expire() {
    let cfg = EngineConfig {
        expire_unconnected_after: Duration::from_secs(5),
        expire_inactive_after: Duration::from_secs(12),
        ..EngineConfig::default()
    };
    let mut net = Net::build(2, &[], cfg);
    net.engine.add_endpoint(
        CONF,
        "ghost",
        "brghost",
        "bridgepasswordghostxxxxxxxx",
        false,
        false,
        &[],
        net.now,
    );
    net.connect();
    net.media(Duration::from_millis(4500), true);
    assert!(expired(&net.events).is_empty());
    net.media(Duration::from_millis(1000), true);
    assert_eq!(
        expired(&net.events),
        [("ghost".to_string(), "brghost".to_string())]
    );
    assert_eq!(net.engine.stats().endpoints, 2);
    // ep1 drops off the network: inactive after 8 s, expired after 12 s.
    net.client("ep1").paused = true;
    net.media(Duration::from_millis(11_000), true);
    assert_eq!(expired(&net.events).len(), 1);
    net.media(Duration::from_millis(1500), true);
    assert_eq!(
        expired(&net.events)[1],
        ("ep1".to_string(), "brep1".to_string())
    );
    let s = net.engine.stats();
    assert_eq!((s.endpoints, s.conferences), (1, 1));
    assert_eq!(forwarded(&net.events, "ep2"), Some(vec![]));
    // ep2, sending all along, stays; later requests about ep1 are ignored.
    net.engine
        .set_sources((CONF, "ep1"), &net.clients[0].sources());
    net.media(Duration::from_millis(15_000), false);
    assert_eq!(expired(&net.events).len(), 2);
    assert_eq!(net.engine.stats().endpoints, 1);
}

/// (endpoint, estimate) of every ConnectionStats sent.
fn connection_stats(events: &[EngineEvent]) -> Vec<(String, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::ConnectionStats {
                endpoint,
                estimated_downlink_bps,
                ..
            } => Some((endpoint.clone(), *estimated_downlink_bps)),
            _ => None,
        })
        .collect()
}

#[test]
fn connection_stats_carry_the_bandwidth_estimate() {
    let cfg = EngineConfig {
        bwe_initial_bps: Some(1_000_000),
        ..EngineConfig::default()
    };
    let mut net = Net::build(2, &[], cfg);
    net.connect();
    net.media(Duration::from_millis(10_500), true);
    let stats = connection_stats(&net.events);
    assert_eq!(stats.len(), 2, "{stats:?}");
    assert!(stats.iter().all(|(_, bps)| *bps > 0), "{stats:?}");
    // Media still flows with the pacer in the path.
    let l0 = net.clients[0].layers[0].0;
    assert!(net.clients[1].received(l0).len() > 200);
    // The fast path (no str0m BWE): the estimate from the receivers' transport-cc feedback.
    let mut net = Net::new(2);
    net.connect();
    net.media(Duration::from_millis(10_500), true);
    let stats = connection_stats(&net.events);
    assert_eq!(stats.len(), 2, "{stats:?}");
    // What the bridge sends each receiver here (one layer of video plus audio) is tens of
    // kbit/s: the estimate is of that order (it never exceeds 1.5x what got through).
    assert!(
        stats
            .iter()
            .all(|(_, bps)| (30_000..5_000_000).contains(bps)),
        "{stats:?}"
    );
}

/// A policer on the path to `to`: a token bucket of `rate` bytes per second, `burst` deep;
/// what does not fit is lost.
fn police(to: SocketAddr, rate: f64, burst: f64) -> Box<ToClient> {
    let mut tokens = 0f64;
    let mut last: Option<Instant> = None;
    Box::new(move |t, now| {
        if t.to != to {
            return true;
        }
        let dt = last.map_or(0.0, |l| now.saturating_duration_since(l).as_secs_f64());
        last = Some(now);
        tokens = (tokens + dt * rate).min(burst);
        if tokens < t.data.len() as f64 {
            return false;
        }
        tokens -= t.data.len() as f64;
        true
    })
}

/// The layer (last payload byte but one) of the packets `c` got on `ssrc` since `from`.
fn layers_since(c: &Client, ssrc: u32, from: usize) -> Vec<u8> {
    c.received(ssrc)[from..]
        .iter()
        .map(|p| p.payload[p.payload.len() - 2])
        .collect()
}

#[test]
fn layers_follow_the_receivers_bandwidth_and_probing_finds_it_again() {
    bandwidth_scenario(false);
}

#[test]
fn with_ssrc_rewriting_layers_follow_the_bandwidth_too() {
    bandwidth_scenario(true);
}

/// ep2 asks for ep1's camera at 720p; its link then takes 800 kbit/s, then clears.
fn bandwidth_scenario(rewriting: bool) {
    let mut net = Net::build(
        2,
        if rewriting { &["ep2"] } else { &[] },
        EngineConfig::default(),
    );
    net.realistic_layers();
    net.connect();
    net.engine.set_receiver_constraints(
        (CONF, "ep2"),
        ReceiverConstraints {
            constraints: [("ep1-v0".to_string(), 720)].into_iter().collect(),
            ..Default::default()
        },
    );
    net.media(Duration::from_millis(3000), true);
    // The stream ep2 gets ep1's camera on (and its RTX): the sender's SSRCs, or a slot's.
    let (a_l0, a_rtx0) = if rewriting {
        let video = maps(&net.events, "ep2", MediaType::Video);
        let m = video
            .last()
            .and_then(|v| v.iter().find(|m| m.source == "ep1-v0"))
            .expect("ep1-v0 mapped for ep2");
        (m.ssrc, m.rtx.expect("an RTX slot"))
    } else {
        net.clients[0].layers[0]
    };
    // A clear path: the top layer.
    let seen = net.clients[1].received(a_l0).len();
    assert!(seen > 50);
    let got = layers_since(&net.clients[1], a_l0, seen - 20);
    assert!(got.iter().all(|l| *l == 2), "{got:?}");
    // The path to ep2 now takes 800 kbit/s (a policer: what is above is lost).
    net.deliver_to_client = police(net.clients[1].addr, 100_000.0, 20_000.0);
    net.media(Duration::from_millis(8000), true);
    let seen = net.clients[1].received(a_l0).len();
    net.media(Duration::from_millis(1000), true);
    let got = layers_since(&net.clients[1], a_l0, seen);
    assert!(got.len() > 20, "video still flows");
    assert!(got.iter().all(|l| *l == 1), "360p fits 800k: {got:?}");
    let est = net
        .engine
        .endpoints
        .values()
        .find(|e| e.id == "ep2")
        .and_then(|e| e.tx.sendside.estimate());
    assert!(est.is_some_and(|e| e < 1_200_000), "{est:?}");
    // Probing: padding above the 360p layer, up to the estimate.
    let probes = net.engine.stats().probe_packets;
    assert!(probes > 0);
    assert!(net.clients[1].raw_rx_ssrcs.contains(&a_rtx0));
    // The path clears: padding lets the estimate grow until the top layer fits again.
    net.deliver_to_client = Box::new(|_, _| true);
    let mut back = None;
    for s in 0..30 {
        let seen = net.clients[1].received(a_l0).len();
        net.media(Duration::from_millis(1000), true);
        let got = layers_since(&net.clients[1], a_l0, seen);
        if got.iter().rev().take(10).all(|l| *l == 2) {
            back = Some(s);
            break;
        }
    }
    let est = net
        .engine
        .endpoints
        .values()
        .find(|e| e.id == "ep2")
        .and_then(|e| e.tx.sendside.estimate());
    eprintln!(
        "back after {back:?} s, estimate {est:?}, probes {probes} then {}",
        net.engine.stats().probe_packets
    );
    assert!(
        back.is_some(),
        "top layer again after the path cleared; estimate {est:?}"
    );
    assert!(net.engine.stats().probe_packets > probes);
}

#[test]
fn a_packet_received_twice_is_forwarded_once() {
    let mut net = Net::new(2);
    net.connect();
    net.media(Duration::from_millis(300), true);
    let a_addr = net.clients[0].addr;
    let (a_l0, _) = net.clients[0].layers[0];
    // Hold back one of ep1's layer-0 packets: the engine NACKs it, ep1 repairs it as RTX.
    let held = std::rc::Rc::new(std::cell::RefCell::new(None::<Vec<u8>>));
    let keep = held.clone();
    net.deliver_to_engine = Box::new(move |from, d| {
        if from != a_addr || !is_rtp_packet(d) || d[8..12] != a_l0.to_be_bytes() {
            return true;
        }
        let mut h = keep.borrow_mut();
        if h.is_none() {
            *h = Some(d.to_vec());
            return false;
        }
        true
    });
    net.media(Duration::from_millis(600), true);
    net.deliver_to_engine = Box::new(|_, _| true);
    let dups = net.engine.stats().rtp_duplicates;
    // The original arrives late (authentic, never seen by SRTP): the engine has it already.
    let original = held.borrow().clone().expect("a packet was held back");
    let now = net.now;
    net.engine
        .handle_datagram(now, a_addr, engine_addr(), &original);
    net.pump();
    assert_eq!(net.engine.stats().rtp_duplicates, dups + 1);
    let seqs: Vec<u64> = net.clients[1]
        .received(a_l0)
        .iter()
        .map(|p| *p.seq_no)
        .collect();
    let mut unique = seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        seqs.len(),
        "a sequence number forwarded twice: {seqs:?}"
    );
    // The repair filled the gap (it came after its successors: reordered, not lost).
    assert_consecutive(&unique, "video");
}

#[test]
fn a_source_that_does_not_fit_is_held_back_and_comes_back_when_the_link_clears() {
    let mut net = Net::new(2);
    net.realistic_layers();
    net.connect();
    net.media(Duration::from_millis(3000), true);
    let a_l0 = net.clients[0].layers[0].0;
    assert_eq!(
        forwarded(&net.events, "ep2"),
        Some(vec!["ep1-v0".to_string()])
    );
    // 100 kbit/s to ep2: not even ep1's lowest layer (~200 kbit/s) fits.
    net.deliver_to_client = police(net.clients[1].addr, 12_500.0, 5_000.0);
    net.media(Duration::from_millis(8000), true);
    assert!(net.engine.stats().bwe_suspensions > 0);
    assert_eq!(
        forwarded(&net.events, "ep2"),
        Some(vec![]),
        "held back and announced"
    );
    let seen = net.clients[1].received(a_l0).len();
    net.media(Duration::from_millis(1000), true);
    assert_eq!(net.clients[1].received(a_l0).len(), seen, "nothing sent");
    // The link clears: padding alone (no video goes to ep2) lets the estimate grow back.
    net.deliver_to_client = Box::new(|_, _| true);
    let mut back = None;
    for s in 0..30 {
        net.media(Duration::from_millis(1000), true);
        if forwarded(&net.events, "ep2") == Some(vec!["ep1-v0".to_string()])
            && net.clients[1].received(a_l0).len() > seen + 10
        {
            back = Some(s);
            break;
        }
    }
    assert!(back.is_some(), "ep1-v0 forwarded to ep2 again");
}

/// Colibri2 `force-mute` (a moderator's mute, A/V moderation): the endpoint's audio is dropped
/// on arrival, its video still goes; lifted, its audio flows again.
#[test]
fn force_muted_audio_is_dropped_at_the_bridge() {
    let mut net = Net::new(2);
    net.connect();
    net.media(Duration::from_millis(500), false);
    let a_audio = net.clients[0].audio;
    assert!(!net.client("ep2").received(a_audio).is_empty());
    net.engine.set_force_mute((CONF, "ep1"), Some(true), None);
    net.client("ep2").rtp.clear();
    net.media(Duration::from_millis(1000), false);
    assert!(
        net.client("ep2").received(a_audio).is_empty(),
        "muted audio forwarded"
    );
    assert!(net.engine.stats().force_muted_dropped > 0);
    net.engine.set_force_mute((CONF, "ep1"), Some(false), None);
    net.media(Duration::from_millis(500), false);
    assert!(
        !net.client("ep2").received(a_audio).is_empty(),
        "audio back after the mute is lifted"
    );
}

/// The bridge channel over SCTP: the client opens its data channel, its messages come out as
/// events, and what the bridge sends reaches it; an endpoint without a channel gets nothing.
#[test]
fn bridge_channel_over_a_data_channel() {
    let mut net = Net::build_with(2, |c| c.sctp = c.name == "ep1", EngineConfig::default());
    net.connect();
    net.advance(Duration::from_millis(500));
    let opened = |e: &EngineEvent| matches!(e, EngineEvent::ChannelOpen { endpoint, .. } if endpoint == "ep1");
    assert_eq!(net.events.iter().filter(|e| opened(e)).count(), 1);
    let ch = net.clients[0].channel.expect("client channel open");
    let hello = r#"{"colibriClass":"ReceiverVideoConstraints","lastN":3}"#;
    assert!(
        net.clients[0]
            .rtc
            .channel(ch)
            .unwrap()
            .write(false, hello.as_bytes())
            .unwrap()
    );
    net.advance(Duration::from_millis(100));
    assert!(net.events.iter().any(|e| matches!(e,
        EngineEvent::ChannelMessage { endpoint, text, .. } if endpoint == "ep1" && text == hello)));
    assert!(
        net.engine
            .channel_send((CONF, "ep1"), r#"{"colibriClass":"ServerHello"}"#)
    );
    assert!(
        !net.engine.channel_send((CONF, "ep2"), "{}"),
        "ep2 has no channel"
    );
    let big = "x".repeat(MAX_CHANNEL_MESSAGE + 1);
    assert!(!net.engine.channel_send((CONF, "ep1"), &big), "too large");
    net.advance(Duration::from_millis(100));
    assert_eq!(
        net.clients[0].channel_rx,
        [r#"{"colibriClass":"ServerHello"}"#]
    );
    let s = net.engine.stats();
    assert_eq!((s.channel_messages_in, s.channel_messages_out), (1, 1));
    assert_eq!(s.channel_messages_dropped, 2);
    // Binary messages are not the bridge channel's.
    assert!(
        net.clients[0]
            .rtc
            .channel(ch)
            .unwrap()
            .write(true, b"\x00\x01")
            .unwrap()
    );
    net.advance(Duration::from_millis(100));
    assert_eq!(net.engine.stats().channel_messages_dropped, 3);
}

/// ICE-TCP: a client whose UDP is blocked reaches the bridge over TCP (the bridge's passive
/// candidate, RFC 6544); its media flows both ways and everything the engine sends it is TCP,
/// while the other client stays on UDP.
#[test]
fn a_client_without_udp_connects_over_tcp() {
    let mut net = Net::build_with(2, |c| c.tcp = c.name == "ep1", EngineConfig::default());
    net.connect();
    net.media(Duration::from_millis(1000), true);
    let a1 = net.clients[0].audio;
    let a2 = net.clients[1].audio;
    assert!(
        !net.clients[1].received(a1).is_empty(),
        "ep2 hears ep1 (sent over TCP)"
    );
    assert!(
        !net.clients[0].received(a2).is_empty(),
        "ep1 hears ep2 (over TCP)"
    );
    let seen = std::rc::Rc::new(std::cell::RefCell::new(HashMap::new()));
    let record = seen.clone();
    net.deliver_to_client = Box::new(move |t, _| {
        record
            .borrow_mut()
            .entry(t.to)
            .or_insert_with(HashSet::new)
            .insert(t.proto);
        true
    });
    net.media(Duration::from_millis(300), true);
    let protos: HashMap<Option<String>, HashSet<Protocol>> = seen
        .borrow()
        .iter()
        .map(|(to, p)| {
            let name = net
                .clients
                .iter()
                .find(|c| c.addr == *to)
                .map(|c| c.name.clone());
            (name, p.clone())
        })
        .collect();
    assert_eq!(
        protos.get(&Some("ep1".to_string())),
        Some(&HashSet::from([Protocol::Tcp]))
    );
    assert_eq!(
        protos.get(&Some("ep2".to_string())),
        Some(&HashSet::from([Protocol::Udp]))
    );
}

#[test]
fn a_live_stream_asks_a_lone_teacher_who_stopped_sending_for_video() {
    let mut net = Net::new(1);
    net.connect();
    net.advance(Duration::from_millis(200));
    // Nobody watches ep1: its camera is not wanted.
    assert_eq!(
        sender_constraints(&net.events, "ep1", "ep1-v0").last(),
        Some(&0)
    );
    net.engine.set_broadcast(
        CONF,
        Some(crate::media::BroadcastTarget {
            video: "127.0.0.1:9".parse().unwrap(),
            audio: vec!["127.0.0.1:11".parse().unwrap()],
            max_height: 360,
            filler: Vec::new(),
        }),
    );
    net.advance(Duration::from_millis(200));
    // The stream puts the only camera on stage although it sends nothing yet, and asks for it.
    assert_eq!(
        sender_constraints(&net.events, "ep1", "ep1-v0").last(),
        Some(&360)
    );
}

/// An in-process peer (meetd's SIP gateway, `local.rs`): allocated like anyone, attached by
/// its ufrag with keys given in-process, then on the fast path both ways without ICE or DTLS.
#[test]
fn a_local_endpoint_hears_the_room_and_is_heard_without_ice() {
    use crate::rtp::header::ExtIds;
    use std::cell::RefCell;
    use std::rc::Rc;

    let mut net = Net::new(1);
    net.connect();
    let phone: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let (bridge_keys, peer_keys) = srtp::MasterKeys::local_pair([7; 60]);
    let mut peer = Srtp::new(&peer_keys).unwrap();
    let audio_only: Vec<Media> = offer_medias()
        .into_iter()
        .filter(|m| m.kind == MediaType::Audio)
        .collect();
    let now = net.now;
    net.engine.add_endpoint(
        CONF,
        "phone",
        "brphone",
        "pwdphonepwdphonepwdphone",
        false,
        false,
        &audio_only,
        now,
    );
    let mut s = testkit::client_sources("phone", 9001, &[]);
    s.media_sources.retain(|m| m.kind == MediaType::Audio);
    net.engine.set_sources((CONF, "phone"), &s);
    assert!(
        !net.engine
            .attach_local("nobody", engine_addr(), phone, &bridge_keys, now)
    );
    assert!(
        net.engine
            .attach_local("brphone", engine_addr(), phone, &bridge_keys, now)
    );
    // Whatever reaches the phone's address is kept.
    let got: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let sink = got.clone();
    net.deliver_to_client = Box::new(move |t, _| {
        if t.to == phone {
            sink.borrow_mut().push(t.data.clone());
        }
        true
    });
    // ep1 expects the phone's audio as it would after a source-add.
    {
        let mut api = net.clients[0].rtc.direct_api();
        let mid = Mid::from("aphone");
        api.declare_media(mid, MediaKind::Audio);
        api.expect_stream_rx(9001.into(), None, mid, None);
    }
    // The phone talks: 25 packets of Opus (pt 111) with a loud audio level.
    let ids = ExtIds {
        audio_level: 1,
        ..ExtIds::default()
    };
    for i in 0..25u16 {
        let mut hdr = Vec::new();
        let h = RtpOut {
            pt: 111,
            marker: false,
            seq: 100 + i,
            ts: 960 * u32::from(i),
            ssrc: 9001,
        };
        let ext = ExtOut {
            audio_level: Some(0x80 | 20),
            ..ExtOut::default()
        };
        write_header(&mut hdr, &h, &ids, &ext, None);
        let mut data = Vec::new();
        peer.protect_rtp(&hdr, &[0xCC; 40], 9001, u64::from(100 + i), &mut data)
            .unwrap();
        let t = net.now;
        net.engine.handle_datagram(t, phone, engine_addr(), &data);
        net.clients[0].send_audio(t, -30);
        net.advance(Duration::from_millis(20));
    }
    let heard = net.clients[0].received(9001);
    assert!(heard.len() >= 20, "ep1 heard {} phone packets", heard.len());
    assert_eq!(heard[0].payload[0], 0xCC);
    // The phone got ep1's audio, which it can decrypt with its keys.
    let mut plain = Vec::new();
    let opened = got
        .borrow()
        .iter()
        .filter(|d| is_rtp(d))
        .filter_map(|d| {
            let v = crate::rtp::header::parse_rtp(d, &ExtIds::default())?;
            peer.unprotect_rtp(d, v.hdr_len, v.ssrc, v.seq, &mut plain)
                .ok()
                .map(|_| (v.ssrc, plain[0]))
        })
        .collect::<Vec<_>>();
    let from_ep1 = opened
        .iter()
        .filter(|(s, _)| *s == net.clients[0].audio)
        .count();
    assert!(
        from_ep1 >= 20,
        "the phone got {from_ep1} of ep1's packets: {opened:?}"
    );
    assert!(opened.iter().all(|(_, b)| *b == 0xAA));
    // The bridge reports it connected (media flows) though it never did ICE.
    let connected: Vec<String> = connected_events(&net.events);
    assert!(connected.contains(&"phone".to_string()), "{connected:?}");
}

/// Two bridges of one conference joined by a relay (docs/bridge.md B.15): bridge A with ep1
/// and ep2, bridge B with ep3. The relays' ICE and DTLS come up between the engines.
/// `own_ports`: each relay on a UDP port of its own (20001 on A, 20002 on B), as the driver
/// gives them; otherwise on the media port.
fn cascade(own_ports: bool) -> (Net, Net, std::rc::Rc<std::cell::RefCell<Vec<Transmit>>>) {
    let now = Instant::now();
    let a_media: SocketAddr = "127.0.0.1:10000".parse().unwrap();
    let b_media: SocketAddr = "127.0.0.2:10000".parse().unwrap();
    let (pa, pb) = if own_ports {
        (Some(20001), Some(20002))
    } else {
        (None, None)
    };
    let a_addr = SocketAddr::new(a_media.ip(), pa.unwrap_or(10000));
    let b_addr = SocketAddr::new(b_media.ip(), pb.unwrap_or(10000));
    let mut a = Net::bridge_at(now, a_media, 1..=2, |_| {}, EngineConfig::default());
    let mut b = Net::bridge_at(now, b_media, 3..=3, |_| {}, EngineConfig::default());
    // Datagrams between the bridges wait here for the exchange.
    let wire = std::rc::Rc::new(std::cell::RefCell::new(Vec::<Transmit>::new()));
    for (net, other) in [(&mut a, [b_addr, b_media]), (&mut b, [a_addr, a_media])] {
        let w = wire.clone();
        net.deliver_to_client = Box::new(move |t: &Transmit, _| {
            if other.contains(&t.to) {
                w.borrow_mut().push(t.clone());
                false
            } else {
                true
            }
        });
    }
    let medias = offer_medias();
    a.engine.add_relay(
        CONF,
        "relay-b",
        "ra-ufrag",
        "ra-pwd-0123456789abcdef",
        true,
        &medias,
        pa,
        now,
    );
    b.engine.add_relay(
        CONF,
        "relay-a",
        "rb-ufrag",
        "rb-pwd-0123456789abcdef",
        false,
        &medias,
        pb,
        now,
    );
    let transport =
        |engine: &MediaEngine, addr: SocketAddr, ufrag: &str, pwd: &str, setup| IceUdpTransport {
            ufrag: Some(ufrag.into()),
            pwd: Some(pwd.into()),
            rtcp_mux: true,
            fingerprints: vec![colibri2::Fingerprint {
                hash: "sha-256".into(),
                value: engine.dtls_fingerprint(),
                setup: Some(setup),
                cryptex: None,
            }],
            candidates: vec![colibri2::Candidate {
                component: 1,
                foundation: "1".into(),
                generation: 0,
                id: "c1".into(),
                ip: addr.ip().to_string(),
                port: addr.port(),
                priority: 2130706431,
                protocol: "udp".into(),
                type_: colibri2::CandidateType::Host,
                network: Some(0),
                rel_addr: None,
                rel_port: None,
                tcptype: None,
            }],
            ..IceUdpTransport::default()
        };
    let ta = transport(
        &a.engine,
        a_addr,
        "ra-ufrag",
        "ra-pwd-0123456789abcdef",
        colibri2::DtlsSetup::Active,
    );
    let tb = transport(
        &b.engine,
        b_addr,
        "rb-ufrag",
        "rb-pwd-0123456789abcdef",
        colibri2::DtlsSetup::Passive,
    );
    a.engine.set_remote_transport((CONF, "relay-b"), &tb, now);
    b.engine.set_remote_transport((CONF, "relay-a"), &ta, now);
    // Each bridge learns the other's participants and their sources.
    for c in &b.clients {
        a.engine
            .set_relayed_endpoint(CONF, "relay-b", &c.name, Some(&c.sources()), now);
    }
    for c in &a.clients {
        b.engine
            .set_relayed_endpoint(CONF, "relay-a", &c.name, Some(&c.sources()), now);
    }
    // And their clients are told of everyone's sources, as the focus does.
    for i in 0..a.clients.len() {
        for j in 0..b.clients.len() {
            let (x, y) = (&mut a.clients[i], &mut b.clients[j]);
            x.expect_from(y);
            y.expect_from(x);
        }
    }
    (a, b, wire)
}

/// Run both bridges for `d`, carrying what one sends the other every 10 ms.
fn run_cascade(
    a: &mut Net,
    b: &mut Net,
    wire: &std::cell::RefCell<Vec<Transmit>>,
    d: Duration,
    media: bool,
) {
    run_lossy_cascade(a, b, wire, d, media, &mut |_| true);
}

/// [`run_cascade`], carrying only the datagrams between the bridges that `keep` lets through.
fn run_lossy_cascade(
    a: &mut Net,
    b: &mut Net,
    wire: &std::cell::RefCell<Vec<Transmit>>,
    d: Duration,
    media: bool,
    keep: &mut dyn FnMut(&Transmit) -> bool,
) {
    let steps = (d.as_millis() / 20).max(1);
    for _ in 0..steps {
        if media {
            a.media(Duration::from_millis(20), true);
            b.media(Duration::from_millis(20), true);
        } else {
            a.advance(Duration::from_millis(20));
            b.advance(Duration::from_millis(20));
        }
        let now = a.now.max(b.now);
        let moved: Vec<Transmit> = wire.borrow_mut().drain(..).collect();
        for t in moved.into_iter().filter(|t| keep(t)) {
            let to = if t.to.ip() == b.engine.cfg.local_addrs[0].ip() {
                &mut b.engine
            } else {
                &mut a.engine
            };
            to.handle_datagram(now, t.from, t.to, &t.data);
        }
    }
}

/// [`cascade`] with every client connected to its bridge, then 200 ms for the relays.
fn connected_cascade(
    own_ports: bool,
) -> (Net, Net, std::rc::Rc<std::cell::RefCell<Vec<Transmit>>>) {
    let (mut a, mut b, wire) = cascade(own_ports);
    for _ in 0..100 {
        run_cascade(&mut a, &mut b, &wire, Duration::from_millis(20), false);
        if a.clients.iter().chain(&b.clients).all(|c| c.connected) {
            break;
        }
    }
    assert!(
        a.clients.iter().chain(&b.clients).all(|c| c.connected),
        "clients connect"
    );
    run_cascade(&mut a, &mut b, &wire, Duration::from_millis(200), false);
    (a, b, wire)
}

#[test]
fn a_relay_joins_two_bridges_and_everyone_gets_everyone() {
    relay_between_two_bridges(false);
}

/// The same with each relay on a port of its own: its datagrams come and go there.
#[test]
fn a_relay_on_its_own_port_joins_two_bridges() {
    relay_between_two_bridges(true);
}

/// Video lost between the bridges (docs/bridge.md B.15): the bridge behind the relay NACKs it
/// over the relay, the sender's bridge resends it from its cache, and the far receiver gets
/// every packet.
#[test]
fn losses_between_bridges_are_nacked_over_the_relay_and_resent() {
    let (mut a, mut b, wire) = connected_cascade(false);
    run_cascade(&mut a, &mut b, &wire, Duration::from_millis(500), true);
    let ep1_l0 = a.clients[0].layers[0].0;
    let resent_before = a.engine.stats.retransmissions;
    // Every 4th packet of ep1's lowest layer (what ep3 gets) lost from bridge A to B.
    let b_ip = b.engine.cfg.local_addrs[0].ip();
    let mut n = 0u32;
    let mut lost = 0u32;
    run_lossy_cascade(
        &mut a,
        &mut b,
        &wire,
        Duration::from_millis(1000),
        true,
        &mut |t| {
            let d = &t.data;
            if t.to.ip() != b_ip
                || !is_rtp_packet(d)
                || u32::from_be_bytes([d[8], d[9], d[10], d[11]]) != ep1_l0
            {
                return true;
            }
            n += 1;
            let keep = !n.is_multiple_of(4);
            lost += u32::from(!keep);
            keep
        },
    );
    run_cascade(&mut a, &mut b, &wire, Duration::from_millis(500), true);
    assert!(lost >= 5, "the wire lost {lost} packets");
    let resent = a.engine.stats.retransmissions - resent_before;
    assert!(
        resent >= u64::from(lost),
        "bridge A resent {resent} of {lost} lost packets over the relay"
    );
    let mut seqs: Vec<u64> = b.clients[0]
        .received(ep1_l0)
        .iter()
        .map(|p| *p.seq_no)
        .collect();
    seqs.sort();
    seqs.dedup();
    assert!(seqs.len() > 40, "ep3 got {} of ep1's packets", seqs.len());
    assert_consecutive(&seqs, "ep1's video at ep3, repaired across the relay");
}

fn relay_wants(events: &[EngineEvent], relay: &str, source: &str) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::RelayWants {
                relay: r,
                source: s,
                max_height,
                ..
            } if r == relay && s == source => Some(*max_height),
            _ => None,
        })
        .collect()
}

/// docs/bridge.md B.15, `AddReceiver`: bridge B says how much of bridge A's senders its
/// receivers want; A forwards a source over the relay only while it is wanted, and its
/// senders hear of the relay's wants in their `SenderSourceConstraints`.
#[test]
fn a_relay_carries_only_what_the_other_bridge_wants() {
    let (mut a, mut b, wire) = connected_cascade(false);
    run_cascade(&mut a, &mut b, &wire, Duration::from_millis(500), true);
    // Before B says anything, A's relay wants everything: ep1 is asked for any height.
    assert_eq!(
        sender_constraints(&a.events, "ep1", "ep1-v0").last(),
        Some(&UNLIMITED_SENDER_HEIGHT)
    );
    // B's receiver (ep3) wants the default 180 of A's senders: B says so for its relay to A.
    assert_eq!(relay_wants(&b.events, "relay-a", "ep1-v0"), [180]);
    assert_eq!(relay_wants(&b.events, "relay-a", "ep2-v0"), [180]);
    // A takes it: ep2 (here) wants ep1 at 180 too, so ep1 is asked for 180.
    a.engine.set_relay_wants((CONF, "relay-b"), "ep1-v0", 180);
    a.pump();
    assert_eq!(
        sender_constraints(&a.events, "ep1", "ep1-v0").last(),
        Some(&180)
    );
    // Only ep1's 180p layer crosses now (ep1 still sends all three: the test's clients
    // ignore sender constraints).
    let layers: Vec<u32> = a.clients[0].layers.iter().map(|l| l.0).collect();
    let b_ip = b.engine.cfg.local_addrs[0].ip();
    let crossing = |a: &mut Net, b: &mut Net| {
        let mut n = vec![0u32; layers.len()];
        run_cascade(a, b, &wire, Duration::from_millis(100), true);
        run_lossy_cascade(a, b, &wire, Duration::from_millis(400), true, &mut |t| {
            let d = &t.data;
            if t.to.ip() == b_ip && is_rtp_packet(d) {
                let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
                if let Some(i) = layers.iter().position(|l| *l == ssrc) {
                    n[i] += 1;
                }
            }
            true
        });
        n
    };
    let n = crossing(&mut a, &mut b);
    assert!(
        n[0] > 5 && n[1] == 0 && n[2] == 0,
        "layers relayed at 180: {n:?}"
    );
    // ep3 turns video off: B wants nothing of A's senders, A stops relaying ep1's video.
    b.engine.set_receiver_constraints(
        (CONF, "ep3"),
        ReceiverConstraints {
            default_max_height: Some(0),
            ..Default::default()
        },
    );
    b.pump();
    assert_eq!(relay_wants(&b.events, "relay-a", "ep1-v0"), [180, 0]);
    a.engine.set_relay_wants((CONF, "relay-b"), "ep1-v0", 0);
    let ep1_l0 = a.clients[0].layers[0].0;
    let ep1_audio = a.clients[0].audio;
    run_cascade(&mut a, &mut b, &wire, Duration::from_millis(200), true);
    let (v0, a0) = (
        b.clients[0].received(ep1_l0).len(),
        b.clients[0].received(ep1_audio).len(),
    );
    run_cascade(&mut a, &mut b, &wire, Duration::from_millis(500), true);
    assert_eq!(
        b.clients[0].received(ep1_l0).len(),
        v0,
        "no video of ep1 relayed"
    );
    assert!(
        b.clients[0].received(ep1_audio).len() >= a0 + 15,
        "its audio still is"
    );
    // Wanted again (ep3 puts ep1 on stage): relayed again, and ep1 asked for a keyframe.
    b.engine.set_receiver_constraints(
        (CONF, "ep3"),
        ReceiverConstraints {
            default_max_height: Some(0),
            constraints: [("ep1-v0".to_string(), 720)].into_iter().collect(),
            ..Default::default()
        },
    );
    b.pump();
    assert_eq!(relay_wants(&b.events, "relay-a", "ep1-v0"), [180, 0, 720]);
    let plis = a.clients[0].rtcp_rx.len();
    a.engine.set_relay_wants((CONF, "relay-b"), "ep1-v0", 720);
    run_cascade(&mut a, &mut b, &wire, Duration::from_millis(500), true);
    assert!(
        b.clients[0].received(ep1_l0).len() > v0 + 5,
        "relayed again"
    );
    let n = crossing(&mut a, &mut b);
    assert!(n.iter().all(|x| *x > 5), "layers relayed at 720: {n:?}");
    // What A keeps of B's wants stays bounded: no unknown names, nothing of a participant
    // who left.
    let kept = |a: &Net| {
        let rid = a.engine.id_of((CONF, "relay-b")).unwrap();
        let mut k: Vec<String> = a.engine.endpoints[&rid]
            .tx
            .constraints
            .constraints
            .keys()
            .cloned()
            .collect();
        k.sort();
        k
    };
    a.engine.set_relay_wants((CONF, "relay-b"), "nobody-v0", 0);
    a.engine.set_relay_wants((CONF, "relay-b"), "ep2-v0", 360);
    assert_eq!(kept(&a), ["ep1-v0", "ep2-v0"]);
    a.engine.remove_endpoint((CONF, "ep2"));
    assert_eq!(kept(&a), ["ep1-v0"]);
    assert!(
        a.clients[0].rtcp_rx[plis..].iter().any(|r| matches!(
            r,
            str0m::rtp::rtcp::Rtcp::Pli(_) | str0m::rtp::rtcp::Rtcp::Fir(_)
        )),
        "a keyframe request to ep1"
    );
}

fn relay_between_two_bridges(own_ports: bool) {
    let (mut a, mut b, wire) = connected_cascade(own_ports);
    let relays_up = |n: &Net| {
        n.engine.endpoints.values().any(|e| {
            matches!(e.link, endpoint::Link::Relay { .. })
                && e.transport.connected
                && e.transport.srtp.is_some()
        })
    };
    let relay_port = |n: &Net| {
        n.engine
            .endpoints
            .values()
            .find(|e| matches!(e.link, endpoint::Link::Relay { .. }))
            .and_then(|e| e.transport.send_path)
            .map(|p| p.from.port())
    };
    if own_ports {
        assert_eq!((relay_port(&a), relay_port(&b)), (Some(20001), Some(20002)));
    } else {
        assert_eq!((relay_port(&a), relay_port(&b)), (Some(10000), Some(10000)));
    }
    assert!(
        relays_up(&a) && relays_up(&b),
        "the relay's ICE and DTLS come up on both bridges"
    );
    run_cascade(&mut a, &mut b, &wire, Duration::from_millis(1500), true);
    let (ep1_audio, ep1_l0) = (a.clients[0].audio, a.clients[0].layers[0].0);
    let (ep3_audio, ep3_l0) = (b.clients[0].audio, b.clients[0].layers[0].0);
    // Across the relay, both ways, audio and video (the lowest layer by default).
    let ep3 = &b.clients[0];
    assert!(
        ep3.received(ep1_audio).len() >= 20,
        "ep3 hears ep1: {}",
        ep3.received(ep1_audio).len()
    );
    assert!(
        ep3.received(ep1_l0).len() >= 10,
        "ep3 sees ep1: {}",
        ep3.received(ep1_l0).len()
    );
    for c in &a.clients {
        assert!(c.received(ep3_audio).len() >= 20, "{} hears ep3", c.name);
        assert!(c.received(ep3_l0).len() >= 10, "{} sees ep3", c.name);
    }
    let seqs: Vec<u64> = ep3.received(ep1_audio).iter().map(|p| *p.seq_no).collect();
    assert_consecutive(&seqs, "ep1's audio at ep3");
    // Local forwarding goes on as before.
    assert!(a.clients[1].received(ep1_audio).len() >= 20);
    // Nothing relayed comes back: bridge B's relay never carries ep3's packets to A and back.
    assert!(b.clients[0].received(ep3_audio).is_empty());
    // A relayed endpoint removed: its media stops reaching the other bridge's clients.
    let before = a.clients[0].received(ep3_audio).len();
    a.engine.remove_endpoint((CONF, "ep3"));
    run_cascade(&mut a, &mut b, &wire, Duration::from_millis(500), true);
    assert!(a.clients[0].received(ep3_audio).len() <= before + 2);
    // The relay removed: its relayed endpoints go with it.
    b.engine.remove_endpoint((CONF, "relay-a"));
    assert!(b.engine.id_of((CONF, "ep1")).is_none() && b.engine.id_of((CONF, "ep2")).is_none());
}
