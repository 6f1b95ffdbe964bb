//! The conference source map: who sends which SSRCs, validated as Jicofo does, and the
//! three ways sources travel (Jingle `<source>` elements, compact JSON, Colibri2).

use std::collections::{BTreeMap, HashSet};

use meetd_colibri::colibri2::{self, MediaType};
use meetd_xmpp::Element;
use meetd_xmpp::stanza::rxml_name as n;
use serde_json::{Value, json};

pub const NS_RTP: &str = "urn:xmpp:jingle:apps:rtp:1";
pub const NS_SSMA: &str = "urn:xmpp:jingle:apps:rtp:ssma:0";
pub const NS_JITMEET: &str = "http://jitsi.org/jitmeet";
pub const NS_JINGLE: &str = "urn:xmpp:jingle:1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VideoType {
    Camera,
    Desktop,
}

impl VideoType {
    fn parse(s: &str) -> Option<VideoType> {
        match s {
            "camera" => Some(VideoType::Camera),
            "desktop" => Some(VideoType::Desktop),
            _ => None,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            VideoType::Camera => "camera",
            VideoType::Desktop => "desktop",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub ssrc: u32,
    pub media: MediaType,
    pub name: Option<String>,
    pub msid: Option<String>,
    pub video_type: Option<VideoType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Semantics {
    Sim,
    Fid,
}

impl Semantics {
    fn as_str(self) -> &'static str {
        match self {
            Semantics::Sim => "SIM",
            Semantics::Fid => "FID",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsrcGroup {
    pub semantics: Semantics,
    pub media: MediaType,
    pub ssrcs: Vec<u32>,
}

/// One endpoint's sources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSourceSet {
    pub sources: Vec<Source>,
    pub groups: Vec<SsrcGroup>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("Invalid SSRC")]
    InvalidSsrc,
    #[error("SSRC is already used")]
    SsrcAlreadyUsed,
    #[error("MSID is already used")]
    MsidAlreadyUsed,
    #[error("SSRC limit ({0}) exceeded")]
    SsrcLimit(usize),
    #[error("ssrc-group limit exceeded")]
    GroupLimit,
    #[error("An SSRC group contains an SSRC, which hasn't been signaled as a source")]
    GroupWithoutSource,
    #[error("FID group must have exactly 2 SSRCs")]
    BadFid,
    #[error("Required source parameter 'msid' is not present")]
    MissingMsid,
    #[error("SSRCs in a group must share one msid")]
    GroupMsidMismatch,
    #[error("MSID is used by more than one stream")]
    MsidConflict,
    #[error("Source does not exist or is not owned by the endpoint")]
    NoSuchSource,
    #[error("Source group does not exist")]
    NoSuchGroup,
    #[error("unsupported ssrc-group semantics {0}")]
    BadSemantics(String),
    #[error("bad source element: {0}")]
    Malformed(String),
}

fn media_of(s: &str) -> Option<MediaType> {
    match s {
        "audio" => Some(MediaType::Audio),
        "video" => Some(MediaType::Video),
        _ => None,
    }
}

fn media_str(m: MediaType) -> &'static str {
    match m {
        MediaType::Audio => "audio",
        MediaType::Video => "video",
    }
}

impl EndpointSourceSet {
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty() && self.groups.is_empty()
    }

    /// Sources and groups under the `<content>`s of a `<jingle>` (in `<description>` or
    /// directly under `<content>`).
    pub fn from_jingle(jingle: &Element) -> Result<EndpointSourceSet, SourceError> {
        let mut set = EndpointSourceSet::default();
        for content in jingle.children().filter(|c| c.is("content", NS_JINGLE)) {
            let desc = content.get_child("description", NS_RTP);
            let media = desc
                .and_then(|d| d.attr("media"))
                .or(content.attr("name"))
                .and_then(media_of);
            let Some(media) = media else { continue };
            let holders = desc.into_iter().chain(std::iter::once(content));
            for h in holders {
                for s in h.children().filter(|c| c.is("source", NS_SSMA)) {
                    let ssrc = s
                        .attr("ssrc")
                        .and_then(|v| v.parse::<u64>().ok())
                        .filter(|v| (1..=u32::MAX as u64).contains(v))
                        .ok_or(SourceError::InvalidSsrc)? as u32;
                    let msid = s
                        .children()
                        .filter(|p| p.name() == "parameter")
                        .find(|p| p.attr("name") == Some("msid"))
                        .and_then(|p| p.attr("value"))
                        .map(str::to_string);
                    set.sources.push(Source {
                        ssrc,
                        media,
                        name: s.attr("name").map(str::to_string),
                        msid,
                        video_type: s.attr("videoType").and_then(VideoType::parse),
                    });
                }
                for g in h.children().filter(|c| c.is("ssrc-group", NS_SSMA)) {
                    let sem = match g.attr("semantics") {
                        Some("SIM") => Semantics::Sim,
                        Some("FID") => Semantics::Fid,
                        other => return Err(SourceError::BadSemantics(other.unwrap_or("").into())),
                    };
                    let mut ssrcs = Vec::new();
                    for s in g.children().filter(|c| c.name() == "source") {
                        let v = s
                            .attr("ssrc")
                            .and_then(|v| v.parse::<u64>().ok())
                            .filter(|v| (1..=u32::MAX as u64).contains(v))
                            .ok_or(SourceError::InvalidSsrc)?;
                        ssrcs.push(v as u32);
                    }
                    set.groups.push(SsrcGroup {
                        semantics: sem,
                        media,
                        ssrcs,
                    });
                }
            }
        }
        Ok(set)
    }

    /// Keep only the first SSRC of each simulcast group (and its RTX); drop SIM groups.
    /// The bridge rewrites all layers onto that first SSRC.
    /// The set without the sources `drop_name` picks (by name) and the groups that used them.
    pub fn without_names(&self, drop_name: impl Fn(&str) -> bool) -> EndpointSourceSet {
        let drop: HashSet<u32> = self
            .sources
            .iter()
            .filter(|s| s.name.as_deref().is_some_and(&drop_name))
            .map(|s| s.ssrc)
            .collect();
        self.without_ssrcs(&drop)
    }

    /// The set without the SSRCs in `drop` and the groups that used them.
    fn without_ssrcs(&self, drop: &HashSet<u32>) -> EndpointSourceSet {
        EndpointSourceSet {
            sources: self
                .sources
                .iter()
                .filter(|s| !drop.contains(&s.ssrc))
                .cloned()
                .collect(),
            groups: self
                .groups
                .iter()
                .filter(|g| !g.ssrcs.iter().any(|s| drop.contains(s)))
                .cloned()
                .collect(),
        }
    }

    pub fn strip_simulcast(&self) -> EndpointSourceSet {
        let mut drop: HashSet<u32> = HashSet::new();
        for g in self.groups.iter().filter(|g| g.semantics == Semantics::Sim) {
            drop.extend(g.ssrcs.iter().skip(1));
        }
        // RTX partners of dropped layers go too.
        for g in self.groups.iter().filter(|g| g.semantics == Semantics::Fid) {
            if g.ssrcs.first().is_some_and(|s| drop.contains(s)) {
                drop.extend(g.ssrcs.iter().skip(1));
            }
        }
        let mut set = self.without_ssrcs(&drop);
        set.groups.retain(|g| g.semantics != Semantics::Sim);
        set
    }

    /// Classic Jingle `<content>`s (one per media type) with `<source>`/`<ssrc-group>`
    /// elements owned by `owner`, for source-add/-remove and offers.
    pub fn to_jingle_contents(&self, owner: &str, out: &mut BTreeMap<&'static str, Vec<Element>>) {
        for s in &self.sources {
            let mut e = Element::builder("source", NS_SSMA).attr(n("ssrc"), s.ssrc.to_string());
            if let Some(name) = &s.name {
                e = e.attr(n("name"), name.as_str());
            }
            if let Some(v) = s.video_type {
                e = e.attr(n("videoType"), v.as_str());
            }
            e = e.append(
                Element::builder("ssrc-info", NS_JITMEET)
                    .attr(n("owner"), owner)
                    .build(),
            );
            if let Some(m) = &s.msid {
                e = e.append(
                    Element::builder("parameter", NS_SSMA)
                        .attr(n("name"), "msid")
                        .attr(n("value"), m.as_str())
                        .build(),
                );
            }
            out.entry(media_str(s.media)).or_default().push(e.build());
        }
        for g in &self.groups {
            let mut e =
                Element::builder("ssrc-group", NS_SSMA).attr(n("semantics"), g.semantics.as_str());
            for s in &g.ssrcs {
                e = e.append(
                    Element::builder("source", NS_SSMA)
                        .attr(n("ssrc"), s.to_string())
                        .build(),
                );
            }
            out.entry(media_str(g.media)).or_default().push(e.build());
        }
    }

    /// Jicofo's compact JSON: `[videoSources, videoGroups, audioSources, audioGroups?]`.
    pub fn compact_json(&self) -> Value {
        let src = |m: MediaType| -> Vec<Value> {
            self.sources
                .iter()
                .filter(|s| s.media == m)
                .map(|s| {
                    let mut o = serde_json::Map::new();
                    o.insert("s".into(), json!(s.ssrc));
                    if let Some(n) = &s.name {
                        o.insert("n".into(), json!(n));
                    }
                    if let Some(m) = &s.msid {
                        o.insert("m".into(), json!(m));
                    }
                    if s.video_type == Some(VideoType::Desktop) {
                        o.insert("v".into(), json!("d"));
                    }
                    Value::Object(o)
                })
                .collect()
        };
        let grp = |m: MediaType| -> Vec<Value> {
            self.groups
                .iter()
                .filter(|g| g.media == m)
                .map(|g| {
                    let mut a = vec![json!(match g.semantics {
                        Semantics::Sim => "s",
                        Semantics::Fid => "f",
                    })];
                    a.extend(g.ssrcs.iter().map(|s| json!(s)));
                    Value::Array(a)
                })
                .collect()
        };
        let mut v = vec![
            Value::Array(src(MediaType::Video)),
            Value::Array(grp(MediaType::Video)),
            Value::Array(src(MediaType::Audio)),
        ];
        let ag = grp(MediaType::Audio);
        if !ag.is_empty() {
            v.push(Value::Array(ag));
        }
        Value::Array(v)
    }

    /// Colibri2 `<sources>`: one `media-source` per source name.
    pub fn to_colibri(&self, endpoint: &str) -> colibri2::Sources {
        let mut by_name: Vec<colibri2::MediaSource> = Vec::new();
        for s in &self.sources {
            let default = format!(
                "{endpoint}-{}0",
                if s.media == MediaType::Audio {
                    'a'
                } else {
                    'v'
                }
            );
            let name = s.name.clone().unwrap_or(default);
            let idx = match by_name
                .iter()
                .position(|m| m.id == name && m.kind == s.media)
            {
                Some(i) => i,
                None => {
                    by_name.push(colibri2::MediaSource {
                        kind: s.media,
                        id: name.clone(),
                        synthetic: None,
                        sources: Vec::new(),
                        ssrc_groups: Vec::new(),
                    });
                    by_name.len() - 1
                }
            };
            by_name[idx].sources.push(colibri2::Source {
                ssrc: s.ssrc,
                name: Some(name),
                video_type: s.video_type.map(|v| v.as_str().to_string()),
                msid: None,
            });
        }
        for g in &self.groups {
            if let Some(ms) = by_name.iter_mut().find(|m| {
                g.ssrcs
                    .first()
                    .is_some_and(|f| m.sources.iter().any(|s| s.ssrc == *f))
            }) {
                ms.ssrc_groups.push(colibri2::SsrcGroup {
                    semantics: g.semantics.as_str().into(),
                    ssrcs: g.ssrcs.clone(),
                });
            }
        }
        colibri2::Sources {
            media_sources: by_name,
        }
    }

    fn ssrcs(&self) -> impl Iterator<Item = u32> + '_ {
        self.sources.iter().map(|s| s.ssrc)
    }

    pub fn count(&self, media: MediaType) -> usize {
        self.sources.iter().filter(|s| s.media == media).count()
    }
}

/// Limits of docs/focus.md §4.4.
#[derive(Debug, Clone, Copy)]
pub struct SourceLimits {
    pub max_ssrcs: usize,
    pub max_groups: usize,
}

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits {
            max_ssrcs: 20,
            max_groups: 20,
        }
    }
}

/// All endpoints' sources, validated on every change (all or nothing).
#[derive(Debug, Default)]
pub struct ConferenceSourceMap {
    pub map: BTreeMap<String, EndpointSourceSet>,
    limits: SourceLimits,
}

impl ConferenceSourceMap {
    pub fn new(limits: SourceLimits) -> Self {
        ConferenceSourceMap {
            map: BTreeMap::new(),
            limits,
        }
    }

    pub fn get(&self, ep: &str) -> Option<&EndpointSourceSet> {
        self.map.get(ep)
    }

    pub fn remove_endpoint(&mut self, ep: &str) -> Option<EndpointSourceSet> {
        self.map.remove(ep)
    }

    /// Add sources for `ep`. Returns what was actually added (empty/duplicate groups dropped).
    pub fn try_add(
        &mut self,
        ep: &str,
        add: &EndpointSourceSet,
    ) -> Result<EndpointSourceSet, SourceError> {
        let existing = self.map.get(ep).cloned().unwrap_or_default();
        let mut used: HashSet<u32> = HashSet::new();
        let mut other_msids: HashSet<&str> = HashSet::new();
        for (e, set) in &self.map {
            used.extend(set.ssrcs());
            if e != ep {
                other_msids.extend(set.sources.iter().filter_map(|s| s.msid.as_deref()));
            }
        }
        let mut seen_new = HashSet::new();
        for s in &add.sources {
            if s.ssrc == 0 {
                return Err(SourceError::InvalidSsrc);
            }
            if used.contains(&s.ssrc) || !seen_new.insert(s.ssrc) {
                return Err(SourceError::SsrcAlreadyUsed);
            }
            if s.msid.as_deref().is_some_and(|m| other_msids.contains(m)) {
                return Err(SourceError::MsidAlreadyUsed);
            }
        }
        let mut result = existing.clone();
        result.sources.extend(add.sources.iter().cloned());
        if result.sources.len() > self.limits.max_ssrcs {
            return Err(SourceError::SsrcLimit(self.limits.max_ssrcs));
        }
        let mut added = EndpointSourceSet {
            sources: add.sources.clone(),
            groups: Vec::new(),
        };
        let all: HashSet<u32> = result.ssrcs().collect();
        for g in &add.groups {
            if g.ssrcs.is_empty() || result.groups.contains(g) {
                continue;
            }
            if g.ssrcs.iter().any(|s| !all.contains(s)) {
                return Err(SourceError::GroupWithoutSource);
            }
            result.groups.push(g.clone());
            added.groups.push(g.clone());
        }
        if result.groups.len() > self.limits.max_groups {
            return Err(SourceError::GroupLimit);
        }
        validate(&result)?;
        self.map.insert(ep.to_string(), result);
        Ok(added)
    }

    /// Remove sources (matched by SSRC) and groups. Returns what was removed.
    pub fn try_remove(
        &mut self,
        ep: &str,
        rm: &EndpointSourceSet,
    ) -> Result<EndpointSourceSet, SourceError> {
        let Some(existing) = self.map.get(ep) else {
            return Err(SourceError::NoSuchSource);
        };
        let mut result = existing.clone();
        let mut removed = EndpointSourceSet::default();
        for s in &rm.sources {
            let Some(i) = result.sources.iter().position(|x| x.ssrc == s.ssrc) else {
                return Err(SourceError::NoSuchSource);
            };
            removed.sources.push(result.sources.remove(i));
        }
        for g in &rm.groups {
            let Some(i) = result
                .groups
                .iter()
                .position(|x| x.semantics == g.semantics && x.ssrcs == g.ssrcs)
            else {
                return Err(SourceError::NoSuchGroup);
            };
            removed.groups.push(result.groups.remove(i));
        }
        // Groups that lost a member go as well.
        let left: HashSet<u32> = result.ssrcs().collect();
        let (keep, gone): (Vec<_>, Vec<_>) = result
            .groups
            .into_iter()
            .partition(|g| g.ssrcs.iter().all(|s| left.contains(s)));
        result.groups = keep;
        removed.groups.extend(gone);
        if result.is_empty() {
            self.map.remove(ep);
        } else {
            self.map.insert(ep.to_string(), result);
        }
        Ok(removed)
    }

    /// `{"sources": {owner: compact, …}}` for the endpoints `filter` accepts.
    pub fn json_message(
        &self,
        extra: &[(&str, &EndpointSourceSet)],
        filter: impl Fn(&str) -> bool,
        strip: bool,
    ) -> String {
        let mut o = serde_json::Map::new();
        for (owner, set) in extra {
            o.insert((*owner).to_string(), set.compact_json());
        }
        for (ep, set) in &self.map {
            if filter(ep) && !set.is_empty() {
                let set = if strip {
                    set.strip_simulcast()
                } else {
                    set.clone()
                };
                o.insert(ep.clone(), set.compact_json());
            }
        }
        json!({ "sources": o }).to_string()
    }
}

/// The checks on a resulting source set (docs/focus.md §4.3).
fn validate(set: &EndpointSourceSet) -> Result<(), SourceError> {
    let msid_of = |ssrc: u32| {
        set.sources
            .iter()
            .find(|s| s.ssrc == ssrc)
            .and_then(|s| s.msid.clone())
    };
    for g in &set.groups {
        if g.semantics == Semantics::Fid && g.ssrcs.len() != 2 {
            return Err(SourceError::BadFid);
        }
        let mut msid: Option<String> = None;
        for s in &g.ssrcs {
            let m = msid_of(*s).ok_or(SourceError::MissingMsid)?;
            match &msid {
                None => msid = Some(m),
                Some(x) if *x != m => return Err(SourceError::GroupMsidMismatch),
                _ => {}
            }
        }
    }
    // Each stream (a SIM group with its FIDs, a lone FID, or a single source) has its own
    // msid per media type.
    let grouped: HashSet<u32> = set
        .groups
        .iter()
        .flat_map(|g| g.ssrcs.iter().copied())
        .collect();
    let mut streams: Vec<(MediaType, String, u32)> = Vec::new();
    for g in &set.groups {
        let first = g.ssrcs[0];
        let Some(m) = msid_of(first) else { continue };
        // A FID whose primary is in a SIM belongs to that SIM's stream.
        let in_sim = g.semantics == Semantics::Fid
            && set
                .groups
                .iter()
                .any(|o| o.semantics == Semantics::Sim && o.ssrcs.contains(&first));
        if !in_sim {
            streams.push((g.media, m, first));
        }
    }
    for s in &set.sources {
        if !grouped.contains(&s.ssrc)
            && let Some(m) = &s.msid
        {
            streams.push((s.media, m.clone(), s.ssrc));
        }
    }
    let mut seen: HashSet<(MediaType, String)> = HashSet::new();
    for (media, m, _) in streams {
        if !seen.insert((media, m)) {
            return Err(SourceError::MsidConflict);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Element {
        meetd_xmpp::xml::parse_document(s.as_bytes(), &Default::default()).unwrap()
    }

    /// A camera with 3 simulcast layers and RTX plus a microphone, as in fixture 10.
    fn camera_and_mic(ep: &str, base: u32) -> Element {
        let b = base;
        parse(&format!(
            "<jingle xmlns='urn:xmpp:jingle:1' action='session-accept'>
              <content name='audio'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'>
                <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{a}' name='{ep}-a0'><parameter name='msid' value='{ep}-audio-1 x'/></source>
              </description></content>
              <content name='video'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='video'>
                <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{v1}' name='{ep}-v0' videoType='camera'><parameter name='msid' value='{ep}-video-1 y'/></source>
                <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{v2}' name='{ep}-v0' videoType='camera'><parameter name='msid' value='{ep}-video-1 y'/></source>
                <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{v3}' name='{ep}-v0' videoType='camera'><parameter name='msid' value='{ep}-video-1 y'/></source>
                <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{r1}' name='{ep}-v0' videoType='camera'><parameter name='msid' value='{ep}-video-1 y'/></source>
                <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{r2}' name='{ep}-v0' videoType='camera'><parameter name='msid' value='{ep}-video-1 y'/></source>
                <source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='{r3}' name='{ep}-v0' videoType='camera'><parameter name='msid' value='{ep}-video-1 y'/></source>
                <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='SIM'><source ssrc='{v1}'/><source ssrc='{v2}'/><source ssrc='{v3}'/></ssrc-group>
                <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='FID'><source ssrc='{v1}'/><source ssrc='{r1}'/></ssrc-group>
                <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='FID'><source ssrc='{v2}'/><source ssrc='{r2}'/></ssrc-group>
                <ssrc-group xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' semantics='FID'><source ssrc='{v3}'/><source ssrc='{r3}'/></ssrc-group>
              </description></content></jingle>",
            a = b, v1 = b + 1, v2 = b + 2, v3 = b + 3, r1 = b + 4, r2 = b + 5, r3 = b + 6
        ))
    }

    #[test]
    fn parse_validate_and_strip() {
        let set = EndpointSourceSet::from_jingle(&camera_and_mic("aaaa", 100)).unwrap();
        assert_eq!(set.sources.len(), 7);
        assert_eq!(set.groups.len(), 4);
        let mut map = ConferenceSourceMap::new(SourceLimits::default());
        let added = map.try_add("aaaa", &set).unwrap();
        assert_eq!(added.sources.len(), 7);
        let audio_only = set.without_names(|n| n.ends_with("-v0"));
        assert_eq!(audio_only.sources.len(), 1);
        assert!(audio_only.groups.is_empty());
        let stripped = map.get("aaaa").unwrap().strip_simulcast();
        let ssrcs: Vec<u32> = stripped.sources.iter().map(|s| s.ssrc).collect();
        assert_eq!(ssrcs, vec![100, 101, 104]);
        assert_eq!(stripped.groups.len(), 1);
        assert_eq!(stripped.groups[0].ssrcs, vec![101, 104]);
    }

    #[test]
    fn conflicts_and_limits() {
        let mut map = ConferenceSourceMap::new(SourceLimits::default());
        map.try_add(
            "aaaa",
            &EndpointSourceSet::from_jingle(&camera_and_mic("aaaa", 100)).unwrap(),
        )
        .unwrap();
        // Same SSRCs from another endpoint.
        let e = map.try_add(
            "bbbb",
            &EndpointSourceSet::from_jingle(&camera_and_mic("bbbb", 100)).unwrap(),
        );
        assert_eq!(e.unwrap_err(), SourceError::SsrcAlreadyUsed);
        // Same msid from another endpoint.
        let mut other = EndpointSourceSet::from_jingle(&camera_and_mic("bbbb", 200)).unwrap();
        other.sources[0].msid = Some("aaaa-audio-1 x".into());
        assert_eq!(
            map.try_add("bbbb", &other).unwrap_err(),
            SourceError::MsidAlreadyUsed
        );
        // The failed adds changed nothing.
        assert!(map.get("bbbb").is_none());
        // 21 SSRCs.
        let many = EndpointSourceSet {
            sources: (1000..1021)
                .map(|s| Source {
                    ssrc: s,
                    media: MediaType::Audio,
                    name: None,
                    msid: Some(format!("m{s}")),
                    video_type: None,
                })
                .collect(),
            groups: vec![],
        };
        assert_eq!(
            map.try_add("cccc", &many).unwrap_err(),
            SourceError::SsrcLimit(20)
        );
        // A group referencing an unknown SSRC.
        let bad = EndpointSourceSet {
            sources: vec![Source {
                ssrc: 5,
                media: MediaType::Video,
                name: None,
                msid: Some("q".into()),
                video_type: None,
            }],
            groups: vec![SsrcGroup {
                semantics: Semantics::Fid,
                media: MediaType::Video,
                ssrcs: vec![5, 6],
            }],
        };
        assert_eq!(
            map.try_add("dddd", &bad).unwrap_err(),
            SourceError::GroupWithoutSource
        );
        // Grouped source without msid.
        let bad = EndpointSourceSet {
            sources: vec![
                Source {
                    ssrc: 7,
                    media: MediaType::Video,
                    name: None,
                    msid: None,
                    video_type: None,
                },
                Source {
                    ssrc: 8,
                    media: MediaType::Video,
                    name: None,
                    msid: None,
                    video_type: None,
                },
            ],
            groups: vec![SsrcGroup {
                semantics: Semantics::Fid,
                media: MediaType::Video,
                ssrcs: vec![7, 8],
            }],
        };
        assert_eq!(
            map.try_add("dddd", &bad).unwrap_err(),
            SourceError::MissingMsid
        );
        // Invalid SSRC text.
        let j = parse(
            "<jingle xmlns='urn:xmpp:jingle:1'><content name='audio'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'><source xmlns='urn:xmpp:jingle:apps:rtp:ssma:0' ssrc='0'/></description></content></jingle>",
        );
        assert_eq!(
            EndpointSourceSet::from_jingle(&j).unwrap_err(),
            SourceError::InvalidSsrc
        );
    }

    #[test]
    fn remove_takes_groups_along() {
        let mut map = ConferenceSourceMap::new(SourceLimits::default());
        let set = EndpointSourceSet::from_jingle(&camera_and_mic("aaaa", 100)).unwrap();
        map.try_add("aaaa", &set).unwrap();
        let rm = EndpointSourceSet {
            sources: vec![set.sources[1].clone()],
            groups: vec![],
        };
        let removed = map.try_remove("aaaa", &rm).unwrap();
        assert_eq!(removed.sources.len(), 1);
        assert_eq!(removed.groups.len(), 2, "SIM and FID(101,104)");
        assert_eq!(
            map.try_remove("aaaa", &rm).unwrap_err(),
            SourceError::NoSuchSource
        );
    }

    #[test]
    fn compact_json_as_jicofo_writes_it() {
        let set = EndpointSourceSet::from_jingle(&camera_and_mic("aaaa", 100)).unwrap();
        let j = set.strip_simulcast().compact_json();
        assert_eq!(
            j.to_string(),
            r#"[[{"m":"aaaa-video-1 y","n":"aaaa-v0","s":101},{"m":"aaaa-video-1 y","n":"aaaa-v0","s":104}],[["f",101,104]],[{"m":"aaaa-audio-1 x","n":"aaaa-a0","s":100}]]"#
        );
        let c = set.to_colibri("aaaa");
        assert_eq!(c.media_sources.len(), 2);
        let v = c.media_sources.iter().find(|m| m.id == "aaaa-v0").unwrap();
        assert_eq!(v.sources.len(), 6);
        assert_eq!(v.ssrc_groups.len(), 4);
    }
}
