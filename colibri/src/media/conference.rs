//! One conference on the bridge: who is in it, in join order, and who is speaking. The
//! endpoints themselves live in the engine's table by id (the datagram path finds them by
//! address or ICE username without knowing the conference); a conference holds their ids.

use super::broadcast::Broadcast;
use super::endpoint::EpId;
use super::speech::SpeechActivity;

#[derive(Debug, Default)]
pub(super) struct Conference {
    /// Members in join order.
    pub members: Vec<EpId>,
    /// Dominant speaker identification, from the first audio level on.
    pub speech: Option<SpeechActivity>,
    /// The live-stream feed, while one runs (docs/streaming.md).
    pub broadcast: Option<Broadcast>,
}

impl Conference {
    /// An audio level from `sender` (0 loud … 127 silent).
    pub fn level(&mut self, sender: EpId, level: u8, now: std::time::Instant) {
        self.speech
            .get_or_insert_with(SpeechActivity::default)
            .level(sender, level, now);
    }

    /// Take `id` out; whether it was among the recent speakers.
    pub fn remove(&mut self, id: EpId) -> bool {
        self.members.retain(|x| *x != id);
        self.speech.as_mut().is_some_and(|sa| sa.remove(id))
    }

    /// The recent speakers, dominant first.
    pub fn recent_speakers(&self) -> &[EpId] {
        self.speech.as_ref().map_or(&[], |sa| sa.recent())
    }

    /// When the speech detector next needs a timeout.
    pub fn next_timeout(&self) -> Option<std::time::Instant> {
        let speech = self.speech.as_ref().and_then(SpeechActivity::next_timeout);
        let feed = self.broadcast.as_ref().map(Broadcast::next_timeout);
        speech.into_iter().chain(feed).min()
    }
}
