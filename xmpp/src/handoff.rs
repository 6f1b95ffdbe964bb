//! Stream resumption across a restart (docs/operations.md "Restarts").
//!
//! When meetd stops, each resumable session (XEP-0198) leaves a record: its resumption id,
//! its full JID and how many of the client's stanzas it handled. The next meetd on the same
//! data directory reads the records back, once, and lets each client resume its stream
//! there: the client's library sees a resumed stream, not a failed one, and goes on to
//! notice the new shard (the `x-jitsi-shard` header) and join again in place, instead of
//! reloading the page. Nothing of the session's state but those three values moves; the
//! rooms and the media are built anew by that second join.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One resumable session of a stopped meetd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The resumption id the client holds (`previd`).
    pub id: String,
    /// The full JID the session was bound to.
    pub jid: String,
    /// Stanzas of the client's the session handled: the `h` the resumed stream reports.
    pub h: u32,
}

/// The file a stopping meetd writes.
#[derive(Debug, Serialize, Deserialize)]
pub struct File {
    /// When it was written (Unix seconds).
    pub written: u64,
    pub sessions: Vec<Record>,
}

impl File {
    pub fn new(sessions: Vec<Record>, now: SystemTime) -> File {
        File {
            written: now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            sessions,
        }
    }

    /// The records still worth offering at `now`: a client gives up resuming after about
    /// the server's resumption timeout, so older files are ignored.
    pub fn fresh(self, now: SystemTime, timeout: Duration) -> Vec<Record> {
        let written = UNIX_EPOCH + Duration::from_secs(self.written);
        match now.duration_since(written) {
            Ok(age) if age <= timeout => self.sessions,
            // A clock that went backwards: not older than the timeout, as far as we know.
            Err(_) => self.sessions,
            Ok(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_expire_with_the_resumption_timeout() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let rec = Record {
            id: "abc".into(),
            jid: "u@meet.jitsi/r".into(),
            h: 7,
        };
        let f = File::new(vec![rec.clone()], t0);
        let json = serde_json::to_string(&f).unwrap();
        let back: File = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.fresh(t0 + Duration::from_secs(30), Duration::from_secs(60)),
            vec![rec]
        );
        let back: File = serde_json::from_str(&json).unwrap();
        assert!(
            back.fresh(t0 + Duration::from_secs(61), Duration::from_secs(60))
                .is_empty()
        );
    }
}
