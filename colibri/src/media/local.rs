//! Endpoints inside the process (docs/bridge.md B.11): meetd's SIP gateway sends and
//! receives a phone caller's audio as an endpoint of the conference, over loopback, without
//! ICE or DTLS. The focus allocates it like any participant; the gateway then attaches it
//! here, naming it by the ICE username fragment the allocation gave it (which only the
//! invited party learns) and handing over the SRTP keys both sides use. From then on the
//! endpoint is on the fast path as any connected endpoint is.

use super::srtp::MasterKeys;
use super::*;

impl MediaEngine {
    /// Attach the endpoint whose local ufrag is `ufrag` to the in-process peer at `remote`,
    /// sending from the engine's `local` address with `keys` (the bridge's side). Whether
    /// this shard has that endpoint (every shard is asked).
    pub fn attach_local(
        &mut self,
        ufrag: &str,
        local: SocketAddr,
        remote: SocketAddr,
        keys: &MasterKeys,
        now: Instant,
    ) -> bool {
        let now = self.tick(now);
        let Some(&id) = self.by_ufrag.get(ufrag) else {
            return false;
        };
        let Some(srtp) = Srtp::new(keys) else {
            tracing::warn!("local endpoint: unusable SRTP keys");
            return false;
        };
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return false;
        };
        let local = self
            .cfg
            .local_addrs
            .iter()
            .copied()
            .find(|a| *a == local)
            .unwrap_or(local);
        ep.caps.fast_egress = true;
        ep.transport.srtp = Some(srtp);
        ep.transport.send_path = Some(Path {
            from: local,
            to: remote,
            proto: Protocol::Udp,
        });
        ep.transport.connected = true;
        ep.transport.last_rx = Some(now);
        if !ep.transport.connected_once {
            ep.transport.connected_once = true;
            self.stats.connected_udp += 1;
        }
        if self.by_addr.insert(remote, id) != Some(id)
            && let Some(ep) = self.endpoints.get_mut(&id)
        {
            ep.transport.addrs.push(remote);
        }
        tracing::debug!(conference = %self.endpoints.get(&id).map(|e| e.conference.as_str()).unwrap_or(""), "local endpoint attached");
        self.update_status(id);
        self.mark_dirty(id);
        true
    }
}
