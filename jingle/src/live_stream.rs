//! Live streaming done by meetd itself (docs/streaming.md), as the focus sees it: a
//! [`LiveStreams`] service takes a moderator's stream session when no Jibri is registered.
//! The session then runs under the recorder name [`NATIVE`] in [`crate::jibri::Recorder`],
//! exactly as a Jibri's would, and meetd's own occupant (`FocusConfig::streamer_jid`) sits
//! in the room while it runs, as a Jibri's browser would: the clients leave peer-to-peer for
//! the bridge, and a lone teacher is put on the bridge too.

use meetd_xmpp::stanza::StanzaError;

use crate::jibri::{StartRequest, Status};

/// The recorder name of sessions meetd runs itself (never an occupant JID: no `@`).
pub const NATIVE: &str = "meetd-native-egress";

/// Where a native session reports its later states (`on`; `off`, with a failure).
pub type StatusFn = Box<dyn Fn(Status) + Send + Sync>;

/// meetd's own live streaming and recording.
pub trait LiveStreams: Send + Sync {
    /// Start session `req` of the conference whose bridge meeting id is `meeting_id`; the
    /// error is what the requester gets (the app reads its condition: `service-unavailable`
    /// for unavailable, `resource-constraint` for busy).
    fn start(
        &self,
        req: &StartRequest,
        meeting_id: &str,
        status: StatusFn,
    ) -> Result<(), (StanzaError, String)>;
    /// Stop a session (no answer).
    fn stop(&self, session_id: &str);
}
