//! One phone call (docs/sip.md §2–4), the tokio glue around the sans-IO parts: the PIN
//! dialogue (`pin.rs`) with its prompts, the caller's occupant in the room (`occupant.rs`),
//! and the two media legs (`media.rs`), driven by a 20 ms clock.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meetd_colibri::media::srtp::{MasterKeys, Srtp};
use meetd_xmpp::Element;
use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::Shared;
use super::audio::{PHONE_FRAME, Prompt};
use super::media::{PhoneLeg, RoomLeg};
use super::occupant::{Left, OccEvent, Occupant};
use super::pin::{PinEntry, Step, Verdict};
use super::sdp::{self, Offer};
use super::ua::{CallKey, Caller};

const TICK: Duration = Duration::from_millis(20);
/// The PIN prompt again after this long without a key.
const PROMPT_AGAIN: Duration = Duration::from_secs(10);
/// Stanzas waiting for the call's task.
const MAILBOX: usize = 64;

/// What the SIP side tells a call.
#[derive(Debug)]
pub enum CallMsg {
    /// A key from SIP INFO.
    Key(char),
    /// The caller hung up (or never acknowledged the answer).
    Ended,
}

/// What a call asks of the SIP side.
#[derive(Debug)]
pub enum ToUa {
    Answer(CallKey, String),
    Hangup(CallKey),
}

/// The name the room sees: the number with its middle hidden (`+4930123456` →
/// `+493****456`), or `hidden` when the caller hid it. Also what the logs say.
pub fn masked(number: Option<&str>, hidden: &str) -> String {
    let Some(n) = number.filter(|n| !n.is_empty()) else {
        return hidden.to_string();
    };
    let chars: Vec<char> = n
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '+')
        .collect();
    if chars.len() < 4 {
        return hidden.to_string();
    }
    let (mut keep_head, mut keep_tail) = (if chars[0] == '+' { 4 } else { 3 }, 3);
    if chars.len() < keep_head + keep_tail + 3 {
        (keep_head, keep_tail) = (1, 1);
    }
    let mut s: String = chars[..keep_head].iter().collect();
    s.push_str(&"*".repeat(chars.len() - keep_head - keep_tail));
    s.extend(&chars[chars.len() - keep_tail..]);
    s
}

enum Phase {
    /// Asking for the PIN.
    Pin(PinEntry),
    /// In the room (or on the way in).
    Room,
    /// Saying goodbye; hang up when the prompt has played.
    Closing,
}

struct Call {
    key: CallKey,
    shared: Arc<Shared>,
    name: String,
    phone_sock: UdpSocket,
    phone: PhoneLeg,
    prompt: Vec<i16>,
    prompt_at: usize,
    phase: Phase,
    occupant: Option<(Occupant, String, mpsc::Sender<Box<Element>>)>,
    /// The occupant's stanzas, until the call's loop takes the receiver.
    mailbox: Option<mpsc::Receiver<Box<Element>>>,
    /// The room leg and its socket towards the bridge (apart: the socket is read while the
    /// leg is not borrowed).
    room: Option<RoomLeg>,
    room_sock: Option<UdpSocket>,
    last_key: Option<char>,
    last_key_at: Instant,
    started: Instant,
    to_ua: mpsc::Sender<ToUa>,
}

/// A call the user agent took.
pub struct NewCall {
    pub key: CallKey,
    pub caller: Caller,
    pub offer: Offer,
    /// The user part of the Request-URI.
    pub dialled: Option<String>,
}

/// Run call `key` until it ends. Answers it first (with an RTP socket on `rtp_ip`).
pub async fn run(
    NewCall {
        key,
        caller,
        offer,
        dialled,
    }: NewCall,
    shared: Arc<Shared>,
    rtp_ip: IpAddr,
    to_ua: mpsc::Sender<ToUa>,
    mut msgs: mpsc::Receiver<CallMsg>,
) {
    let name = masked(caller.number.as_deref(), &shared.cfg.hidden_caller_name);
    let sock = match UdpSocket::bind(SocketAddr::new(rtp_ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "SIP: no RTP socket for a call; refused");
            let _ = to_ua.send(ToUa::Hangup(key)).await;
            return;
        }
    };
    let local = match sock.local_addr() {
        Ok(a) => a,
        Err(_) => {
            let _ = to_ua.send(ToUa::Hangup(key)).await;
            return;
        }
    };
    let (ssrc, seq, session) = {
        let mut r = rand::rng();
        (r.random(), r.random(), r.random::<u32>())
    };
    let phone = match PhoneLeg::new(offer.rtp, offer.codec, offer.events_pt, ssrc, seq) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "SIP: no Opus codec for a call; refused");
            let _ = to_ua.send(ToUa::Hangup(key)).await;
            return;
        }
    };
    let answer = sdp::answer(&offer, local, u64::from(session), 1);
    if to_ua.send(ToUa::Answer(key, answer)).await.is_err() {
        return;
    }
    tracing::info!(caller = %name, codec = offer.codec.name(), "SIP: call answered");
    let now = Instant::now();
    let mut call = Call {
        key,
        name,
        phone,
        phone_sock: sock,
        prompt: Vec::new(),
        prompt_at: 0,
        phase: Phase::Pin(PinEntry::new(shared.cfg.pin_tries)),
        occupant: None,
        mailbox: None,
        room: None,
        room_sock: None,
        last_key: None,
        last_key_at: now,
        started: now,
        to_ua,
        shared,
    };
    // A trunk that passes the meeting's PIN as the number dialled: straight in. Only from an
    // authenticated trunk: one try per call would otherwise let anyone guess PINs quickly.
    let trusted = !call.shared.cfg.auth_user.is_empty();
    let direct = match dialled
        .as_deref()
        .filter(|_| trusted)
        .and_then(|d| d.parse::<u64>().ok())
    {
        Some(pin) => call.shared.storage.dialin_room(pin).await.ok().flatten(),
        None => None,
    };
    match direct {
        Some(room) => call.join(&room),
        None => call.play(Prompt::EnterPin),
    }
    call.drive(&mut msgs).await;
}

impl Call {
    fn play(&mut self, p: Prompt) {
        self.prompt = p.samples();
        self.prompt_at = 0;
    }

    fn prompt_done(&self) -> bool {
        self.prompt_at >= self.prompt.len()
    }

    async fn drive(&mut self, msgs: &mut mpsc::Receiver<CallMsg>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut phone_buf = vec![0u8; 2048];
        let mut room_buf = vec![0u8; 2048];
        let mut stanzas: Option<mpsc::Receiver<Box<Element>>> = None;
        let deadline = self.started + Duration::from_secs(self.shared.cfg.pin_timeout_secs);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !self.tick(deadline).await {
                        break;
                    }
                }
                m = msgs.recv() => match m {
                    Some(CallMsg::Key(k)) => self.key(k).await,
                    Some(CallMsg::Ended) | None => {
                        tracing::info!(caller = %self.name, "SIP: the caller hung up");
                        self.leave_room();
                        return;
                    }
                },
                r = self.phone_sock.recv_from(&mut phone_buf) => {
                    if let Ok((n, from)) = r
                        && let Some(k) = self.phone.receive(from, &phone_buf[..n])
                    {
                        self.key(k).await;
                    }
                }
                r = recv_room(&self.room_sock, &mut room_buf) => {
                    if let Some(n) = r
                        && let Some(leg) = self.room.as_mut()
                    {
                        leg.receive(&room_buf[..n], Instant::now());
                    }
                }
                st = recv_stanza(&mut stanzas) => {
                    match st {
                        Some(st) => {
                            if let Some((o, _, _)) = self.occupant.as_mut() {
                                o.handle(&st);
                            }
                        }
                        None => stanzas = None,
                    }
                }
            }
            if stanzas.is_none()
                && let Some(rx) = self.take_mailbox()
            {
                stanzas = Some(rx);
            }
            self.occupant_io().await;
        }
        self.leave_room();
        let _ = self.to_ua.send(ToUa::Hangup(self.key)).await;
    }

    /// Every 20 ms: a frame to the caller, one to the room; deadlines. False: hang up now.
    async fn tick(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        let mut out = [0i16; PHONE_FRAME];
        if !self.prompt_done() {
            let end = (self.prompt_at + PHONE_FRAME).min(self.prompt.len());
            out[..end - self.prompt_at].copy_from_slice(&self.prompt[self.prompt_at..end]);
            self.prompt_at = end;
        } else if let Some(leg) = self.room.as_mut() {
            leg.mixed(&mut out);
        }
        let dst = self.phone.remote;
        let d = self.phone.frame(&out);
        // A lost datagram is a gap the caller hears; the next frame goes out anyway.
        let _ = self.phone_sock.send_to(d, dst).await;
        let mut heard = [0i16; PHONE_FRAME];
        self.phone.take_frame(&mut heard);
        let muted = self.occupant.as_ref().is_none_or(|(o, _, _)| o.muted());
        if let (Some(sock), Some(leg)) = (self.room_sock.as_ref(), self.room.as_mut()) {
            let to = leg.bridge;
            if let Some(d) = leg.send(&heard, muted) {
                let _ = sock.send_to(d, to).await;
            }
        }
        match &mut self.phase {
            Phase::Closing => !self.prompt_done(),
            Phase::Pin(_) if now >= deadline => {
                tracing::info!(caller = %self.name, "SIP: no PIN in time; hanging up");
                self.play(Prompt::Goodbye);
                self.phase = Phase::Closing;
                true
            }
            Phase::Pin(_) => {
                if self.prompt_done()
                    && now.saturating_duration_since(self.last_key_at) >= PROMPT_AGAIN
                {
                    self.last_key_at = now;
                    self.play(Prompt::EnterPin);
                }
                true
            }
            Phase::Room => true,
        }
    }

    async fn key(&mut self, k: char) {
        self.last_key_at = Instant::now();
        let prev = self.last_key.replace(k);
        let step = match &mut self.phase {
            Phase::Pin(p) => p.key(k),
            Phase::Room => {
                if prev == Some('*') && k == '6' {
                    if let Some((o, _, _)) = self.occupant.as_mut() {
                        o.toggle_mute();
                    }
                    self.last_key = None;
                }
                return;
            }
            Phase::Closing => return,
        };
        let found = match step {
            Step::More => return,
            Step::Unusable => None,
            Step::Lookup(pin) => match self.shared.storage.dialin_room(pin).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "SIP: PIN lookup failed");
                    None
                }
            },
        };
        let Phase::Pin(p) = &mut self.phase else {
            return;
        };
        match p.looked_up(found.is_some()) {
            Verdict::Join => {
                if let Some(room) = found {
                    self.join(&room);
                }
            }
            Verdict::Again => {
                tracing::info!(caller = %self.name, wrong = p.wrong(), "SIP: wrong PIN");
                self.play(Prompt::WrongPin);
                let mut then = Prompt::EnterPin.samples();
                self.prompt.append(&mut then);
            }
            Verdict::HangUp => {
                tracing::info!(caller = %self.name, wrong = p.wrong(), "SIP: wrong PIN, the last try; hanging up");
                self.play(Prompt::WrongPin);
                let mut then = Prompt::Goodbye.samples();
                self.prompt.append(&mut then);
                self.phase = Phase::Closing;
            }
        }
    }

    /// Into room `room` (its bare JID).
    fn join(&mut self, room: &str) {
        self.play(Prompt::Joining);
        self.phase = Phase::Room;
        let (nick, msid, ssrc) = {
            let mut r = rand::rng();
            (
                format!("{:08x}", r.random::<u32>()),
                format!("{:016x}{:016x}", r.random::<u64>(), r.random::<u64>()),
                r.random_range(1..=u32::MAX),
            )
        };
        let jid = format!("{}/{}", self.shared.gateway_bare, nick);
        let mut o = Occupant::new(
            &jid,
            room,
            &nick,
            &self.name,
            &self.shared.focus_domain,
            ssrc,
            &msid,
        );
        let (tx, rx) = mpsc::channel(MAILBOX);
        self.shared.router.bind(&jid, tx.clone());
        o.start();
        tracing::info!(caller = %self.name, %room, "SIP: the caller typed the room's PIN; joining");
        self.occupant = Some((o, jid, tx));
        self.mailbox = Some(rx);
    }

    fn take_mailbox(&mut self) -> Option<mpsc::Receiver<Box<Element>>> {
        self.mailbox.take()
    }

    /// Route what the occupant says; act on what it reports.
    async fn occupant_io(&mut self) {
        loop {
            let Some((o, _, _)) = self.occupant.as_mut() else {
                return;
            };
            let mut progressed = false;
            while let Some(st) = o.poll_stanza() {
                self.shared.router.route(st);
                progressed = true;
            }
            let Some((o, _, _)) = self.occupant.as_mut() else {
                return;
            };
            if let Some(ev) = o.poll_event() {
                progressed = true;
                self.occupant_event(ev).await;
            }
            if !progressed {
                return;
            }
        }
    }

    async fn occupant_event(&mut self, ev: OccEvent) {
        match ev {
            OccEvent::Requested | OccEvent::Muted(_) => {}
            OccEvent::Joined => {
                tracing::info!(caller = %self.name, "SIP: the caller is in the room");
            }
            OccEvent::Media(s) => {
                let Some(engine) = self.shared.engine.clone() else {
                    tracing::warn!(
                        "SIP: no media engine in this process; the caller hears nothing"
                    );
                    return;
                };
                // The bridge's own address in the offer; loopback first when it has one.
                let Some(bridge) = s
                    .candidates
                    .iter()
                    .copied()
                    .find(|c| c.ip().is_loopback())
                    .or_else(|| s.candidates.first().copied())
                else {
                    return;
                };
                let sock = match UdpSocket::bind(SocketAddr::new(bridge.ip(), 0)).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "SIP: no socket towards the bridge");
                        return;
                    }
                };
                let Ok(me) = sock.local_addr() else { return };
                let mut material = [0u8; 60];
                rand::rng().fill(&mut material[..]);
                let (bridge_keys, own_keys) = MasterKeys::local_pair(material);
                let Some(srtp) = Srtp::new(&own_keys) else {
                    return;
                };
                let cfg = &self.shared.cfg;
                let frames = (cfg.mix_buffer_ms / 20).max(2) as usize;
                let (ssrc, seq) = self
                    .occupant
                    .as_ref()
                    .map(|(o, _, _)| (o.ssrc(), rand::rng().random()))
                    .unwrap_or((1, 1));
                let leg = match RoomLeg::new(
                    bridge,
                    srtp,
                    s.opus_pt,
                    s.level_id,
                    ssrc,
                    seq,
                    cfg.mix_speakers,
                    frames,
                ) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "SIP: no Opus codec");
                        return;
                    }
                };
                if let Err(e) = engine.attach_local(&s.ufrag, bridge, me, bridge_keys) {
                    // The focus re-invites when the bridge drops the endpoint; the
                    // caller hears silence until then.
                    tracing::warn!(error = %e, "SIP: could not attach the caller's media");
                    return;
                }
                self.room = Some(leg);
                self.room_sock = Some(sock);
            }
            OccEvent::MediaEnded => {
                self.room = None;
                self.room_sock = None;
            }
            OccEvent::Left(why) => {
                tracing::info!(caller = %self.name, ?why, "SIP: the caller is out of the room; hanging up");
                self.room = None;
                self.room_sock = None;
                self.unbind();
                self.play(if why == Left::NoConference {
                    Prompt::WrongPin
                } else {
                    Prompt::Goodbye
                });
                self.phase = Phase::Closing;
            }
        }
    }

    fn unbind(&mut self) {
        if let Some((_, jid, tx)) = self.occupant.take() {
            self.shared.router.unbind(&jid, &tx);
        }
    }

    fn leave_room(&mut self) {
        if let Some((o, _, _)) = self.occupant.as_mut() {
            o.leave();
            while let Some(st) = o.poll_stanza() {
                self.shared.router.route(st);
            }
        }
        self.unbind();
        self.room = None;
        self.room_sock = None;
    }
}

async fn recv_room(sock: &Option<UdpSocket>, buf: &mut [u8]) -> Option<usize> {
    match sock {
        Some(sock) => sock.recv(buf).await.ok(),
        None => std::future::pending().await,
    }
}

async fn recv_stanza(rx: &mut Option<mpsc::Receiver<Box<Element>>>) -> Option<Box<Element>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_masked_and_hidden_ones_stay_hidden() {
        assert_eq!(masked(Some("+4930123456"), "Phone user"), "+493****456");
        assert_eq!(masked(Some("030123456"), "Phone user"), "030***456");
        assert_eq!(masked(Some("12345"), "Phone user"), "1***5");
        assert_eq!(masked(Some("123"), "Phone user"), "Phone user");
        assert_eq!(masked(None, "Phone user"), "Phone user");
        assert_eq!(masked(Some("alice"), "Phone user"), "Phone user");
    }
}
