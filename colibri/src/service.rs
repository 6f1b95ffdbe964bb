//! The bridge's Colibri2 service: conferences and endpoints as the focus allocates them.
//!
//! This is the control side of the bridge: it answers `conference-modify` with ICE
//! credentials, the process's DTLS fingerprint, host candidates on the one media port,
//! the bridge-channel URL and the bridge's feedback sources, and keeps each endpoint's
//! remote transport and sources for the media engine.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::colibri2::{
    Candidate, CandidateType, Colibri2Error, ConferenceModified, ConferenceModify, DtlsSetup,
    Endpoint, Fingerprint, IceUdpTransport, MediaSource, MediaType, Relay, Sctp, Source, Sources,
    Transport, WebSocket,
};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the focus talks to: an in-process bridge or (later) a remote one over XMPP.
pub trait Bridge: Send + Sync {
    fn modify(
        &self,
        req: ConferenceModify,
    ) -> BoxFuture<'_, Result<ConferenceModified, Colibri2Error>>;
}

#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Identifier in colibri-ws URLs (JVB's default is `default-id`; meetd uses `jvb1`).
    pub id: String,
    pub media_port: u16,
    /// ICE-TCP passive candidates' ports (empty: no ICE-TCP).
    pub tcp_ports: Vec<u16>,
    pub advertise_ips: Vec<IpAddr>,
    /// `ws[s]://host[:port]` under which `/colibri-ws/...` is served.
    pub ws_base: String,
    /// SHA-256 fingerprint (`AA:BB:...`) of the process's DTLS certificate.
    pub dtls_fingerprint: String,
    pub max_conferences: usize,
    pub max_endpoints_per_conference: usize,
}

/// An endpoint as the bridge knows it.
#[derive(Debug, Clone)]
pub struct EndpointState {
    pub id: String,
    pub ufrag: String,
    pub pwd: String,
    pub remote: Option<IceUdpTransport>,
    pub sources: Sources,
    pub medias: Vec<crate::colibri2::Media>,
    pub force_mute_audio: bool,
    pub force_mute_video: bool,
    pub ssrc_rewriting: bool,
}

/// A relay to another bridge as the bridge knows it (docs/bridge.md B.15).
#[derive(Debug, Clone)]
pub struct RelayState {
    pub ufrag: String,
    pub pwd: String,
    pub ice_controlling: bool,
    /// The other bridge's endpoints it carries.
    pub endpoints: std::collections::HashSet<String>,
}

#[derive(Debug, Clone)]
pub struct ConferenceState {
    /// The bridge's own id (in colibri-ws URLs), not the meeting id.
    pub id: String,
    pub name: Option<String>,
    pub endpoints: HashMap<String, EndpointState>,
    /// Relays by the other bridge's relay id.
    pub relays: HashMap<String, RelayState>,
    pub feedback_audio: u32,
    pub feedback_video: u32,
}

/// Dials a relay's channel: conference id, relay id, the other bridge's URL.
pub type RelayDialer = Arc<dyn Fn(String, String, String) + Send + Sync>;

/// The Colibri2 service. All state behind one lock: requests are rare (signalling rate).
pub struct ColibriService {
    relay_dialer: Mutex<Option<RelayDialer>>,
    cfg: BridgeConfig,
    conferences: Mutex<HashMap<String, ConferenceState>>,
    /// Live-stream feeds by meeting id (docs/streaming.md), also for a conference the bridge
    /// does not have yet: it gets its feed when it is created.
    broadcasts: Mutex<HashMap<String, crate::media::BroadcastTarget>>,
    /// The media engine, when one runs (tests of the control side run without).
    engine: Option<crate::driver::EngineHandle>,
}

fn random_string(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn random_ssrc() -> u32 {
    rand::random_range(1..=u32::MAX)
}

impl ColibriService {
    pub fn new(cfg: BridgeConfig) -> Arc<ColibriService> {
        Self::with_engine(cfg, None)
    }

    pub fn with_engine(
        cfg: BridgeConfig,
        engine: Option<crate::driver::EngineHandle>,
    ) -> Arc<ColibriService> {
        Arc::new(ColibriService {
            relay_dialer: Mutex::new(None),
            cfg,
            conferences: Mutex::new(HashMap::new()),
            broadcasts: Mutex::new(HashMap::new()),
            engine,
        })
    }

    /// The media engine expired an endpoint (docs/bridge.md B.10): forget it, so that the focus's
    /// next request about it gets `unknown-endpoint` (and the focus re-invites). `conf_id` is
    /// the bridge's conference id (as in colibri-ws URLs), `ufrag` the local ICE ufrag the
    /// endpoint was created with: a newer endpoint of the same id is kept. Whether it was
    /// removed.
    pub fn endpoint_expired(&self, conf_id: &str, endpoint: &str, ufrag: &str) -> bool {
        let mut confs = self.conferences.lock();
        let Some(c) = confs.values_mut().find(|c| c.id == conf_id) else {
            return false;
        };
        if c.endpoints.get(endpoint).is_none_or(|e| e.ufrag != ufrag) {
            return false;
        }
        c.endpoints.remove(endpoint);
        tracing::info!(
            conference = conf_id,
            endpoint,
            "endpoint expired by the media engine"
        );
        true
    }

    /// Start (`Some`) or stop the live-stream feed of the conference with `meeting_id`
    /// (docs/streaming.md): now if the bridge has it, else when the focus creates it. Fails
    /// only when the engine's queue is full.
    pub fn set_broadcast(
        &self,
        meeting_id: &str,
        target: Option<crate::media::BroadcastTarget>,
    ) -> Result<(), Colibri2Error> {
        let confs = self.conferences.lock();
        if let Some(c) = confs.get(meeting_id) {
            self.submit(
                &c.id,
                vec![crate::driver::Command::Broadcast {
                    conf: c.id.clone(),
                    target: target.clone(),
                }],
            )?;
        }
        let mut b = self.broadcasts.lock();
        match target {
            Some(t) => {
                b.insert(meeting_id.to_string(), t);
            }
            None => {
                b.remove(meeting_id);
            }
        }
        Ok(())
    }

    /// Queue a request's engine commands, all or none: with no room the request fails as
    /// busy before it changed anything.
    fn submit(&self, conf: &str, cmds: Vec<crate::driver::Command>) -> Result<(), Colibri2Error> {
        match &self.engine {
            Some(e) => e.submit(conf, cmds).map_err(|e| {
                tracing::warn!(conf, error = %e, "Colibri2 request refused");
                Colibri2Error::Busy
            }),
            None => Ok(()),
        }
    }

    /// How many endpoints each conference has.
    pub fn conference_sizes(&self) -> Vec<usize> {
        self.conferences
            .lock()
            .values()
            .map(|c| c.endpoints.len())
            .collect()
    }

    /// The bridge's id (its brewery nick, how relays name it).
    pub fn bridge_id(&self) -> &str {
        &self.cfg.id
    }

    pub fn conference_count(&self) -> usize {
        self.conferences.lock().len()
    }

    pub fn endpoint_count(&self) -> usize {
        self.conferences
            .lock()
            .values()
            .map(|c| c.endpoints.len())
            .sum()
    }

    /// A copy of an endpoint's state (for the media engine and tests).
    pub fn endpoint(&self, meeting_id: &str, id: &str) -> Option<EndpointState> {
        self.conferences
            .lock()
            .get(meeting_id)
            .and_then(|c| c.endpoints.get(id).cloned())
    }

    /// Find an endpoint by the bridge conference id (colibri-ws URL) and check its password.
    pub fn check_ws(&self, conf_id: &str, endpoint: &str, pwd: &str) -> bool {
        self.conferences
            .lock()
            .values()
            .find(|c| c.id == conf_id)
            .and_then(|c| c.endpoints.get(endpoint))
            .is_some_and(|e| e.pwd == pwd)
    }

    /// Whether `pwd` opens the channel of relay `relay` of the conference with bridge id
    /// `conf_id` (docs/bridge.md B.15).
    pub fn check_relay_ws(&self, conf_id: &str, relay: &str, pwd: &str) -> bool {
        self.conferences
            .lock()
            .values()
            .find(|c| c.id == conf_id)
            .and_then(|c| c.relays.get(relay))
            .is_some_and(|r| !r.ice_controlling && r.pwd == pwd)
    }

    /// Who dials a relay's channel when the other bridge's URL arrives (the bridge's I/O
    /// side): conference id, relay id, URL.
    pub fn set_relay_dialer(&self, f: RelayDialer) {
        *self.relay_dialer.lock() = Some(f);
    }

    /// Whether the relay is still there (a dialer gives up once it is not).
    pub fn has_relay(&self, conf_id: &str, relay: &str) -> bool {
        self.conferences
            .lock()
            .values()
            .any(|c| c.id == conf_id && c.relays.contains_key(relay))
    }

    fn local_transport(&self, conf_id: &str, ep: &EndpointState, sctp: bool) -> Transport {
        let udp = self
            .cfg
            .advertise_ips
            .iter()
            .enumerate()
            .map(|(i, ip)| Candidate {
                component: 1,
                foundation: (i + 1).to_string(),
                generation: 0,
                id: format!("{}c{i}", ep.ufrag),
                ip: ip.to_string(),
                port: self.cfg.media_port,
                // RFC 8445 host priority: type preference 126, local preference by order.
                priority: (126 << 24) | ((65535 - i as u32) << 8) | 255,
                protocol: "udp".into(),
                type_: CandidateType::Host,
                network: Some(0),
                rel_addr: None,
                rel_port: None,
                tcptype: None,
            });
        // ICE-TCP (RFC 6544): passive host candidates, below every UDP one so that clients
        // take TCP only when UDP fails (type preference 90).
        let n = self.cfg.advertise_ips.len();
        let tcp = self
            .cfg
            .tcp_ports
            .iter()
            .flat_map(|port| self.cfg.advertise_ips.iter().map(move |ip| (*port, ip)))
            .enumerate()
            .map(|(i, (port, ip))| Candidate {
                component: 1,
                foundation: (n + i + 1).to_string(),
                generation: 0,
                id: format!("{}t{i}", ep.ufrag),
                ip: ip.to_string(),
                port,
                priority: (90 << 24) | ((65535 - i as u32) << 8) | 255,
                protocol: "tcp".into(),
                type_: CandidateType::Host,
                network: Some(0),
                rel_addr: None,
                rel_port: None,
                tcptype: Some("passive".into()),
            });
        let candidates = udp.chain(tcp).collect();
        let url = format!(
            "{}/colibri-ws/{}/{}/{}?pwd={}",
            self.cfg.ws_base, self.cfg.id, conf_id, ep.id, ep.pwd
        );
        Transport {
            ice: Some(IceUdpTransport {
                ufrag: Some(ep.ufrag.clone()),
                pwd: Some(ep.pwd.clone()),
                fingerprints: vec![Fingerprint {
                    hash: "sha-256".into(),
                    setup: Some(DtlsSetup::Actpass),
                    cryptex: None,
                    value: self.cfg.dtls_fingerprint.clone(),
                }],
                web_sockets: vec![WebSocket {
                    url: Some(url),
                    active: None,
                }],
                rtcp_mux: true,
                candidates,
                ..IceUdpTransport::default()
            }),
            sctp: sctp.then_some(Sctp {
                port: Some(5000),
                role: None,
            }),
            ..Transport::default()
        }
    }

    /// A request's relays (docs/bridge.md B.15), checked before anything changes: at most
    /// one per request as on a stock bridge, a new one under a free name, the others known,
    /// and no relayed endpoint under a local endpoint's name.
    fn check_relays(
        &self,
        conf: &ConferenceState,
        req: &ConferenceModify,
    ) -> Result<(), Colibri2Error> {
        if req.relays.len() > 1 {
            return Err(Colibri2Error::FeatureNotImplemented(
                "more than one relay in a request".into(),
            ));
        }
        for r in &req.relays {
            if r.create {
                if conf.relays.contains_key(&r.id) || conf.endpoints.contains_key(&r.id) {
                    return Err(Colibri2Error::Conflict(format!(
                        "relay {} already exists",
                        r.id
                    )));
                }
            } else if !r.expire && !conf.relays.contains_key(&r.id) {
                return Err(Colibri2Error::BadRequest(format!("unknown relay {}", r.id)));
            }
            if let Some(e) = r
                .endpoints
                .iter()
                .find(|e| conf.endpoints.contains_key(&e.id))
            {
                return Err(Colibri2Error::Conflict(format!(
                    "relayed endpoint {} is a local endpoint",
                    e.id
                )));
            }
            let relayed: usize = conf.relays.values().map(|x| x.endpoints.len()).sum();
            if conf.endpoints.len() + relayed + r.endpoints.len()
                > self.cfg.max_endpoints_per_conference
            {
                return Err(Colibri2Error::BadRequest("too many endpoints".into()));
            }
        }
        Ok(())
    }

    /// One checked `<relay>`: its commands for the engine, and its part of the answer (on
    /// create: the relay's transport, with `setup` saying who is the DTLS client).
    fn relay(
        &self,
        conf: &mut ConferenceState,
        r: &Relay,
        cmds: &mut Vec<crate::driver::Command>,
    ) -> Relay {
        use crate::driver::Command;
        let mut out = Relay {
            id: r.id.clone(),
            ..Relay::default()
        };
        if r.expire {
            if conf.relays.remove(&r.id).is_some() {
                cmds.push(Command::RemoveEndpoint {
                    conf: conf.id.clone(),
                    ep: r.id.clone(),
                });
            }
            out.expire = true;
            return out;
        }
        if r.create {
            let state = RelayState {
                ufrag: random_string(8),
                pwd: random_string(24),
                ice_controlling: r
                    .transport
                    .as_ref()
                    .and_then(|t| t.ice_controlling)
                    .unwrap_or(false),
                endpoints: Default::default(),
            };
            // Its own UDP port (as JVB's `use-unique-port`): the bridge tells relays apart by
            // port, so two conferences may span the same two bridges. Without one (no engine,
            // or no port free) the media port.
            let socket = self.engine.as_ref().and_then(|_| {
                let any: std::net::IpAddr = match self.cfg.advertise_ips.first() {
                    Some(std::net::IpAddr::V6(_)) => std::net::Ipv6Addr::UNSPECIFIED.into(),
                    _ => std::net::Ipv4Addr::UNSPECIFIED.into(),
                };
                std::net::UdpSocket::bind((any, 0))
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .inspect_err(|e| tracing::warn!(error = %e, "relay: no UDP port of its own; the media port is shared"))
                    .ok()
            });
            let port = socket
                .as_ref()
                .and_then(|s| s.local_addr().ok())
                .map(|a| a.port());
            cmds.push(Command::AddRelay {
                conf: conf.id.clone(),
                relay: r.id.clone(),
                ufrag: state.ufrag.clone(),
                pwd: state.pwd.clone(),
                ice_controlling: state.ice_controlling,
                medias: r.medias.clone(),
                socket,
            });
            let mut t = self.relay_transport(&conf.id, &r.id, &state);
            if let (Some(p), Some(ice)) = (port, t.ice.as_mut()) {
                for c in &mut ice.candidates {
                    c.port = p;
                }
            }
            out.transport = Some(t);
            conf.relays.insert(r.id.clone(), state);
        }
        let Some(state) = conf.relays.get_mut(&r.id) else {
            return out;
        };
        if let Some(t) = r.transport.as_ref().and_then(|t| t.ice.clone())
            && (t.ufrag.is_some() || !t.candidates.is_empty() || !t.fingerprints.is_empty())
        {
            if state.ice_controlling
                && let Some(url) = t.web_sockets.iter().find_map(|w| w.url.clone())
                && let Some(dial) = self.relay_dialer.lock().clone()
            {
                dial(conf.id.clone(), r.id.clone(), url);
            }
            cmds.push(Command::SetRemote {
                conf: conf.id.clone(),
                ep: r.id.clone(),
                transport: t,
            });
        }
        for e in &r.endpoints {
            if e.expire {
                if state.endpoints.remove(&e.id) {
                    cmds.push(Command::RemoveEndpoint {
                        conf: conf.id.clone(),
                        ep: e.id.clone(),
                    });
                }
                continue;
            }
            state.endpoints.insert(e.id.clone());
            cmds.push(Command::SetRelayed {
                conf: conf.id.clone(),
                relay: r.id.clone(),
                ep: e.id.clone(),
                sources: e.sources.clone(),
            });
        }
        out
    }

    /// The relay's side of its link: ICE credentials, host candidates on the media port,
    /// the DTLS fingerprint with the role (the ICE-controlling side is the DTLS client).
    fn relay_transport(&self, conf_id: &str, relay: &str, r: &RelayState) -> Transport {
        let ep = EndpointState {
            id: String::new(),
            ufrag: r.ufrag.clone(),
            pwd: r.pwd.clone(),
            remote: None,
            sources: Sources::default(),
            medias: Vec::new(),
            force_mute_audio: false,
            force_mute_video: false,
            ssrc_rewriting: false,
        };
        let mut t = self.local_transport("", &ep, false);
        if let Some(ice) = t.ice.as_mut() {
            // The relay's channel: the ICE-controlling side dials the other's URL.
            ice.web_sockets = vec![if r.ice_controlling {
                WebSocket {
                    url: None,
                    active: Some(true),
                }
            } else {
                WebSocket {
                    url: Some(format!(
                        "{}/colibri-relay-ws/{}/{}/{}?pwd={}",
                        self.cfg.ws_base, self.cfg.id, conf_id, relay, r.pwd
                    )),
                    active: None,
                }
            }];
            ice.candidates.retain(|c| c.protocol == "udp");
            for f in &mut ice.fingerprints {
                f.setup = Some(if r.ice_controlling {
                    DtlsSetup::Active
                } else {
                    DtlsSetup::Passive
                });
            }
        }
        t
    }

    /// Handle one `conference-modify` (synchronously; the answer is immediate). The request
    /// works on a copy of its conference; the copy replaces the conference only once the
    /// engine has taken the request's commands, so a busy engine leaves everything as it was.
    pub fn handle(&self, req: &ConferenceModify) -> Result<ConferenceModified, Colibri2Error> {
        let mut confs = self.conferences.lock();
        let mut resp = ConferenceModified::default();
        let mut created = None;
        if req.create {
            if confs.contains_key(&req.meeting_id) {
                return Err(Colibri2Error::ConferenceAlreadyExists {
                    meeting_id: req.meeting_id.clone(),
                });
            }
            if confs.len() >= self.cfg.max_conferences {
                return Err(Colibri2Error::BadRequest("too many conferences".into()));
            }
            if let Some(name) = &req.name
                && (name.is_empty() || name.contains('/'))
            {
                return Err(Colibri2Error::BadRequest("Invalid conference name".into()));
            }
            let c = ConferenceState {
                id: format!("{:08x}", rand::random::<u32>()),
                name: req.name.clone(),
                endpoints: HashMap::new(),
                relays: HashMap::new(),
                feedback_audio: random_ssrc(),
                feedback_video: random_ssrc(),
            };
            let src = |kind, id: &str, ssrc| MediaSource {
                kind,
                id: id.into(),
                synthetic: None,
                sources: vec![Source {
                    ssrc,
                    name: Some(id.into()),
                    video_type: None,
                    msid: None,
                }],
                ssrc_groups: Vec::new(),
            };
            resp.sources = Some(Sources {
                media_sources: vec![
                    src(MediaType::Audio, "jvb-a0", c.feedback_audio),
                    src(MediaType::Video, "jvb-v0", c.feedback_video),
                ],
            });
            // As on a stock bridge, the conference exists even when its endpoints are refused.
            confs.insert(req.meeting_id.clone(), c.clone());
            created = Some(c);
        }
        if req.expire {
            if created.is_some() {
                confs.remove(&req.meeting_id);
            } else if let Some(id) = confs.get(&req.meeting_id).map(|c| c.id.clone()) {
                self.submit(
                    &id,
                    vec![crate::driver::Command::RemoveConference { conf: id.clone() }],
                )?;
                confs.remove(&req.meeting_id);
            }
            tracing::debug!(meeting = %req.meeting_id, "bridge conference expired");
            return Ok(resp);
        }
        let is_new = created.is_some();
        let mut conf = match created {
            Some(c) => c,
            None => match confs.get(&req.meeting_id) {
                Some(c) => c.clone(),
                None => {
                    return Err(Colibri2Error::ConferenceNotFound {
                        meeting_id: req.meeting_id.clone(),
                    });
                }
            },
        };
        let mut cmds = Vec::new();
        if is_new && let Some(t) = self.broadcasts.lock().get(&req.meeting_id) {
            cmds.push(crate::driver::Command::Broadcast {
                conf: conf.id.clone(),
                target: Some(t.clone()),
            });
        }
        let max_eps = self.cfg.max_endpoints_per_conference;
        // Validate the whole request before changing anything.
        let mut creating = 0;
        for ep in &req.endpoints {
            if ep.create {
                if conf.endpoints.contains_key(&ep.id) {
                    return Err(Colibri2Error::Conflict(format!(
                        "endpoint {} already exists",
                        ep.id
                    )));
                }
                if ep.transport.is_none() {
                    return Err(Colibri2Error::BadRequest(
                        "create requires a transport".into(),
                    ));
                }
                if !ep.has_capability("source-names") {
                    return Err(Colibri2Error::BadRequest(
                        "Source name support is mandatory".into(),
                    ));
                }
                creating += 1;
            } else if !ep.expire && !conf.endpoints.contains_key(&ep.id) {
                return Err(Colibri2Error::UnknownEndpoint { id: ep.id.clone() });
            }
        }
        if conf.endpoints.len() + creating > max_eps {
            return Err(Colibri2Error::BadRequest("too many endpoints".into()));
        }
        self.check_relays(&conf, req)?;
        for ep in &req.endpoints {
            if ep.expire {
                if conf.endpoints.remove(&ep.id).is_some() {
                    cmds.push(crate::driver::Command::RemoveEndpoint {
                        conf: conf.id.clone(),
                        ep: ep.id.clone(),
                    });
                }
                let mut e = Endpoint::new(ep.id.clone());
                e.expire = true;
                resp.endpoints.push(e);
                continue;
            }
            let mut out = Endpoint::new(ep.id.clone());
            if ep.create {
                let state = EndpointState {
                    id: ep.id.clone(),
                    ufrag: random_string(8),
                    pwd: random_string(24),
                    remote: None,
                    sources: Sources::default(),
                    medias: Vec::new(),
                    force_mute_audio: false,
                    force_mute_video: false,
                    ssrc_rewriting: ep.has_capability("ssrc-rewriting"),
                };
                let sctp = ep.transport.as_ref().is_some_and(|t| t.sctp.is_some());
                out.transport = Some(self.local_transport(&conf.id, &state, sctp));
                cmds.push(crate::driver::Command::AddEndpoint {
                    conf: conf.id.clone(),
                    ep: ep.id.clone(),
                    ufrag: state.ufrag.clone(),
                    pwd: state.pwd.clone(),
                    medias: ep.medias.clone(),
                    ssrc_rewriting: state.ssrc_rewriting,
                    sctp,
                    visitor: ep.muc_role.as_deref() == Some("visitor"),
                });
                conf.endpoints.insert(ep.id.clone(), state);
            }
            let Some(state) = conf.endpoints.get_mut(&ep.id) else {
                continue;
            };
            for m in &ep.medias {
                if !state.medias.iter().any(|x| x.kind == m.kind) {
                    state.medias.push(m.clone());
                }
            }
            if let Some(t) = ep.transport.as_ref().and_then(|t| t.ice.clone())
                && (t.ufrag.is_some() || !t.candidates.is_empty() || !t.fingerprints.is_empty())
            {
                cmds.push(crate::driver::Command::SetRemote {
                    conf: conf.id.clone(),
                    ep: ep.id.clone(),
                    transport: t.clone(),
                });
                state.remote = Some(t);
            }
            if let Some(s) = &ep.sources {
                cmds.push(crate::driver::Command::SetSources {
                    conf: conf.id.clone(),
                    ep: ep.id.clone(),
                    sources: s.clone(),
                });
                state.sources = s.clone();
            }
            if let Some(fm) = &ep.force_mute {
                if let Some(a) = fm.audio {
                    state.force_mute_audio = a;
                }
                if let Some(v) = fm.video {
                    state.force_mute_video = v;
                }
                cmds.push(crate::driver::Command::ForceMute {
                    conf: conf.id.clone(),
                    ep: ep.id.clone(),
                    audio: fm.audio,
                    video: fm.video,
                });
            }
            resp.endpoints.push(out);
        }
        for r in &req.relays {
            resp.relays.push(self.relay(&mut conf, r, &mut cmds));
        }
        self.submit(&conf.id, cmds)?;
        if req.create {
            tracing::debug!(meeting = %req.meeting_id, "bridge conference created");
        }
        confs.insert(req.meeting_id.clone(), conf);
        Ok(resp)
    }
}

impl Bridge for ColibriService {
    fn modify(
        &self,
        req: ConferenceModify,
    ) -> BoxFuture<'_, Result<ConferenceModified, Colibri2Error>> {
        Box::pin(async move { self.handle(&req) })
    }
}

/// A bridge on 127.0.0.1:10000 for tests, with room for `max_endpoints` per conference.
#[cfg(test)]
pub(crate) fn test_config(max_endpoints: usize) -> BridgeConfig {
    BridgeConfig {
        id: "jvb1".into(),
        media_port: 10000,
        tcp_ports: vec![4443],
        advertise_ips: vec!["127.0.0.1".parse().unwrap()],
        ws_base: "ws://127.0.0.1:8080".into(),
        dtls_fingerprint: "AA:BB".into(),
        max_conferences: 10,
        max_endpoints_per_conference: max_endpoints,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> Arc<ColibriService> {
        ColibriService::new(test_config(2))
    }

    fn create_ep(id: &str) -> Endpoint {
        let mut e = Endpoint::new(id);
        e.create = true;
        e.capabilities.push("source-names".into());
        e.transport = Some(Transport {
            ice_controlling: Some(true),
            sctp: Some(Sctp::default()),
            ..Transport::default()
        });
        e
    }

    #[test]
    fn allocate_update_expire() {
        let s = svc();
        let mut m = ConferenceModify::new("m1");
        m.create = true;
        m.name = Some("room@muc.meet.jitsi".into());
        m.endpoints.push(create_ep("aaaa"));
        let r = s.handle(&m).unwrap();
        let t = r.endpoints[0].transport.as_ref().unwrap();
        let ice = t.ice.as_ref().unwrap();
        assert_eq!(ice.ufrag.as_ref().unwrap().len(), 8);
        assert_eq!(ice.pwd.as_ref().unwrap().len(), 24);
        assert_eq!(ice.candidates[0].port, 10000);
        assert_eq!(t.sctp.as_ref().unwrap().port, Some(5000));
        let url = ice.web_sockets[0].url.clone().unwrap();
        assert!(
            url.starts_with("ws://127.0.0.1:8080/colibri-ws/jvb1/") && url.contains("/aaaa?pwd="),
            "{url}"
        );
        assert_eq!(r.sources.unwrap().media_sources.len(), 2);
        // Creating it again is a conflict; recreating the conference too.
        assert!(matches!(
            s.handle(&m),
            Err(Colibri2Error::ConferenceAlreadyExists { .. })
        ));
        let mut m2 = ConferenceModify::new("m1");
        m2.endpoints.push(create_ep("aaaa"));
        assert!(matches!(s.handle(&m2), Err(Colibri2Error::Conflict(_))));
        // Update of an unknown endpoint.
        let mut m3 = ConferenceModify::new("m1");
        m3.endpoints.push(Endpoint::new("zzzz"));
        assert!(matches!(
            s.handle(&m3),
            Err(Colibri2Error::UnknownEndpoint { .. })
        ));
        // The endpoint limit.
        let mut m4 = ConferenceModify::new("m1");
        m4.endpoints.push(create_ep("bbbb"));
        m4.endpoints.push(create_ep("cccc"));
        assert!(s.handle(&m4).is_err());
        assert_eq!(s.endpoint_count(), 1);
        // Expire.
        let mut m5 = ConferenceModify::new("m1");
        let mut e = Endpoint::new("aaaa");
        e.expire = true;
        m5.endpoints.push(e);
        s.handle(&m5).unwrap();
        assert_eq!(s.endpoint_count(), 0);
        let mut m6 = ConferenceModify::new("m1");
        m6.expire = true;
        s.handle(&m6).unwrap();
        assert_eq!(s.conference_count(), 0);
        assert!(matches!(
            s.handle(&m3),
            Err(Colibri2Error::ConferenceNotFound { .. })
        ));
    }

    #[test]
    fn relays_are_created_told_their_peer_and_expired() {
        use crate::colibri2::Relay;
        let s = ColibriService::new(test_config(10));
        let mut m = ConferenceModify::new("m1");
        m.create = true;
        m.name = Some("room@muc.meet.jitsi".into());
        m.endpoints.push(create_ep("aaaa"));
        s.handle(&m).unwrap();
        let relay = |id: &str| Relay {
            id: id.into(),
            ..Relay::default()
        };
        // Created: the answer has the relay's side, DTLS client when ICE-controlling.
        let mut m = ConferenceModify::new("m1");
        let mut r = relay("bridge-2");
        r.create = true;
        r.transport = Some(Transport {
            ice_controlling: Some(true),
            ..Transport::default()
        });
        let mut far = Endpoint::new("bbbb");
        far.create = true;
        r.endpoints.push(far);
        m.relays.push(r.clone());
        let a = s.handle(&m).unwrap();
        let t = a.relays[0]
            .transport
            .as_ref()
            .unwrap()
            .ice
            .as_ref()
            .unwrap();
        assert_eq!(a.relays[0].id, "bridge-2");
        assert!(t.ufrag.is_some() && t.pwd.is_some() && !t.candidates.is_empty());
        assert_eq!(
            t.web_sockets,
            vec![WebSocket {
                url: None,
                active: Some(true)
            }],
            "the controlling side dials the relay's channel"
        );
        assert_eq!(t.fingerprints[0].setup, Some(DtlsSetup::Active));
        // The other side offers its channel's URL, opened by its password only.
        let mut passive = ConferenceModify::new("m1");
        let mut rp = relay("bridge-3");
        rp.create = true;
        passive.relays.push(rp);
        let p = s.handle(&passive).unwrap();
        let pt = p.relays[0]
            .transport
            .as_ref()
            .unwrap()
            .ice
            .as_ref()
            .unwrap();
        assert_eq!(pt.fingerprints[0].setup, Some(DtlsSetup::Passive));
        let url = pt.web_sockets[0].url.clone().unwrap();
        let conf_id = s.conferences.lock()["m1"].id.clone();
        assert!(
            url.contains(&format!("/colibri-relay-ws/jvb1/{conf_id}/bridge-3?pwd=")),
            "{url}"
        );
        let pwd = url.rsplit("pwd=").next().unwrap();
        assert!(s.check_relay_ws(&conf_id, "bridge-3", pwd));
        assert!(!s.check_relay_ws(&conf_id, "bridge-3", "wrong"));
        assert!(
            !s.check_relay_ws(&conf_id, "bridge-2", ""),
            "the dialing side has no URL"
        );
        // Twice, or two in one request, or an unknown one: refused.
        assert!(matches!(s.handle(&m), Err(Colibri2Error::Conflict(_))));
        let mut two = ConferenceModify::new("m1");
        two.relays = vec![relay("x"), relay("y")];
        assert!(matches!(
            s.handle(&two),
            Err(Colibri2Error::FeatureNotImplemented(_))
        ));
        let mut unknown = ConferenceModify::new("m1");
        unknown.relays.push(relay("nope"));
        assert!(matches!(
            s.handle(&unknown),
            Err(Colibri2Error::BadRequest(_))
        ));
        // A relayed endpoint may not take a local one's name.
        let mut clash = ConferenceModify::new("m1");
        let mut r2 = relay("bridge-2");
        r2.endpoints.push(Endpoint::new("aaaa"));
        clash.relays.push(r2);
        assert!(matches!(s.handle(&clash), Err(Colibri2Error::Conflict(_))));
        // The peer's transport, then the far endpoint gone, then the relay.
        let mut peer = ConferenceModify::new("m1");
        let mut r3 = relay("bridge-2");
        r3.transport = Some(Transport {
            ice: Some(t.clone()),
            ..Transport::default()
        });
        let mut gone = Endpoint::new("bbbb");
        gone.expire = true;
        r3.endpoints.push(gone);
        peer.relays.push(r3);
        s.handle(&peer).unwrap();
        let c = s.conferences.lock().get("m1").cloned().unwrap();
        assert!(c.relays["bridge-2"].endpoints.is_empty());
        let mut expire = ConferenceModify::new("m1");
        let mut r4 = relay("bridge-2");
        r4.expire = true;
        expire.relays.push(r4);
        assert!(s.handle(&expire).unwrap().relays[0].expire);
        assert!(!s.has_relay(&conf_id, "bridge-2"));
        assert!(s.has_relay(&conf_id, "bridge-3"));
    }

    /// A full engine queue: the request is refused as busy and nothing changes; once the
    /// engine has read its queue, the same request goes through.
    #[test]
    fn a_busy_engine_refuses_the_request_and_changes_nothing() {
        use crate::driver::Command;
        for shards in [1, 2] {
            // Two places: the two creates below fill the queue (one AddEndpoint each).
            let (engine, mut rxs, mut routes) = crate::driver::EngineHandle::detached(shards, 2);
            let s = ColibriService::with_engine(svc().cfg.clone(), Some(engine));
            let mut m = ConferenceModify::new("m1");
            m.create = true;
            m.endpoints.push(create_ep("aaaa"));
            s.handle(&m).unwrap();
            let mut m2 = ConferenceModify::new("m1");
            m2.endpoints.push(create_ep("bbbb"));
            s.handle(&m2).unwrap();
            let mut expire = ConferenceModify::new("m1");
            let mut e = Endpoint::new("bbbb");
            e.expire = true;
            expire.endpoints.push(e);
            let err = s.handle(&expire).unwrap_err();
            assert_eq!(err.condition(), "resource-constraint");
            assert_eq!(err.error_type(), "wait");
            assert!(s.endpoint("m1", "bbbb").is_some(), "nothing changed");
            // A new conference's endpoints are refused too (the conference itself exists, as
            // when a stock bridge refuses an endpoint of a create).
            let mut m3 = ConferenceModify::new("m2");
            m3.create = true;
            m3.endpoints.push(create_ep("cccc"));
            if shards == 1 {
                assert!(matches!(s.handle(&m3), Err(Colibri2Error::Busy)));
                assert!(s.endpoint("m2", "cccc").is_none());
            }
            // The engine reads its queue: both endpoints, in order.
            let mut seen = Vec::new();
            for rx in rxs.iter_mut() {
                while let Ok(c) = rx.try_recv() {
                    if let Command::AddEndpoint { ep, .. } = c {
                        seen.push(ep);
                    }
                }
            }
            assert_eq!(seen, ["aaaa", "bbbb"]);
            if let Some(r) = routes.as_mut() {
                let mut n = 0;
                while r.try_recv().is_ok() {
                    n += 1;
                }
                assert_eq!(n, 2, "each endpoint's route went with it");
            }
            s.handle(&expire).unwrap();
            assert!(s.endpoint("m1", "bbbb").is_none());
        }
    }

    #[test]
    fn create_requires_source_names_and_transport() {
        let s = svc();
        let mut m = ConferenceModify::new("m1");
        m.create = true;
        let mut e = create_ep("aaaa");
        e.capabilities.clear();
        m.endpoints.push(e);
        assert!(matches!(s.handle(&m), Err(Colibri2Error::BadRequest(_))));
        assert_eq!(s.conference_count(), 1, "the conference itself was created");
    }
}
