//! Entity capabilities (XEP-0115): a client's presence names its disco#info answer by a hash
//! (`<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node=… ver=…/>`), so whoever
//! has verified one answer for that hash can skip asking the next client that announces it.
//! The Jitsi apps all announce the same hash for the same build and flags; the focus uses
//! this to invite a participant without first waiting for its disco#info answer, as Jicofo
//! does (docs/focus.md "Features").
//!
//! [`verification_string`] is the hash input of XEP-0115 §5.1 for answers without data
//! forms; [`CapsCache`] keeps verified answers, bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use minidom::Element;

pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_DATA: &str = "jabber:x:data";

/// What a presence's `<c/>` announces: the node and the SHA-1 `ver`. Other hash functions
/// are not used by the Jitsi clients and are ignored (then the answer is simply asked for).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caps {
    pub node: String,
    pub ver: String,
}

impl Caps {
    /// The `<c/>` of a presence, if it uses SHA-1 and is of sane size.
    pub fn of_presence(presence: &Element) -> Option<Caps> {
        let c = presence.get_child("c", NS_CAPS)?;
        let (hash, node, ver) = (c.attr("hash")?, c.attr("node")?, c.attr("ver")?);
        // A SHA-1 in base64 is 28 characters; nodes are URLs.
        (hash.eq_ignore_ascii_case("sha-1") && ver.len() == 28 && node.len() <= 256).then(|| Caps {
            node: node.to_string(),
            ver: ver.to_string(),
        })
    }
}

/// The XEP-0115 §5.1 hash input of a disco#info `<query/>`: identities (`category/type/lang/
/// name<`, sorted) then features (`var<`, sorted). `None` where the answer cannot be
/// verified this way: it carries data forms, or repeats an identity or a feature (which
/// §5.4 says to reject).
pub fn verification_string(query: &Element) -> Option<String> {
    if query.name() != "query" || query.ns() != NS_DISCO_INFO || query.has_child("x", NS_DATA) {
        return None;
    }
    let mut identities: Vec<String> = query
        .children()
        .filter(|c| c.name() == "identity" && c.ns() == NS_DISCO_INFO)
        .map(|i| {
            format!(
                "{}/{}/{}/{}<",
                i.attr("category").unwrap_or(""),
                i.attr("type").unwrap_or(""),
                i.attr("xml:lang").unwrap_or(""),
                i.attr("name").unwrap_or("")
            )
        })
        .collect();
    let mut features: Vec<&str> = query
        .children()
        .filter(|c| c.name() == "feature" && c.ns() == NS_DISCO_INFO)
        .filter_map(|f| f.attr("var"))
        .collect();
    identities.sort_unstable();
    features.sort_unstable();
    let (ni, nf) = (identities.len(), features.len());
    identities.dedup();
    features.dedup();
    if identities.len() != ni || features.len() != nf {
        return None;
    }
    let mut s = identities.concat();
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    Some(s)
}

/// `ver` for a verification string: base64 of its SHA-1.
pub fn ver_of(verification: &str) -> String {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        verification.as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

/// Whether `query` (a disco#info answer) is the one `caps` announced.
pub fn verifies(caps: &Caps, query: &Element) -> bool {
    verification_string(query).is_some_and(|s| ver_of(&s) == caps.ver)
}

/// Verified disco#info features by announced caps, shared by everyone who clones it; at most
/// `limit` entries, the oldest forgotten first.
#[derive(Clone)]
pub struct CapsCache {
    inner: Arc<Mutex<Entries>>,
}

struct Entries {
    limit: usize,
    map: HashMap<Caps, Arc<[String]>>,
    order: VecDeque<Caps>,
}

impl std::fmt::Debug for CapsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CapsCache({} entries)", self.len())
    }
}

impl CapsCache {
    /// A cache of at most `limit` answers (0: nothing is kept).
    pub fn new(limit: usize) -> CapsCache {
        CapsCache {
            inner: Arc::new(Mutex::new(Entries {
                limit,
                map: HashMap::new(),
                order: VecDeque::new(),
            })),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The features of a verified answer for `caps`.
    pub fn get(&self, caps: &Caps) -> Option<Arc<[String]>> {
        self.entries().map.get(caps).cloned()
    }

    /// Keep `query`'s features for `caps` if the answer verifies against it; whether it did.
    pub fn learn(&self, caps: &Caps, query: &Element) -> bool {
        if !verifies(caps, query) {
            return false;
        }
        let features: Arc<[String]> = query
            .children()
            .filter(|c| c.name() == "feature" && c.ns() == NS_DISCO_INFO)
            .filter_map(|f| f.attr("var").map(str::to_string))
            .collect();
        let mut e = self.entries();
        if e.limit == 0 || e.map.contains_key(caps) {
            return true;
        }
        while e.map.len() >= e.limit {
            let Some(old) = e.order.pop_front() else {
                break;
            };
            e.map.remove(&old);
        }
        e.order.push_back(caps.clone());
        e.map.insert(caps.clone(), features);
        true
    }

    pub fn len(&self) -> usize {
        self.entries().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Element {
        s.parse().expect("xml")
    }

    fn query(features: &[&str]) -> Element {
        let f: String = features
            .iter()
            .map(|v| format!("<feature var='{v}'/>"))
            .collect();
        parse(&format!("<query xmlns='{NS_DISCO_INFO}'>{f}</query>"))
    }

    #[test]
    fn xep_0115_example() {
        // XEP-0115 §5.2's simple example.
        let q = parse(&format!(
            "<query xmlns='{NS_DISCO_INFO}'><identity category='client' type='pc' name='Exodus 0.9.1'/>\
             <feature var='http://jabber.org/protocol/disco#info'/><feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/><feature var='http://jabber.org/protocol/caps'/></query>"
        ));
        let s = verification_string(&q).expect("verifiable");
        assert_eq!(
            s,
            "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<http://jabber.org/protocol/muc<"
        );
        assert_eq!(ver_of(&s), "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    #[test]
    fn forms_and_repeats_are_not_verified() {
        let q = parse(&format!(
            "<query xmlns='{NS_DISCO_INFO}'><feature var='a'/><x xmlns='{NS_DATA}'/></query>"
        ));
        assert_eq!(verification_string(&q), None);
        assert_eq!(verification_string(&query(&["a", "a"])), None);
    }

    #[test]
    fn the_cache_keeps_only_verified_answers_and_stays_bounded() {
        let cache = CapsCache::new(2);
        let q = |n: usize| query(&[&format!("urn:f:{n}")]);
        let caps = |n: usize| Caps {
            node: "n".into(),
            ver: ver_of(&verification_string(&q(n)).expect("verifiable")),
        };
        // A lie: the answer is not the one announced.
        assert!(!cache.learn(&caps(1), &q(2)));
        assert!(cache.get(&caps(1)).is_none());
        for n in 0..5 {
            assert!(cache.learn(&caps(n), &q(n)));
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&caps(0)).is_none());
        assert_eq!(
            cache.get(&caps(4)).as_deref(),
            Some(&["urn:f:4".to_string()][..])
        );
        // Nothing kept with a limit of 0.
        let none = CapsCache::new(0);
        assert!(none.learn(&caps(1), &q(1)));
        assert!(none.is_empty());
    }

    #[test]
    fn presence_caps_need_sha1_and_sane_sizes() {
        let p = |hash: &str, ver: &str| {
            parse(&format!(
                "<presence xmlns='jabber:client'><c xmlns='{NS_CAPS}' hash='{hash}' node='https://jitsi.org/jitsi-meet' ver='{ver}'/></presence>"
            ))
        };
        let ok = Caps::of_presence(&p("sha-1", "+mpajJhafj8jFogLBKsPbQfMgzU="));
        assert_eq!(
            ok.map(|c| c.ver),
            Some("+mpajJhafj8jFogLBKsPbQfMgzU=".into())
        );
        assert_eq!(
            Caps::of_presence(&p("md5", "+mpajJhafj8jFogLBKsPbQfMgzU=")),
            None
        );
        assert_eq!(Caps::of_presence(&p("sha-1", "short")), None);
    }
}
