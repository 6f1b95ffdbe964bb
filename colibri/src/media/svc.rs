//! SVC forwarding (docs/bridge.md B.13): one stream (one SSRC) carrying several spatial and
//! temporal layers, as the web app sends AV1 and VP9 with scalability modes such as L3T3_KEY.
//!
//! The sender's side ([`SvcStream`]) reads each packet's layer: from the AV1 dependency
//! descriptor (its template structure arrives with keyframes) or from the VP9 payload
//! descriptor. It offers one choice per spatial layer (a "view": that layer at its full frame
//! rate), measures each view's rate, and says which decode targets each frame belongs to.
//!
//! The receiver's side ([`SvcFilter`], one per forwarded stream) keeps the decode target the
//! receiver gets, switches only where the sender marked a switch point (a keyframe for a
//! spatial layer up; at once when every frame of the new target is part of the current one),
//! drops the frames the target does not need, and sets the RTP marker on the last packet of
//! the highest spatial layer forwarded, which ends the picture for the receiver's decoder.

use std::sync::Arc;
use std::time::Instant;

use crate::rtp::dd::{self, DTI_NOT_PRESENT, DTI_SWITCH, MAX_DECODE_TARGETS, Structure};
use crate::rtp::payload::{VideoCodec, vp9_layers};

/// Spatial layers offered per SVC stream at most.
pub(super) const MAX_SPATIAL: usize = 4;
/// Choices (decode targets) offered per SVC stream at most.
pub(super) const MAX_VIEWS: usize = 16;

/// The choices one SVC stream offers receivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SvcLayout {
    /// Per view, lowest first (by spatial, then temporal layer): its decode target.
    pub targets: Vec<u8>,
    /// Per decode target: its spatial layer.
    pub dt_spatial: Vec<u8>,
    /// Per decode target: the decode targets whose frames are all part of it (switching down
    /// to one of them needs no switch point).
    pub within: Vec<u32>,
    /// Per view: the signalled height of its spatial layer.
    pub heights: Vec<Option<u32>>,
    /// Spatial layers in the stream.
    pub spatial_layers: usize,
}

impl SvcLayout {
    /// The layout of an AV1 template structure; `None` with fewer than two spatial layers
    /// (then every frame is forwarded, as a plain stream).
    pub fn from_structure(s: &Structure) -> Option<SvcLayout> {
        let n = s.decode_targets.min(MAX_DECODE_TARGETS);
        let layers: Vec<(u8, u8)> = (0..n).map(|dt| s.decode_target_layer(dt)).collect();
        let mut targets: Vec<u8> = (0..n as u8)
            .filter(|&dt| usize::from(layers[usize::from(dt)].0) < MAX_SPATIAL)
            .collect();
        targets.sort_by_key(|&dt| (layers[usize::from(dt)], dt));
        targets.dedup_by_key(|dt| layers[usize::from(*dt)]);
        targets.truncate(MAX_VIEWS);
        let spatial_layers = targets
            .iter()
            .map(|&dt| usize::from(layers[usize::from(dt)].0) + 1)
            .max()
            .unwrap_or(0);
        if spatial_layers < 2 {
            return None;
        }
        let heights = targets
            .iter()
            .map(|&dt| {
                let sp = usize::from(layers[usize::from(dt)].0);
                s.resolutions.get(sp).map(|r| r.1)
            })
            .collect();
        let within = (0..n)
            .map(|a| {
                (0..n)
                    .filter(|&b| {
                        s.templates
                            .iter()
                            .all(|t| t.dti(b) == DTI_NOT_PRESENT || t.dti(a) != DTI_NOT_PRESENT)
                    })
                    .fold(0u32, |m, b| m | 1 << b)
            })
            .collect();
        Some(SvcLayout {
            targets,
            dt_spatial: layers.iter().map(|l| l.0).collect(),
            within,
            heights,
            spatial_layers,
        })
    }

    /// VP9 without a dependency descriptor: decode target `k` is spatial layer `k` with every
    /// lower one (the payload descriptor does not say which lower frames a layer skips).
    pub fn vp9(layers: usize, heights: &[u16]) -> SvcLayout {
        let layers = layers.clamp(1, MAX_SPATIAL);
        SvcLayout {
            targets: (0..layers as u8).collect(),
            dt_spatial: (0..layers as u8).collect(),
            within: (0..layers).map(|k| (1u32 << (k + 1)) - 1).collect(),
            heights: (0..layers)
                .map(|k| heights.get(k).filter(|h| **h > 0).map(|h| u32::from(*h)))
                .collect(),
            spatial_layers: layers,
        }
    }

    pub fn views(&self) -> usize {
        self.targets.len()
    }

    /// The spatial layer of view `view`.
    pub fn view_spatial(&self, view: usize) -> usize {
        self.targets
            .get(view)
            .and_then(|&dt| self.dt_spatial.get(usize::from(dt)))
            .map_or(0, |s| usize::from(*s))
    }

    /// Whether view `view` is its spatial layer at the full frame rate (the last of its layer).
    pub fn full_rate(&self, view: usize) -> bool {
        view + 1 >= self.views() || self.view_spatial(view + 1) != self.view_spatial(view)
    }
}

/// One frame of an SVC stream as forwarding sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FrameInfo {
    pub start: bool,
    pub end: bool,
    pub spatial: u8,
    /// The decode targets that need the frame.
    pub present: u32,
    /// The decode targets a receiver may switch to at this frame.
    pub switch: u32,
}

/// Measurements of one view of a stream.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ViewStats {
    pub bytes: u64,
    pub bps: u64,
    pub last_seen: Option<Instant>,
}

/// The sender's side of one SVC stream.
#[derive(Debug, Clone, Default)]
pub(super) struct SvcStream {
    structure: Option<Arc<Structure>>,
    pub layout: Option<Arc<SvcLayout>>,
    /// Changes with every new layout: receivers' decode targets refer to one.
    pub generation: u32,
    pub views: [ViewStats; MAX_VIEWS],
    /// Descriptors that could not be read.
    pub errors: u64,
}

impl SvcStream {
    /// Read one packet's layer (`bytes` long, arriving `now`); `Some` for a stream with
    /// spatial layers to choose from.
    pub fn observe(
        &mut self,
        codec: VideoCodec,
        dd: Option<&[u8]>,
        payload: &[u8],
        now: Instant,
        bytes: u64,
    ) -> Option<FrameInfo> {
        let frame = match dd {
            Some(d) => self.observe_dd(d)?,
            None if codec == VideoCodec::Vp9 => self.observe_vp9(payload)?,
            None => return None,
        };
        let layout = self.layout.as_ref()?;
        for (k, &dt) in layout.targets.iter().enumerate() {
            let v = &mut self.views[k];
            if frame.present & 1 << dt != 0 {
                v.bytes += bytes;
            }
            if layout.dt_spatial.get(usize::from(dt)) == Some(&frame.spatial) {
                v.last_seen = Some(now);
            }
        }
        Some(frame)
    }

    fn set_layout(&mut self, layout: Option<SvcLayout>) {
        if self.layout.as_deref() != layout.as_ref() {
            self.layout = layout.map(Arc::new);
            self.generation = self.generation.wrapping_add(1);
            self.views = Default::default();
        }
    }

    fn observe_dd(&mut self, data: &[u8]) -> Option<FrameInfo> {
        let d = match dd::parse(data, self.structure.as_deref()) {
            Ok(d) => d,
            Err(_) => {
                self.errors += 1;
                return None;
            }
        };
        if let Some(s) = d.structure.clone()
            && self.structure.as_deref() != Some(&s)
        {
            self.set_layout(SvcLayout::from_structure(&s));
            self.structure = Some(Arc::new(s));
        }
        let n = self
            .structure
            .as_ref()?
            .decode_targets
            .min(MAX_DECODE_TARGETS);
        let (mut present, mut switch) = (0u32, 0u32);
        for dt in 0..n {
            match d.dti(dt) {
                DTI_NOT_PRESENT => {}
                DTI_SWITCH => {
                    present |= 1 << dt;
                    switch |= 1 << dt;
                }
                _ => present |= 1 << dt,
            }
        }
        Some(FrameInfo {
            start: d.start_of_frame,
            end: d.end_of_frame,
            spatial: d.spatial,
            present,
            switch,
        })
    }

    fn observe_vp9(&mut self, payload: &[u8]) -> Option<FrameInfo> {
        let v = vp9_layers(payload)?;
        let have = self.layout.as_ref().map_or(0, |l| l.views());
        if v.layers > 1 {
            let layout = SvcLayout::vp9(usize::from(v.layers), &v.heights[..usize::from(v.layers)]);
            self.set_layout(Some(layout));
        } else if usize::from(v.spatial) + 1 > have.max(1) {
            let heights: Vec<u16> = self
                .layout
                .as_ref()
                .map(|l| l.heights.iter().map(|h| h.unwrap_or(0) as u16).collect())
                .unwrap_or_default();
            self.set_layout(Some(SvcLayout::vp9(usize::from(v.spatial) + 1, &heights)));
        }
        let views = self.layout.as_ref()?.views() as u32;
        let all = (1u32 << views) - 1;
        let spatial = u32::from(v.spatial).min(views - 1);
        // The frame is part of its own spatial layer's target and every higher one.
        let present = all & !((1u32 << spatial) - 1);
        // A picture that is not predicted from an earlier one starts every target from its
        // layer up.
        let switch = if v.intra { present } else { 0 };
        Some(FrameInfo {
            start: v.start,
            end: v.end,
            spatial: spatial as u8,
            present,
            switch,
        })
    }
}

/// What to do with one packet for one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Verdict {
    pub forward: bool,
    /// Set the RTP marker: the packet ends the receiver's picture.
    pub mark: bool,
    /// The receiver waits for a switch point: ask the sender for a keyframe.
    pub want_keyframe: bool,
    /// The decode target changed from one to another at this packet.
    pub switched: bool,
}

/// The receiver's side of one SVC stream: the decode target it gets.
#[derive(Debug, Clone, Default)]
pub(super) struct SvcFilter {
    generation: Option<u32>,
    current: Option<u8>,
    /// The spatial layer whose frame ends are marked.
    pub mark_spatial: Option<u8>,
}

impl SvcFilter {
    /// The decode target forwarded now.
    #[cfg(test)]
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// Start over (another source rides on the stream).
    pub fn reset(&mut self) {
        *self = SvcFilter::default();
    }

    /// Decide for one packet of frame `f`, the receiver's choice being view `view` of
    /// `layout` (generation `generation`).
    pub fn decide(
        &mut self,
        f: &FrameInfo,
        view: usize,
        layout: &SvcLayout,
        generation: u32,
    ) -> Verdict {
        if self.generation != Some(generation) {
            self.generation = Some(generation);
            self.current = None;
            self.mark_spatial = None;
        }
        let target = layout.targets[view.min(layout.views() - 1)];
        let mut want_keyframe = false;
        let mut switched = false;
        if self.current != Some(target) {
            let bit = 1u32 << target;
            let ok = f.start
                && match self.current {
                    None => f.switch & bit != 0,
                    Some(c) => {
                        layout
                            .within
                            .get(usize::from(c))
                            .is_some_and(|w| w & bit != 0)
                            || f.switch & bit != 0
                    }
                };
            if ok {
                switched = self.current.is_some();
                self.current = Some(target);
                self.mark_spatial = layout.dt_spatial.get(usize::from(target)).copied();
            } else if self.current.is_none_or(|c| {
                layout.dt_spatial.get(usize::from(c)) != layout.dt_spatial.get(usize::from(target))
            }) {
                // Another spatial layer (KEY modes: at a keyframe); a frame rate up within
                // the layer waits for the sender's next switch point.
                want_keyframe = true;
            }
        }
        let Some(c) = self.current else {
            return Verdict {
                forward: false,
                mark: false,
                want_keyframe,
                switched,
            };
        };
        let forward = f.present & 1 << c != 0;
        Verdict {
            forward,
            mark: forward && f.end && Some(f.spatial) == self.mark_spatial,
            want_keyframe,
            switched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::dd::tests::descriptor;

    fn at() -> Instant {
        Instant::now()
    }

    /// Templates of the test structure: 0 S0 key, 1 S0 delta, 2 S1 key, 3 S1 delta, 4 S2 key,
    /// 5 S2 delta. One packet per frame.
    fn picture(s: &mut SvcStream, key: bool, n: &mut u16) -> Vec<FrameInfo> {
        (0..3)
            .map(|sp| {
                let t = sp * 2 + u32::from(!key);
                *n = n.wrapping_add(1);
                let d = descriptor(true, true, t, *n, key && sp == 0);
                s.observe(VideoCodec::Av1, Some(&d), &[], at(), 100)
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn av1_key_structure_layout() {
        let mut s = SvcStream::default();
        let mut n = 0;
        let f = picture(&mut s, true, &mut n);
        let l = s.layout.clone().unwrap();
        assert_eq!(l.targets, vec![0, 1, 2]);
        assert_eq!(l.heights, vec![Some(180), Some(360), Some(720)]);
        // KEY mode: no target contains another's delta frames.
        assert_eq!(l.within, vec![0b001, 0b010, 0b100]);
        assert_eq!(f[0].switch, 0b111);
        assert_eq!(s.generation, 1);
        // The same structure again: no new generation.
        picture(&mut s, true, &mut n);
        assert_eq!(s.generation, 1);
        assert_eq!(s.views[0].bytes, 200);
    }

    #[test]
    fn receiver_gets_its_layer_and_switches_on_keyframes() {
        let mut s = SvcStream::default();
        let mut n = 0;
        let key = picture(&mut s, true, &mut n);
        let l = s.layout.clone().unwrap();
        let mut r = SvcFilter::default();
        // Thumbnail: S0 only, S0's frame end is the picture end.
        let v: Vec<Verdict> = key.iter().map(|f| r.decide(f, 0, &l, 1)).collect();
        assert_eq!(
            v.iter().map(|v| (v.forward, v.mark)).collect::<Vec<_>>(),
            vec![(true, true), (false, false), (false, false)]
        );
        let delta = picture(&mut s, false, &mut n);
        let v: Vec<bool> = delta
            .iter()
            .map(|f| r.decide(f, 0, &l, 1).forward)
            .collect();
        assert_eq!(v, vec![true, false, false]);
        // Now on stage: S2 needs a keyframe (KEY mode), S0 goes on meanwhile.
        let v: Vec<Verdict> = delta.iter().map(|f| r.decide(f, 2, &l, 1)).collect();
        assert!(v.iter().all(|v| v.want_keyframe));
        assert_eq!(v.iter().filter(|v| v.forward).count(), 1);
        let key = picture(&mut s, true, &mut n);
        let v: Vec<Verdict> = key.iter().map(|f| r.decide(f, 2, &l, 1)).collect();
        assert_eq!(
            v.iter().map(|v| (v.forward, v.mark)).collect::<Vec<_>>(),
            vec![(true, false), (true, false), (true, true)]
        );
        assert_eq!(r.current(), Some(2));
        let delta = picture(&mut s, false, &mut n);
        let v: Vec<bool> = delta
            .iter()
            .map(|f| r.decide(f, 2, &l, 1).forward)
            .collect();
        assert_eq!(v, vec![false, false, true]);
        // A new layout: start over at the next switch point.
        let v = r.decide(&delta[2], 2, &l, 2);
        assert!(!v.forward && v.want_keyframe);
    }

    /// An L2T2_KEY-like structure: decode targets S0T0, S0T1, S1T0, S1T1 (listed out of
    /// order as 1, 0, 3, 2 to check the sorting); templates S0T0 key, S0T0, S0T1, S1T0 key,
    /// S1T0, S1T1.
    fn l2t2_key() -> Structure {
        use crate::rtp::dd::tests::BitWriter;
        let mut w = BitWriter::default();
        w.put(0b1100_0000, 8);
        w.put(0, 16);
        w.put(0b10000, 5);
        w.put(0, 6);
        w.put(3, 5); // four decode targets
        for idc in [0, 1, 2, 0, 1, 3] {
            w.put(idc, 2);
        }
        // DTIs for DT0 = S0T1, DT1 = S0T0, DT2 = S1T1, DT3 = S1T0.
        let dtis: [[u32; 4]; 6] = [
            [2, 2, 2, 2], // S0T0 key
            [2, 2, 0, 0], // S0T0 delta: switch point for both S0 targets
            [1, 0, 0, 0], // S0T1: only S0T1
            [0, 0, 2, 2], // S1T0 key part
            [0, 0, 2, 2], // S1T0 delta
            [0, 0, 1, 0], // S1T1
        ];
        for t in dtis {
            for d in t {
                w.put(d, 2);
            }
        }
        for _ in 0..6 {
            w.put(0, 1);
        }
        w.put(0, 3); // no chains: ns(5) of 0
        w.put(0, 1); // no resolutions
        dd::parse(&w.bytes, None).unwrap().structure.unwrap()
    }

    #[test]
    fn temporal_layers_are_views_in_order_and_a_frame_rate_up_waits_for_a_switch() {
        let s = l2t2_key();
        let l = SvcLayout::from_structure(&s).unwrap();
        assert_eq!(l.targets, vec![1, 0, 3, 2]);
        assert_eq!(l.spatial_layers, 2);
        assert_eq!(l.heights, vec![None; 4]);
        // S0T1 contains S0T0; S1 targets contain nothing of S0 (KEY).
        assert_eq!(l.within[0], 0b0011);
        assert_eq!(l.within[2], 0b1100);
        let frame = |present: u32, switch: u32| FrameInfo {
            start: true,
            end: true,
            spatial: 0,
            present,
            switch,
        };
        let mut r = SvcFilter::default();
        // Start at S0T1 (view 1) on the key picture's S0 frame.
        assert!(r.decide(&frame(0b1111, 0b1111), 1, &l, 1).forward);
        // Down to S0T0 (view 0): at once; its T1 frames go.
        let t1 = frame(0b0001, 0);
        let v = r.decide(&t1, 0, &l, 1);
        assert!(!v.forward && !v.want_keyframe && v.switched);
        // Up again: no keyframe request, it waits for the next T0 frame (a switch point).
        let v = r.decide(&t1, 1, &l, 1);
        assert!(!v.forward && !v.want_keyframe);
        let v = r.decide(&frame(0b0011, 0b0011), 1, &l, 1);
        assert!(v.forward && v.switched);
        // Another spatial layer: a keyframe is requested.
        assert!(r.decide(&t1, 3, &l, 1).want_keyframe);
    }

    #[test]
    fn vp9_layers_and_switches() {
        let mut s = SvcStream::default();
        // Keyframe S0 with a three-layer scalability structure (180/360/720).
        let mut p = vec![0xAA, 0x81, 0x02, 0b000_0_000_0, 7, 0b010_1_0000];
        for (w, h) in [(320u16, 180u16), (640, 360), (1280, 720)] {
            p.extend_from_slice(&w.to_be_bytes());
            p.extend_from_slice(&h.to_be_bytes());
        }
        let f0 = s.observe(VideoCodec::Vp9, None, &p, at(), 10).unwrap();
        let l = s.layout.clone().unwrap();
        assert_eq!(l.heights, vec![Some(180), Some(360), Some(720)]);
        assert_eq!((f0.present, f0.switch), (0b111, 0b111));
        // A predicted S1 frame (I, L, P, B, E; non-flexible).
        let f1 = s
            .observe(
                VideoCodec::Vp9,
                None,
                &[0xEC, 0x03, 0b000_0_001_1, 8],
                at(),
                10,
            )
            .unwrap();
        assert_eq!((f1.spatial, f1.present, f1.switch), (1, 0b110, 0));
        let mut r = SvcFilter::default();
        assert!(r.decide(&f0, 1, &l, s.generation).forward);
        let v = r.decide(&f1, 1, &l, s.generation);
        assert!(v.forward && v.mark);
        // Down to S0 at once (its frames are all part of S1).
        let v = r.decide(&f1, 0, &l, s.generation);
        assert!(!v.forward && !v.want_keyframe);
        assert_eq!(r.current(), Some(0));
        // Not SVC: no layer indices.
        assert!(
            s.observe(VideoCodec::Vp9, None, &[0x88, 0x01], at(), 10)
                .is_none()
        );
    }
}
