//! The AV1 RTP dependency descriptor header extension (docs/bridge.md B.13): which spatial and
//! temporal layer a frame is, and which decode targets need it. Read-only: the bridge decides
//! per receiver which frames to forward and passes the descriptor through unchanged.
//!
//! A descriptor refers to a template structure sent earlier (on keyframes); [`parse`] takes the
//! structure in effect and returns a new one when the descriptor carries it.

use std::fmt;

/// At most this many decode targets (the spec's five-bit count).
pub const MAX_DECODE_TARGETS: usize = 32;
/// Templates are numbered modulo 64.
const TEMPLATE_IDS: usize = 64;

/// Decode target indication: the frame is not part of the decode target.
pub const DTI_NOT_PRESENT: u8 = 0;
/// Decode target indication: a decoder may start (switch to) the decode target at this frame.
pub const DTI_SWITCH: u8 = 2;

/// Why a descriptor was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdError {
    /// Fewer bits than the fields need.
    Truncated,
    /// The frame refers to a template the structure does not have, or there is no structure.
    UnknownTemplate,
    /// A structure with more templates than template ids.
    TooManyTemplates,
}

impl fmt::Display for DdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DdError::Truncated => "dependency descriptor truncated",
            DdError::UnknownTemplate => "dependency descriptor refers to an unknown template",
            DdError::TooManyTemplates => "dependency descriptor structure has too many templates",
        })
    }
}

impl std::error::Error for DdError {}

/// One frame template of a structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub spatial: u8,
    pub temporal: u8,
    /// Two bits per decode target, target 0 in the lowest bits.
    pub dtis: u64,
}

impl Template {
    pub fn dti(&self, dt: usize) -> u8 {
        ((self.dtis >> (2 * dt)) & 3) as u8
    }
}

/// A template dependency structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Structure {
    pub template_id_offset: u8,
    pub decode_targets: usize,
    pub templates: Vec<Template>,
    pub chains: usize,
    /// Render resolution (width, height) per spatial layer, when signalled.
    pub resolutions: Vec<(u32, u32)>,
}

impl Structure {
    /// The highest spatial and temporal layer of the frames decode target `dt` needs.
    pub fn decode_target_layer(&self, dt: usize) -> (u8, u8) {
        self.templates
            .iter()
            .filter(|t| t.dti(dt) != DTI_NOT_PRESENT)
            .fold((0, 0), |(s, t), x| (s.max(x.spatial), t.max(x.temporal)))
    }

    pub fn max_spatial(&self) -> u8 {
        self.templates.iter().map(|t| t.spatial).max().unwrap_or(0)
    }

    fn template(&self, id: u8) -> Option<&Template> {
        let i =
            (usize::from(id) + TEMPLATE_IDS - usize::from(self.template_id_offset)) % TEMPLATE_IDS;
        self.templates.get(i)
    }
}

/// What one descriptor says about its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub start_of_frame: bool,
    pub end_of_frame: bool,
    pub frame_number: u16,
    /// The structure this descriptor carries (it applies to this frame and later ones).
    pub structure: Option<Structure>,
    pub active_decode_targets: Option<u32>,
    pub spatial: u8,
    pub temporal: u8,
    /// Two bits per decode target (custom ones when the frame carries them).
    pub dtis: u64,
}

impl Descriptor {
    pub fn dti(&self, dt: usize) -> u8 {
        ((self.dtis >> (2 * dt)) & 3) as u8
    }
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<bool, DdError> {
        let byte = self.data.get(self.pos / 8).ok_or(DdError::Truncated)?;
        let b = byte >> (7 - self.pos % 8) & 1;
        self.pos += 1;
        Ok(b == 1)
    }

    fn bits(&mut self, n: u32) -> Result<u32, DdError> {
        let mut v = 0u32;
        for _ in 0..n {
            v = v << 1 | u32::from(self.bit()?);
        }
        Ok(v)
    }

    /// The spec's `ns(n)`: a value below `n` in a non-symmetric code.
    fn ns(&mut self, n: u32) -> Result<u32, DdError> {
        let w = 32 - n.leading_zeros();
        if w == 0 {
            return Ok(0);
        }
        let m = (1u32 << w) - n;
        let v = self.bits(w - 1)?;
        if v < m {
            return Ok(v);
        }
        let extra = self.bits(1)?;
        Ok((v << 1) - m + extra)
    }
}

/// Parse one descriptor given the structure in effect (`None` before any was received).
pub fn parse(data: &[u8], current: Option<&Structure>) -> Result<Descriptor, DdError> {
    if data.len() < 3 {
        return Err(DdError::Truncated);
    }
    let mut r = Bits { data, pos: 0 };
    let start_of_frame = r.bit()?;
    let end_of_frame = r.bit()?;
    let template_id = r.bits(6)? as u8;
    let frame_number = r.bits(16)? as u16;
    let (mut custom_dtis, mut structure, mut active) = (false, None, None);
    if data.len() > 3 {
        let has_structure = r.bit()?;
        let has_active = r.bit()?;
        custom_dtis = r.bit()?;
        let _custom_fdiffs = r.bit()?;
        let _custom_chains = r.bit()?;
        if has_structure {
            let s = parse_structure(&mut r)?;
            active = Some(all_targets(s.decode_targets));
            structure = Some(s);
        }
        if has_active {
            let dts = structure
                .as_ref()
                .or(current)
                .ok_or(DdError::UnknownTemplate)?
                .decode_targets;
            active = Some(r.bits(dts as u32)?);
        }
    }
    let s = structure
        .as_ref()
        .or(current)
        .ok_or(DdError::UnknownTemplate)?;
    let t = s.template(template_id).ok_or(DdError::UnknownTemplate)?;
    let mut dtis = t.dtis;
    if custom_dtis {
        dtis = 0;
        for dt in 0..s.decode_targets {
            dtis |= u64::from(r.bits(2)?) << (2 * dt);
        }
    }
    // Custom frame diffs and chains follow; the bridge does not need them.
    Ok(Descriptor {
        start_of_frame,
        end_of_frame,
        frame_number,
        spatial: t.spatial,
        temporal: t.temporal,
        dtis,
        active_decode_targets: active,
        structure,
    })
}

fn all_targets(n: usize) -> u32 {
    if n >= 32 { u32::MAX } else { (1u32 << n) - 1 }
}

fn parse_structure(r: &mut Bits<'_>) -> Result<Structure, DdError> {
    let template_id_offset = r.bits(6)? as u8;
    let decode_targets = r.bits(5)? as usize + 1;
    // Template layers: each template's spatial/temporal id, as increments.
    let mut templates = Vec::new();
    let (mut spatial, mut temporal) = (0u8, 0u8);
    loop {
        if templates.len() >= TEMPLATE_IDS {
            return Err(DdError::TooManyTemplates);
        }
        templates.push(Template {
            spatial,
            temporal,
            dtis: 0,
        });
        match r.bits(2)? {
            0 => {}
            1 => temporal = temporal.saturating_add(1),
            2 => {
                temporal = 0;
                spatial = spatial.saturating_add(1);
            }
            _ => break,
        }
    }
    for t in &mut templates {
        for dt in 0..decode_targets {
            t.dtis |= u64::from(r.bits(2)?) << (2 * dt);
        }
    }
    // Template frame diffs: skipped.
    for _ in 0..templates.len() {
        while r.bit()? {
            r.bits(4)?;
        }
    }
    let chains = r.ns(decode_targets as u32 + 1)? as usize;
    if chains > 0 {
        for _ in 0..decode_targets {
            r.ns(chains as u32)?;
        }
        for _ in 0..templates.len() * chains {
            r.bits(4)?;
        }
    }
    let mut resolutions = Vec::new();
    if r.bit()? {
        let max_spatial = templates.iter().map(|t| t.spatial).max().unwrap_or(0);
        for _ in 0..=max_spatial {
            let w = r.bits(16)? + 1;
            let h = r.bits(16)? + 1;
            resolutions.push((w, h));
        }
    }
    Ok(Structure {
        template_id_offset,
        decode_targets,
        templates,
        chains,
        resolutions,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes descriptors bit by bit, as a sender would (for tests here and in the engine).
    #[derive(Default)]
    pub(crate) struct BitWriter {
        pub bytes: Vec<u8>,
        n: usize,
    }

    impl BitWriter {
        pub fn put(&mut self, v: u32, bits: u32) {
            for i in (0..bits).rev() {
                if self.n % 8 == 0 {
                    self.bytes.push(0);
                }
                if v >> i & 1 == 1 {
                    let last = self.bytes.len() - 1;
                    self.bytes[last] |= 0x80 >> (self.n % 8);
                }
                self.n += 1;
            }
        }
    }

    /// A three-spatial-layer KEY structure (L3T1_KEY) with decode targets S0, S1, S2 and
    /// resolutions 320x180, 640x360, 1280x720. Templates: 0 = S0 key, 1 = S0 delta, 2 = S1
    /// of a key picture, 3 = S1 delta, 4 = S2 of a key picture, 5 = S2 delta.
    pub(crate) fn l3t1_key_structure(w: &mut BitWriter) {
        w.put(0, 6); // template id offset
        w.put(2, 5); // three decode targets
        // Layers: S0,S0 | S1,S1 | S2,S2.
        for idc in [0, 2, 0, 2, 0, 3] {
            w.put(idc, 2);
        }
        // DTIs per template for DT0..DT2 (S = 2, R = 3, - = 0).
        let dtis: [[u32; 3]; 6] = [
            [2, 2, 2], // S0 key: switch for everyone
            [3, 0, 0], // S0 delta: only DT0
            [0, 2, 2], // S1 key
            [0, 3, 0], // S1 delta
            [0, 0, 2], // S2 key
            [0, 0, 3], // S2 delta
        ];
        for t in dtis {
            for d in t {
                w.put(d, 2);
            }
        }
        // Frame diffs: none for keys, three frames back (the same layer) for deltas.
        for t in 0..6 {
            if t % 2 == 1 {
                w.put(1, 1);
                w.put(2, 4);
            }
            w.put(0, 1);
        }
        // Chains: none (ns(4) of 0 is two bits 00).
        w.put(0, 2);
        // Resolutions.
        w.put(1, 1);
        for (wd, h) in [(320, 180), (640, 360), (1280, 720)] {
            w.put(wd - 1, 16);
            w.put(h - 1, 16);
        }
    }

    /// A descriptor: with `structure`, the L3 KEY structure above is attached.
    pub(crate) fn descriptor(
        start: bool,
        end: bool,
        template: u32,
        frame: u16,
        structure: bool,
    ) -> Vec<u8> {
        let mut w = BitWriter::default();
        w.put(u32::from(start), 1);
        w.put(u32::from(end), 1);
        w.put(template, 6);
        w.put(u32::from(frame), 16);
        if structure {
            w.put(1, 1);
            w.put(0, 4);
            l3t1_key_structure(&mut w);
        }
        w.bytes
    }

    #[test]
    fn structure_and_frames() {
        let key = parse(&descriptor(true, false, 0, 100, true), None).unwrap();
        let s = key.structure.clone().unwrap();
        assert_eq!(s.decode_targets, 3);
        assert_eq!(s.templates.len(), 6);
        assert_eq!(s.max_spatial(), 2);
        assert_eq!(s.resolutions, vec![(320, 180), (640, 360), (1280, 720)]);
        assert_eq!(s.decode_target_layer(0), (0, 0));
        assert_eq!(s.decode_target_layer(2), (2, 0));
        assert_eq!(key.active_decode_targets, Some(0b111));
        assert_eq!((key.spatial, key.dti(1)), (0, DTI_SWITCH));
        assert!(key.start_of_frame && !key.end_of_frame);
        assert_eq!(key.frame_number, 100);
        // Later frames: three-byte descriptors against the stored structure.
        let d = parse(&descriptor(false, true, 5, 104, false), Some(&s)).unwrap();
        assert_eq!((d.spatial, d.dti(0), d.dti(2)), (2, DTI_NOT_PRESENT, 3));
        assert!(d.end_of_frame);
        assert_eq!(
            parse(&descriptor(true, true, 9, 1, false), Some(&s)),
            Err(DdError::UnknownTemplate)
        );
        assert_eq!(
            parse(&descriptor(true, true, 1, 1, false), None),
            Err(DdError::UnknownTemplate)
        );
    }

    #[test]
    fn custom_dtis_and_active_targets() {
        let s = parse(&descriptor(true, false, 0, 1, true), None)
            .unwrap()
            .structure
            .unwrap();
        let mut w = BitWriter::default();
        w.put(0b11, 2);
        w.put(1, 6);
        w.put(7, 16);
        w.put(0b01100, 5); // active targets present, custom dtis
        w.put(0b011, 3); // DT0, DT1 active
        for d in [3, 3, 0] {
            w.put(d, 2);
        }
        let d = parse(&w.bytes, Some(&s)).unwrap();
        assert_eq!(d.active_decode_targets, Some(0b011));
        assert_eq!((d.dti(0), d.dti(1), d.dti(2)), (3, 3, 0));
    }

    #[test]
    fn ns_code() {
        // n = 5: w = 3, m = 3; values 0..2 in two bits, 3..4 in three.
        let mut r = Bits {
            data: &[0b1011_0000],
            pos: 0,
        };
        assert_eq!(r.ns(5).unwrap(), 2);
        let mut r = Bits {
            data: &[0b1110_0000],
            pos: 0,
        };
        assert_eq!(r.ns(5).unwrap(), 4);
        let mut r = Bits {
            data: &[0xff],
            pos: 0,
        };
        assert_eq!(r.ns(1).unwrap(), 0);
    }

    #[test]
    fn garbage_never_panics() {
        let s = parse(&descriptor(true, false, 0, 1, true), None)
            .unwrap()
            .structure
            .unwrap();
        let mut x: u32 = 12345;
        for len in 0..64 {
            for _ in 0..50 {
                let data: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        (x >> 16) as u8
                    })
                    .collect();
                let _ = parse(&data, None);
                let _ = parse(&data, Some(&s));
            }
        }
    }
}
