//! What a receiver asks of the video it gets (its bridge channel's ReceiverVideoConstraints),
//! as the engine uses it to choose what to forward. The bridge channel (`crate::channel`)
//! parses the JSON into this; the engine knows nothing of the channel.

use std::collections::HashMap;

/// A receiver's video wishes, kept as the bridge last saw them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReceiverConstraints {
    pub last_n: Option<i64>,
    pub default_max_height: Option<i64>,
    /// Source name → maxHeight.
    pub constraints: HashMap<String, i64>,
    pub on_stage: Vec<String>,
    pub selected: Vec<String>,
}

impl ReceiverConstraints {
    /// How the receiver ranks a source (docs/bridge.md B.8): 0 on stage, 1 selected, 2 neither.
    pub fn rank(&self, source: &str) -> u8 {
        if self.on_stage.iter().any(|x| x == source) {
            0
        } else if self.selected.iter().any(|x| x == source) {
            1
        } else {
            2
        }
    }
}
