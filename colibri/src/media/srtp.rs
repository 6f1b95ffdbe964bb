//! SRTP for the forwarding fast path.
//!
//! str0m terminates DTLS and SRTP for each endpoint, but pushing every forwarded packet
//! through an endpoint's `Rtc` (send queue, per-stream RTX cache, poll loop) costs several
//! times the encryption itself. So the bridge encrypts forwarded media itself: it learns each
//! endpoint's DTLS-SRTP keying material (RFC 5764 §4.2) through a wrapper around str0m's DTLS
//! provider ([`crypto_provider`], [`with_key_capture`]), derives the session keys (RFC 3711
//! §4.3, RFC 7714 §11) and protects RTP and RTCP towards the endpoint ([`Srtp`]). It also
//! decrypts the endpoint's RTCP a second time (str0m keeps its own copy) to see the NACKs,
//! PLIs and FIRs aimed at the streams only the bridge knows about.
//!
//! The outgoing SSRCs protected here are never declared in str0m, so the two never share an
//! SRTP stream: str0m's RTCP carries its own SSRCs.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
    SrtpProfile,
};
use str0m::crypto::{
    AeadAes128Gcm, AeadAes128GcmCipher, AeadAes256GcmCipher, Aes128CmSha1_80,
    Aes128CmSha1_80Cipher, CryptoError, CryptoProvider, Sha1HmacProvider, SrtpProvider,
};

/// DTLS-SRTP keying material of one endpoint, as exported by its DTLS session.
#[derive(Clone)]
pub struct MasterKeys {
    pub profile: SrtpProfile,
    /// client key, server key, client salt, server salt (RFC 5764 §4.2).
    pub material: Vec<u8>,
    /// The bridge was the DTLS client.
    pub active: bool,
}

impl MasterKeys {
    /// Keys for an endpoint inside the process (`local.rs`): 60 bytes of fresh randomness
    /// as AES_CM_128_HMAC_SHA1_80 material; the bridge's side and the peer's.
    pub fn local_pair(material: [u8; 60]) -> (MasterKeys, MasterKeys) {
        let keys = |active| MasterKeys {
            profile: SrtpProfile::AES128_CM_SHA1_80,
            material: material.to_vec(),
            active,
        };
        (keys(false), keys(true))
    }
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKeys({}, active={})", self.profile, self.active)
    }
}

/// Where an endpoint's DTLS session leaves its keying material.
pub(super) type KeySlot = Arc<OnceLock<MasterKeys>>;

thread_local! {
    /// The slot for the DTLS instance about to be created on this thread.
    static NEXT_SLOT: RefCell<Option<KeySlot>> = const { RefCell::new(None) };
}

/// Run `f` (which builds one `Rtc`) so that the DTLS instance it creates reports its keying
/// material into `slot`.
pub(super) fn with_key_capture<R>(slot: KeySlot, f: impl FnOnce() -> R) -> R {
    NEXT_SLOT.with(|s| *s.borrow_mut() = Some(slot));
    let r = f();
    NEXT_SLOT.with(|s| s.borrow_mut().take());
    r
}

/// str0m's default provider with DTLS instances that report their keying material.
pub(super) fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    static CAPTURING: OnceLock<CapturingProvider> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let base = str0m::crypto::from_feature_flags();
            let capturing = CAPTURING.get_or_init(|| CapturingProvider {
                inner: base.dtls_provider,
            });
            Arc::new(CryptoProvider {
                dtls_provider: capturing,
                ..base
            })
        })
        .clone()
}

#[derive(Debug)]
struct CapturingProvider {
    inner: &'static dyn DtlsProvider,
}

impl DtlsProvider for CapturingProvider {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.inner.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let inner = self.inner.new_dtls(cert, now, dtls_version, mtu)?;
        Ok(match NEXT_SLOT.with(|s| s.borrow_mut().take()) {
            Some(slot) => Box::new(Capturing { inner, slot }),
            None => inner,
        })
    }

    fn is_test(&self) -> bool {
        self.inner.is_test()
    }
}

#[derive(Debug)]
struct Capturing {
    inner: Box<dyn DtlsInstance>,
    slot: KeySlot,
}

impl DtlsInstance for Capturing {
    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active);
    }
    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.handle_packet(packet)
    }
    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let o = self.inner.poll_output(buf);
        if let DtlsOutput::KeyingMaterial(km, profile) = &o {
            let _ = self.slot.set(MasterKeys {
                profile: *profile,
                material: km.to_vec(),
                active: self.inner.is_active(),
            });
        }
        o
    }
    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.inner.handle_timeout(now)
    }
    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.inner.send_application_data(data)
    }
    fn is_active(&self) -> bool {
        self.inner.is_active()
    }
    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.protocol_version()
    }
    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }
    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close()
    }
}

const LABEL_RTP_KEY: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_KEY: u8 = 3;
const LABEL_RTCP_AUTH: u8 = 4;
const LABEL_RTCP_SALT: u8 = 5;

/// The SRTCP E flag (encrypted) with the 31-bit index.
const SRTCP_E: u32 = 0x8000_0000;
const GCM_TAG: usize = 16;
const HMAC_TAG: usize = 10;
/// Extra output room some AES-CTR implementations want.
const CTR_PAD: usize = 15;

/// The AES-CM key derivation function (RFC 3711 §4.3.1, key derivation rate 0); with the
/// 12-byte salts of RFC 7714 the salt is padded to 14 bytes with zeros.
fn derive(p: &dyn SrtpProvider, master: &[u8], salt: &[u8], label: u8, out: &mut [u8]) {
    let mut input = [0u8; 16];
    input[..salt.len()].copy_from_slice(salt);
    input[7] ^= label;
    let mut block = [0u8; 32];
    let mut round: u16 = 0;
    let mut i = 0;
    while i < out.len() {
        input[14..].copy_from_slice(&round.to_be_bytes());
        if master.len() == 32 {
            p.srtp_aes_256_ecb_round(master, &input, &mut block);
        } else {
            p.srtp_aes_128_ecb_round(master, &input, &mut block);
        }
        let n = (out.len() - i).min(16);
        out[i..i + n].copy_from_slice(&block[..n]);
        i += n;
        round = round.wrapping_add(1);
    }
}

/// One direction (RTP or RTCP, send or receive) of an SRTP session.
enum Ctx {
    Cm {
        cipher: Box<dyn Aes128CmSha1_80Cipher>,
        salt: [u8; 14],
        auth: [u8; 20],
    },
    Gcm {
        cipher: Aead,
        salt: [u8; 12],
    },
}

/// AES-GCM with a 128- or 256-bit key (RFC 7714: the same SRTP processing, IVs included, for
/// both; the IV helpers of the 128-bit profile serve both).
enum Aead {
    Aes128(Box<dyn AeadAes128GcmCipher>),
    Aes256(Box<dyn AeadAes256GcmCipher>),
}

impl Aead {
    fn seal(
        &mut self,
        iv: &[u8; 12],
        aad: &[u8],
        input: &[u8],
        out: &mut [u8],
    ) -> Result<(), SrtpError> {
        match self {
            Aead::Aes128(c) => c.encrypt(iv, aad, input, out),
            Aead::Aes256(c) => c.encrypt(iv, aad, input, out),
        }
        .map_err(|_| SrtpError::Cipher)
    }

    fn open(
        &mut self,
        iv: &[u8; 12],
        aads: &[&[u8]],
        input: &[u8],
        out: &mut [u8],
    ) -> Result<usize, SrtpError> {
        match self {
            Aead::Aes128(c) => c.decrypt(iv, aads, input, out),
            Aead::Aes256(c) => c.decrypt(iv, aads, input, out),
        }
        .map_err(|_| SrtpError::Auth)
    }
}

impl Ctx {
    /// `rtcp`: the RTCP labels; `encrypt`: the direction of the cipher.
    fn new(
        p: &dyn SrtpProvider,
        profile: SrtpProfile,
        master: &[u8],
        salt: &[u8],
        rtcp: bool,
        encrypt: bool,
    ) -> Option<Ctx> {
        let (lk, la, ls) = if rtcp {
            (LABEL_RTCP_KEY, LABEL_RTCP_AUTH, LABEL_RTCP_SALT)
        } else {
            (LABEL_RTP_KEY, LABEL_RTP_AUTH, LABEL_RTP_SALT)
        };
        Some(match profile {
            SrtpProfile::AES128_CM_SHA1_80 => {
                let mut key = [0u8; 16];
                let mut s = [0u8; 14];
                let mut auth = [0u8; 20];
                derive(p, master, salt, lk, &mut key);
                derive(p, master, salt, ls, &mut s);
                derive(p, master, salt, la, &mut auth);
                Ctx::Cm {
                    cipher: p.aes_128_cm_sha1_80().create_cipher(key, encrypt),
                    salt: s,
                    auth,
                }
            }
            SrtpProfile::AEAD_AES_128_GCM => {
                let mut key = [0u8; 16];
                let mut s = [0u8; 12];
                derive(p, master, salt, lk, &mut key);
                derive(p, master, salt, ls, &mut s);
                Ctx::Gcm {
                    cipher: Aead::Aes128(p.aead_aes_128_gcm().create_cipher(key, encrypt)),
                    salt: s,
                }
            }
            SrtpProfile::AEAD_AES_256_GCM => {
                let mut key = [0u8; 32];
                let mut s = [0u8; 12];
                derive(p, master, salt, lk, &mut key);
                derive(p, master, salt, ls, &mut s);
                Ctx::Gcm {
                    cipher: Aead::Aes256(p.aead_aes_256_gcm().create_cipher(key, encrypt)),
                    salt: s,
                }
            }
            _ => return None,
        })
    }
}

/// Why an SRTP operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("packet too short")]
    Short,
    #[error("authentication failed")]
    Auth,
    #[error("more SRTCP senders than an endpoint may have")]
    TooManyRtcpSenders,
    #[error("replayed SRTCP index")]
    Replay,
    #[error("unencrypted SRTCP")]
    Unencrypted,
    #[error("cipher failure")]
    Cipher,
}

/// SRTCP sender SSRCs tracked per endpoint (a browser has one per local channel: a sender per
/// source it sends, a receive-only one per remote stream it gets); authenticated packets only,
/// so only the endpoint itself fills it.
const MAX_RTCP_SENDERS: usize = 256;

use std::collections::hash_map::Entry;

/// The bridge's SRTP session with one endpoint: protect RTP and RTCP towards it, unprotect
/// its RTCP.
pub struct Srtp {
    tx_rtp: Ctx,
    tx_rtcp: Ctx,
    rx_rtp: Ctx,
    rx_rtcp: Ctx,
    hmac: &'static dyn Sha1HmacProvider,
    srtcp_index: u32,
    /// Replay window over the endpoint's SRTCP indices, per sender SSRC: each of a browser's
    /// RTCP senders counts its own index (RFC 3711 §3.4), and one that sends no media has
    /// several (a receive-only channel each), whose indices interleave.
    rtcp_index: super::FastMap<u32, RxIndex>,
    /// Rollover counter and replay state per incoming SSRC (only SSRCs the endpoint signalled
    /// are decrypted, so this stays as small as its source list).
    rx_streams: super::FastMap<u32, RxIndex>,
}

/// RFC 3711 §3.3.1: the receiver's estimate of the packet index, and a 64-packet replay
/// window below the highest index authenticated (§3.3.2; SRTCP indices use the window alone).
#[derive(Debug, Default, Clone, Copy)]
struct RxIndex {
    /// Highest index authenticated so far; `None` before the first packet.
    top: Option<u64>,
    mask: u64,
}

impl RxIndex {
    /// The index of a packet with sequence number `seq` (RFC 3711 Appendix A).
    fn estimate(&self, seq: u16) -> u64 {
        let Some(top) = self.top else {
            return u64::from(seq);
        };
        let roc = top >> 16;
        let s_l = top as u16;
        let v = if s_l < 0x8000 {
            if seq > s_l && seq - s_l > 0x8000 {
                roc.saturating_sub(1)
            } else {
                roc
            }
        } else if s_l - 0x8000 > seq {
            roc + 1
        } else {
            roc
        };
        (v << 16) | u64::from(seq)
    }

    fn replayed(&self, index: u64) -> bool {
        let Some(top) = self.top else {
            return false;
        };
        if index > top {
            return false;
        }
        let back = top - index;
        back >= 64 || self.mask & (1 << back) != 0
    }

    /// Not a replay: then remember it.
    fn check_and_set(&mut self, index: u64) -> bool {
        if self.replayed(index) {
            return false;
        }
        self.accept(index);
        true
    }

    fn accept(&mut self, index: u64) {
        match self.top {
            Some(top) if index <= top => self.mask |= 1 << (top - index),
            Some(top) => {
                let shift = index - top;
                self.mask = if shift >= 64 { 0 } else { self.mask << shift } | 1;
                self.top = Some(index);
            }
            None => {
                self.top = Some(index);
                self.mask = 1;
            }
        }
    }
}

impl std::fmt::Debug for Srtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Srtp")
    }
}

impl Srtp {
    pub fn new(keys: &MasterKeys) -> Option<Srtp> {
        let (ml, sl) = match keys.profile {
            SrtpProfile::AES128_CM_SHA1_80 => (16, 14),
            SrtpProfile::AEAD_AES_128_GCM => (16, 12),
            SrtpProfile::AEAD_AES_256_GCM => (32, 12),
            _ => return None,
        };
        let m = &keys.material;
        if m.len() != 2 * ml + 2 * sl {
            return None;
        }
        let client = (&m[..ml], &m[2 * ml..2 * ml + sl]);
        let server = (&m[ml..2 * ml], &m[2 * ml + sl..]);
        let (tx, rx) = if keys.active {
            (client, server)
        } else {
            (server, client)
        };
        let provider = crypto_provider();
        let p = provider.srtp_provider;
        Some(Srtp {
            tx_rtp: Ctx::new(p, keys.profile, tx.0, tx.1, false, true)?,
            tx_rtcp: Ctx::new(p, keys.profile, tx.0, tx.1, true, true)?,
            rx_rtp: Ctx::new(p, keys.profile, rx.0, rx.1, false, false)?,
            rx_rtcp: Ctx::new(p, keys.profile, rx.0, rx.1, true, false)?,
            hmac: provider.sha1_hmac_provider,
            srtcp_index: 0,
            rtcp_index: super::FastMap::default(),
            rx_streams: super::FastMap::default(),
        })
    }

    /// `out` := SRTP of the RTP packet `header` + `payload` on `ssrc` with the extended
    /// sequence number `index` (rollover counter × 65536 + sequence number).
    pub fn protect_rtp(
        &mut self,
        header: &[u8],
        payload: &[u8],
        ssrc: u32,
        index: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), SrtpError> {
        out.clear();
        out.extend_from_slice(header);
        let start = out.len();
        let roc = (index >> 16) as u32;
        match &mut self.tx_rtp {
            Ctx::Gcm { cipher, salt } => {
                let iv = AeadAes128Gcm::rtp_iv(*salt, ssrc, roc, index as u16);
                out.resize(start + payload.len() + GCM_TAG, 0);
                cipher.seal(&iv, header, payload, &mut out[start..])?;
            }
            Ctx::Cm { cipher, salt, auth } => {
                let index = index & 0xffff_ffff_ffff;
                let iv = Aes128CmSha1_80::rtp_iv(*salt, ssrc, index);
                out.resize(start + payload.len() + CTR_PAD, 0);
                cipher
                    .encrypt(&iv, payload, &mut out[start..])
                    .map_err(|_| SrtpError::Cipher)?;
                let end = start + payload.len();
                out.truncate(end);
                out.resize(end + HMAC_TAG, 0);
                let hmac = self.hmac;
                Aes128CmSha1_80::rtp_hmac(|k, d| hmac.sha1_hmac(k, d), auth, out, index, end);
            }
        }
        Ok(())
    }

    /// The payload (with any padding) of the endpoint's SRTP packet `data`, whose header is
    /// `hdr_len` bytes, into the start of `out` (which is only grown, never cleared, so a
    /// reused buffer costs no zeroing). Returns the packet's index (rollover counter × 65536
    /// + sequence number: an extended sequence number) and the payload's length.
    pub fn unprotect_rtp(
        &mut self,
        data: &[u8],
        hdr_len: usize,
        ssrc: u32,
        seq: u16,
        out: &mut Vec<u8>,
    ) -> Result<(u64, usize), SrtpError> {
        let st = self.rx_streams.get(&ssrc).copied().unwrap_or_default();
        let index = st.estimate(seq);
        if st.replayed(index) {
            return Err(SrtpError::Replay);
        }
        let roc = (index >> 16) as u32;
        if out.len() < data.len() + CTR_PAD {
            out.resize(data.len() + CTR_PAD, 0);
        }
        let len = match &mut self.rx_rtp {
            Ctx::Gcm { cipher, salt } => {
                if data.len() < hdr_len + GCM_TAG {
                    return Err(SrtpError::Short);
                }
                let iv = AeadAes128Gcm::rtp_iv(*salt, ssrc, roc, seq);
                cipher.open(&iv, &[&data[..hdr_len]], &data[hdr_len..], out)?
            }
            Ctx::Cm { cipher, salt, auth } => {
                if data.len() < hdr_len + HMAC_TAG {
                    return Err(SrtpError::Short);
                }
                let (body, tag) = data.split_at(data.len() - HMAC_TAG);
                let hmac = self.hmac;
                if !Aes128CmSha1_80::rtp_verify(|k, d| hmac.sha1_hmac(k, d), auth, body, index, tag)
                {
                    return Err(SrtpError::Auth);
                }
                let iv = Aes128CmSha1_80::rtp_iv(*salt, ssrc, index & 0xffff_ffff_ffff);
                cipher
                    .decrypt(&iv, &body[hdr_len..], out)
                    .map_err(|_| SrtpError::Cipher)?;
                body.len() - hdr_len
            }
        };
        self.rx_streams.entry(ssrc).or_default().accept(index);
        Ok((index, len))
    }

    /// Keep the receive state of the incoming SSRCs `keep` says are still signalled.
    pub fn retain_rx(&mut self, keep: impl Fn(u32) -> bool) {
        self.rx_streams.retain(|s, _| keep(*s));
    }

    /// `out` := SRTCP of the (compound) RTCP packet `plain`.
    pub fn protect_rtcp(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        if plain.len() < 8 {
            return Err(SrtpError::Short);
        }
        let index = self.srtcp_index;
        self.srtcp_index = (index + 1) & !SRTCP_E;
        let ssrc = u32::from_be_bytes([plain[4], plain[5], plain[6], plain[7]]);
        let trailer = (SRTCP_E | index).to_be_bytes();
        out.clear();
        out.extend_from_slice(&plain[..8]);
        let body = &plain[8..];
        match &mut self.tx_rtcp {
            Ctx::Gcm { cipher, salt } => {
                let iv = AeadAes128Gcm::rtcp_iv(*salt, ssrc, index);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&plain[..8]);
                aad[8..].copy_from_slice(&trailer);
                out.resize(8 + body.len() + GCM_TAG, 0);
                cipher.seal(&iv, &aad, body, &mut out[8..])?;
                out.extend_from_slice(&trailer);
            }
            Ctx::Cm { cipher, salt, auth } => {
                let iv = Aes128CmSha1_80::rtp_iv(*salt, ssrc, u64::from(index));
                out.resize(8 + body.len() + CTR_PAD, 0);
                cipher
                    .encrypt(&iv, body, &mut out[8..])
                    .map_err(|_| SrtpError::Cipher)?;
                out.truncate(8 + body.len());
                out.extend_from_slice(&trailer);
                let end = out.len();
                out.resize(end + HMAC_TAG, 0);
                let hmac = self.hmac;
                Aes128CmSha1_80::rtcp_hmac(|k, d| hmac.sha1_hmac(k, d), auth, out, end);
            }
        }
        Ok(())
    }

    /// `out` := the RTCP inside the endpoint's SRTCP packet `data`.
    pub fn unprotect_rtcp(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        let tag = match self.rx_rtcp {
            Ctx::Cm { .. } => HMAC_TAG,
            _ => GCM_TAG,
        };
        let trailer_end = match self.rx_rtcp {
            Ctx::Cm { .. } => data.len().checked_sub(HMAC_TAG).ok_or(SrtpError::Short)?,
            _ => data.len(),
        };
        if trailer_end < 8 + 4 + if tag == GCM_TAG { GCM_TAG } else { 0 } {
            return Err(SrtpError::Short);
        }
        let t = &data[trailer_end - 4..trailer_end];
        let e_index = u32::from_be_bytes([t[0], t[1], t[2], t[3]]);
        if e_index & SRTCP_E == 0 {
            return Err(SrtpError::Unencrypted);
        }
        let index = e_index & !SRTCP_E;
        let ssrc = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        out.clear();
        out.extend_from_slice(&data[..8]);
        let body = &data[8..trailer_end - 4];
        match &mut self.rx_rtcp {
            Ctx::Gcm { cipher, salt } => {
                let iv = AeadAes128Gcm::rtcp_iv(*salt, ssrc, index);
                out.resize(8 + body.len(), 0);
                let n = cipher.open(&iv, &[&data[..8], t], body, &mut out[8..])?;
                out.truncate(8 + n);
            }
            Ctx::Cm { cipher, salt, auth } => {
                let hmac = self.hmac;
                if !Aes128CmSha1_80::rtcp_verify(
                    |k, d| hmac.sha1_hmac(k, d),
                    auth,
                    &data[..trailer_end],
                    &data[trailer_end..],
                ) {
                    return Err(SrtpError::Auth);
                }
                let iv = Aes128CmSha1_80::rtp_iv(*salt, ssrc, u64::from(index));
                out.resize(8 + body.len() + CTR_PAD, 0);
                cipher
                    .decrypt(&iv, body, &mut out[8..])
                    .map_err(|_| SrtpError::Cipher)?;
                out.truncate(8 + body.len());
            }
        }
        let senders = self.rtcp_index.len();
        let window = match self.rtcp_index.entry(ssrc) {
            Entry::Occupied(w) => w.into_mut(),
            Entry::Vacant(v) if senders < MAX_RTCP_SENDERS => v.insert(RxIndex::default()),
            Entry::Vacant(_) => return Err(SrtpError::TooManyRtcpSenders),
        };
        if !window.check_and_set(u64::from(index)) {
            return Err(SrtpError::Replay);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(profile: SrtpProfile) -> (Srtp, Srtp) {
        let len = match profile {
            SrtpProfile::AES128_CM_SHA1_80 => 60,
            SrtpProfile::AEAD_AES_128_GCM => 56,
            _ => 88,
        };
        let material: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let a = Srtp::new(&MasterKeys {
            profile,
            material: material.clone(),
            active: true,
        })
        .unwrap();
        let b = Srtp::new(&MasterKeys {
            profile,
            material,
            active: false,
        })
        .unwrap();
        (a, b)
    }

    #[test]
    fn key_derivation_matches_rfc3711_b3() {
        let master = [
            0xE1, 0xF9, 0x7A, 0x0D, 0x3E, 0x01, 0x8B, 0xE0, 0xD6, 0x4F, 0xA3, 0x2C, 0x06, 0xDE,
            0x41, 0x39,
        ];
        let salt = [
            0x0E, 0xC6, 0x75, 0xAD, 0x49, 0x8A, 0xFE, 0xEB, 0xB6, 0x96, 0x0B, 0x3A, 0xAB, 0xE6,
        ];
        let p = crypto_provider().srtp_provider;
        let mut key = [0u8; 16];
        derive(p, &master, &salt, 0, &mut key);
        assert_eq!(
            key,
            [
                0xC6, 0x1E, 0x7A, 0x93, 0x74, 0x4F, 0x39, 0xEE, 0x10, 0x73, 0x4A, 0xFE, 0x3F, 0xF7,
                0xA0, 0x87
            ]
        );
        let mut s = [0u8; 14];
        derive(p, &master, &salt, 2, &mut s);
        assert_eq!(
            s,
            [
                0x30, 0xCB, 0xBC, 0x08, 0x86, 0x3D, 0x8C, 0x85, 0xD4, 0x9D, 0xB3, 0x4A, 0x9A, 0xE1
            ]
        );
        let mut auth = [0u8; 20];
        derive(p, &master, &salt, 1, &mut auth);
        assert_eq!(
            auth[..4],
            [0xCE, 0xBE, 0x32, 0x1F],
            "first bytes of the RFC 3711 B.3 authentication key"
        );
    }

    #[test]
    fn srtcp_round_trips_and_rejects_tampering_and_replay() {
        for profile in [
            SrtpProfile::AES128_CM_SHA1_80,
            SrtpProfile::AEAD_AES_128_GCM,
            SrtpProfile::AEAD_AES_256_GCM,
        ] {
            let (mut a, mut b) = pair(profile);
            // A PLI: V=2 FMT=1 PT=206 len=2, sender 1, media 2.
            let pli = [0x81, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
            let mut wire = Vec::new();
            a.protect_rtcp(&pli, &mut wire).unwrap();
            assert_ne!(&wire[8..12], &pli[8..12], "{profile}: body encrypted");
            let mut plain = Vec::new();
            b.unprotect_rtcp(&wire, &mut plain).unwrap();
            assert_eq!(plain, pli, "{profile}");
            assert_eq!(
                b.unprotect_rtcp(&wire, &mut plain),
                Err(SrtpError::Replay),
                "{profile}"
            );
            let mut bad = wire.clone();
            bad[9] ^= 1;
            assert_eq!(
                b.unprotect_rtcp(&bad, &mut plain),
                Err(SrtpError::Auth),
                "{profile}"
            );
            assert!(b.unprotect_rtcp(&wire[..10], &mut plain).is_err());
            // The other direction uses the other half of the material.
            let mut back = Vec::new();
            b.protect_rtcp(&pli, &mut back).unwrap();
            assert_eq!(a.unprotect_rtcp(&back, &mut plain), Ok(()));
            assert!(a.unprotect_rtcp(&wire, &mut plain).is_err());
        }
    }

    #[test]
    fn srtcp_replay_windows_are_per_sender_ssrc() {
        let (mut a, mut b) = pair(SrtpProfile::AEAD_AES_256_GCM);
        // A browser that sends no media: two receive-only channels (sender SSRCs 1 and 7),
        // each counting its own SRTCP index from 0.
        let pli = |sender: u8| [0x81, 206, 0, 2, 0, 0, 0, sender, 0, 0, 0, 2];
        let mut plain = Vec::new();
        for i in 0..3 {
            for sender in [1, 7] {
                let mut wire = Vec::new();
                a.srtcp_index = i;
                a.protect_rtcp(&pli(sender), &mut wire).unwrap();
                assert_eq!(
                    b.unprotect_rtcp(&wire, &mut plain),
                    Ok(()),
                    "index {i} of {sender}"
                );
                assert_eq!(b.unprotect_rtcp(&wire, &mut plain), Err(SrtpError::Replay));
            }
        }
    }

    #[test]
    fn srtp_packets_open_with_the_peers_keys() {
        let hdr = [0x80, 0x60, 0x12, 0x34, 0, 0, 0, 9, 0xca, 0xfe, 0xba, 0xbe];
        let payload: Vec<u8> = (0..100u8).collect();
        let (ssrc, index) = (0xcafe_babe_u32, 0x0002_1234_u64);
        for (profile, ml, sl) in [
            (SrtpProfile::AES128_CM_SHA1_80, 16, 14),
            (SrtpProfile::AEAD_AES_128_GCM, 16, 12),
            (SrtpProfile::AEAD_AES_256_GCM, 32, 12),
        ] {
            let material: Vec<u8> = (0..2 * ml + 2 * sl).map(|i| (i * 7 + 3) as u8).collect();
            let mut a = Srtp::new(&MasterKeys {
                profile,
                material: material.clone(),
                active: true,
            })
            .unwrap();
            let mut wire = Vec::new();
            a.protect_rtp(&hdr, &payload, ssrc, index, &mut wire)
                .unwrap();
            assert_eq!(&wire[..12], &hdr, "{profile}: header in the clear");
            // The peer (DTLS server) reads with the client's write key and salt.
            let p = crypto_provider().srtp_provider;
            let rx = Ctx::new(
                p,
                profile,
                &material[..ml],
                &material[2 * ml..2 * ml + sl],
                false,
                false,
            )
            .unwrap();
            let mut plain = vec![0u8; payload.len() + CTR_PAD];
            match rx {
                Ctx::Cm {
                    mut cipher,
                    salt,
                    auth,
                } => {
                    assert_eq!(wire.len(), 12 + payload.len() + HMAC_TAG);
                    let hmac = crypto_provider().sha1_hmac_provider;
                    let (body, tag) = wire.split_at(wire.len() - HMAC_TAG);
                    assert!(Aes128CmSha1_80::rtp_verify(
                        |k, d| hmac.sha1_hmac(k, d),
                        &auth,
                        body,
                        index,
                        tag
                    ));
                    let iv = Aes128CmSha1_80::rtp_iv(salt, ssrc, index);
                    cipher.decrypt(&iv, &body[12..], &mut plain).unwrap();
                }
                Ctx::Gcm { mut cipher, salt } => {
                    let iv = AeadAes128Gcm::rtp_iv(salt, ssrc, (index >> 16) as u32, index as u16);
                    let n = cipher
                        .open(&iv, &[&wire[..12]], &wire[12..], &mut plain)
                        .unwrap();
                    assert_eq!(n, payload.len());
                }
            }
            assert_eq!(&plain[..payload.len()], &payload[..], "{profile}");
        }
    }

    #[test]
    fn srtp_round_trip_with_rollover_and_replay() {
        for profile in [
            SrtpProfile::AES128_CM_SHA1_80,
            SrtpProfile::AEAD_AES_128_GCM,
            SrtpProfile::AEAD_AES_256_GCM,
        ] {
            let (mut a, mut b) = pair(profile);
            let ssrc = 77;
            let mut wire = Vec::new();
            let mut plain = Vec::new();
            // Across a rollover, with one packet late and one replayed.
            let order: Vec<u64> = vec![65_533, 65_534, 65_536, 65_535, 65_537, 65_537];
            for (i, index) in order.iter().enumerate() {
                let seq = *index as u16;
                let mut hdr = vec![0x80, 96, 0, 0, 0, 0, 0, 1, 0, 0, 0, 77];
                hdr[2..4].copy_from_slice(&seq.to_be_bytes());
                let payload = vec![*index as u8; 50];
                a.protect_rtp(&hdr, &payload, ssrc, *index, &mut wire)
                    .unwrap();
                let r = b.unprotect_rtp(&wire, 12, ssrc, seq, &mut plain);
                if i == 5 {
                    assert_eq!(r, Err(SrtpError::Replay), "{profile}");
                } else {
                    assert_eq!(r, Ok((*index, payload.len())), "{profile} {index}");
                    assert_eq!(&plain[..payload.len()], &payload[..], "{profile}");
                }
            }
            let mut bad = wire.clone();
            bad[20] ^= 1;
            let seq = 3u16;
            bad[2..4].copy_from_slice(&seq.to_be_bytes());
            assert!(b.unprotect_rtp(&bad, 12, ssrc, seq, &mut plain).is_err());
            assert!(
                b.unprotect_rtp(&wire[..14], 12, ssrc, 5, &mut plain)
                    .is_err()
            );
        }
    }

    #[test]
    fn replay_window() {
        let mut r = RxIndex::default();
        assert!(r.check_and_set(10));
        assert!(r.check_and_set(12));
        assert!(r.check_and_set(11));
        assert!(!r.check_and_set(11));
        assert!(r.check_and_set(200));
        assert!(!r.check_and_set(12), "too old");
        assert!(r.check_and_set(199));
    }

    fn unhex(h: &str) -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    }

    /// libsrtp's output (tests/python/srtp_vectors.py, through pylibsrtp) for all three
    /// profiles: meetd writes the same bytes (RTP across a rollover, SRTCP) and opens them.
    #[test]
    fn matches_libsrtp() {
        let vectors = include_str!("testdata/libsrtp_vectors.txt");
        let mut tx: Option<Srtp> = None;
        let mut rx: Option<Srtp> = None;
        let mut checked = [0usize; 3];
        for line in vectors.lines().filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split(' ').collect();
            let profile = match f[0] {
                "AES128_CM_SHA1_80" => SrtpProfile::AES128_CM_SHA1_80,
                "AEAD_AES_128_GCM" => SrtpProfile::AEAD_AES_128_GCM,
                "AEAD_AES_256_GCM" => SrtpProfile::AEAD_AES_256_GCM,
                other => panic!("profile {other}"),
            };
            match f[1] {
                "keys" => {
                    let keys = |active| MasterKeys {
                        profile,
                        material: unhex(f[2]),
                        active,
                    };
                    // The vectors are protected with the server's keys: what meetd sends as
                    // the DTLS server, and receives as the DTLS client.
                    tx = Srtp::new(&keys(false));
                    rx = Srtp::new(&keys(true));
                }
                "rtp" => {
                    let (tx, rx) = (tx.as_mut().unwrap(), rx.as_mut().unwrap());
                    let index: u64 = f[2].parse().unwrap();
                    let (hdr, payload, wire) = (unhex(f[3]), unhex(f[4]), unhex(f[5]));
                    let mut out = Vec::new();
                    tx.protect_rtp(&hdr, &payload, 0xCAFE_BABE, index, &mut out)
                        .unwrap();
                    assert_eq!(out, wire, "{line}");
                    let mut plain = Vec::new();
                    let seq = u16::from_be_bytes([wire[2], wire[3]]);
                    let (got, len) = rx
                        .unprotect_rtp(&wire, hdr.len(), 0xCAFE_BABE, seq, &mut plain)
                        .unwrap();
                    assert_eq!(got, index, "{line}");
                    assert_eq!(&plain[..len], &payload[..], "{line}");
                    checked[0] += 1;
                }
                "rtcp" => {
                    let (tx, rx) = (tx.as_mut().unwrap(), rx.as_mut().unwrap());
                    let index: u32 = f[2].parse().unwrap();
                    let (plain, wire) = (unhex(f[3]), unhex(f[4]));
                    tx.srtcp_index = index;
                    let mut out = Vec::new();
                    tx.protect_rtcp(&plain, &mut out).unwrap();
                    assert_eq!(out, wire, "{line}");
                    let mut back = Vec::new();
                    rx.unprotect_rtcp(&wire, &mut back).unwrap();
                    assert_eq!(back, plain, "{line}");
                    checked[1] += 1;
                }
                other => panic!("line kind {other}"),
            }
            checked[2] += 1;
        }
        assert_eq!(
            checked[..2],
            [18, 9],
            "every vector of the file was checked"
        );
    }
}
