use super::*;

const R: &str = "room@muc.meet.jitsi";

fn shard(cfg: MucConfig) -> Shard {
    let cfg = Arc::new(cfg);
    Shard {
        visitor_nicks: Default::default(),
        rng: rand::SeedableRng::seed_from_u64(1),
        wall: WallClock {
            instant: Instant::now(),
            unix_ms: 1_800_000_000_000,
        },
        modules: builtin_modules(&cfg).iter().map(|f| f()).collect(),
        cfg,
        rooms: HashMap::new(),
        occupancy: Default::default(),
        directory: Default::default(),
    }
}

fn cfg() -> MucConfig {
    let mut c = MucConfig::new("muc.meet.jitsi");
    c.admins = vec!["focus@auth.meet.jitsi".into()];
    c
}

fn parse(s: &str) -> Element {
    crate::xml::parse_document(s.as_bytes(), &Default::default()).unwrap()
}

fn user(n: usize) -> String {
    format!("u{n}@meet.jitsi/r{n}")
}

fn join(s: &mut Shard, from: &str, nick: &str, extra: &str) -> Vec<Element> {
    s.handle(
        parse(&format!(
            "<presence xmlns='jabber:client' from='{from}' to='{R}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/>{extra}</presence>"
        )),
        Instant::now(),
    )
}

fn statuses(p: &Element) -> Vec<String> {
    p.get_child("x", room::NS_MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.name() == "status")
                .filter_map(|c| c.attr("code").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn item(p: &Element) -> &Element {
    p.get_child("x", room::NS_MUC_USER)
        .and_then(|x| x.get_child("item", room::NS_MUC_USER))
        .expect("muc#user item")
}

fn error_condition(e: &Element) -> Option<String> {
    let err = e.get_child("error", ns::CLIENT)?;
    err.children()
        .find(|c| c.ns() == ns::STANZAS)
        .map(|c| c.name().to_string())
}

#[test]
fn join_order_and_status_codes_for_20_occupants() {
    let mut s = shard(cfg());
    for n in 0..20 {
        let nick = format!("n{n}");
        let out = join(
            &mut s,
            &user(n),
            &nick,
            "<nick xmlns='http://jabber.org/protocol/nick'>User</nick>",
        );
        // To the joiner: every earlier occupant, then itself with 110 and 100, then the subject.
        let to_me: Vec<&Element> = out
            .iter()
            .filter(|e| e.attr("to") == Some(&user(n)))
            .collect();
        assert_eq!(to_me.len(), n + 2, "occupant {n}");
        for (k, p) in to_me.iter().take(n).enumerate() {
            assert_eq!(p.attr("from"), Some(format!("{R}/n{k}").as_str()));
            assert!(!statuses(p).contains(&"110".to_string()));
            assert_eq!(item(p).attr("jid"), Some(user(k).as_str()));
        }
        let me = to_me[n];
        assert_eq!(me.attr("from"), Some(format!("{R}/{nick}").as_str()));
        let st = statuses(me);
        assert!(
            st.contains(&"110".into()) && st.contains(&"100".into()),
            "{st:?}"
        );
        assert_eq!(st.contains(&"201".into()), n == 0);
        assert!(to_me[n + 1].get_child("subject", ns::CLIENT).is_some());
        // Everyone else hears about the joiner once.
        for k in 0..n {
            let seen: Vec<&Element> = out
                .iter()
                .filter(|e| e.attr("to") == Some(&user(k)))
                .collect();
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].attr("from"), Some(format!("{R}/{nick}").as_str()));
        }
    }
}

#[test]
fn presence_extensions_relayed_unchanged() {
    let mut s = shard(cfg());
    join(&mut s, &user(1), "a", "");
    let ext = "<stats-id>Abdiel-Y1O</stats-id><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://jitsi.org/jitsi-meet' ver='x='/><SourceInfo>{\"a-v0\":{\"muted\":true}}</SourceInfo><jitsi_participant_codecList>av1,vp9</jitsi_participant_codecList><nick xmlns='http://jabber.org/protocol/nick'>Bob</nick>";
    let out = join(&mut s, &user(2), "b", ext);
    let to_a = out.iter().find(|e| e.attr("to") == Some(&user(1))).unwrap();
    let orig = parse(&format!("<presence xmlns='jabber:client'>{ext}</presence>"));
    for c in orig.children() {
        let got = to_a
            .children()
            .find(|g| g.name() == c.name() && g.ns() == c.ns())
            .unwrap();
        assert_eq!(crate::xml::to_string(got), crate::xml::to_string(c));
    }
    assert!(to_a.has_child("occupant-id", room::NS_OCCUPANT_ID));
    // An update is relayed too.
    let upd = parse(&format!(
        "<presence xmlns='jabber:client' from='{}' to='{R}/b'><SourceInfo>{{}}</SourceInfo></presence>",
        user(2)
    ));
    let out = s.handle(upd, Instant::now());
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|p| {
        p.get_child("SourceInfo", ns::CLIENT)
            .is_some_and(|c| c.text() == "{}")
    }));
}

#[test]
fn leave_and_destroy_when_empty() {
    let mut s = shard(cfg());
    join(&mut s, &user(1), "a", "");
    join(&mut s, &user(2), "b", "");
    let out = s.handle(
        parse(&format!(
            "<presence xmlns='jabber:client' type='unavailable' from='{}' to='{R}/b'/>",
            user(2)
        )),
        Instant::now(),
    );
    assert_eq!(out.len(), 2);
    let self_p = out.iter().find(|p| p.attr("to") == Some(&user(2))).unwrap();
    assert_eq!(self_p.attr("type"), Some("unavailable"));
    assert!(statuses(self_p).contains(&"110".into()));
    assert_eq!(item(self_p).attr("role"), Some("none"));
    s.handle(
        parse(&format!(
            "<presence xmlns='jabber:client' type='unavailable' from='{}' to='{R}/a'/>",
            user(1)
        )),
        Instant::now(),
    );
    assert!(s.rooms.is_empty());
}

fn owner_set(s: &mut Shard, from: &str, fields: &str) -> Vec<Element> {
    s.handle(
        parse(&format!(
            "<iq xmlns='jabber:client' type='set' id='cfg' from='{from}' to='{R}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>{fields}</x></query></iq>"
        )),
        Instant::now(),
    )
}

#[test]
fn password_protected_room() {
    let mut s = shard(cfg());
    let focus = "focus@auth.meet.jitsi/focus";
    join(&mut s, focus, "focus", "");
    // The owner form has the field the client looks for.
    let out = s.handle(parse(&format!("<iq xmlns='jabber:client' type='get' id='g' from='{focus}' to='{R}'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>")), Instant::now());
    assert!(crate::xml::to_string(&out[0]).contains("muc#roomconfig_roomsecret"));
    let out = owner_set(
        &mut s,
        focus,
        "<field var='muc#roomconfig_roomsecret'><value>1234</value></field><field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field>",
    );
    assert_eq!(out[0].attr("type"), Some("result"));
    assert!(
        out.iter().any(|m| statuses(m).contains(&"104".into())),
        "status 104 to occupants"
    );
    let out = join(&mut s, &user(1), "a", "");
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-authorized"));
    let out = s.handle(parse(&format!("<presence xmlns='jabber:client' from='{}' to='{R}/a'><x xmlns='http://jabber.org/protocol/muc'><password>1234</password></x></presence>", user(1))), Instant::now());
    assert!(out.iter().any(|p| statuses(p).contains(&"110".into())));
    // disco shows the lock.
    let out = s.handle(parse(&format!("<iq xmlns='jabber:client' type='get' id='d' from='{}' to='{R}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", user(1))), Instant::now());
    let d = crate::xml::to_string(&out[0]);
    assert!(
        d.contains("muc_passwordprotected")
            && d.contains("muc#roominfo_meetingId")
            && d.contains("muc#roominfo_created_timestamp"),
        "{d}"
    );
    // A non-owner cannot reconfigure.
    let out = owner_set(
        &mut s,
        &user(1),
        "<field var='muc#roomconfig_roomsecret'><value></value></field>",
    );
    assert_eq!(error_condition(&out[0]).as_deref(), Some("forbidden"));
}

#[test]
fn members_only_and_max_occupants() {
    let mut s = shard(cfg());
    let focus = "focus@auth.meet.jitsi/focus";
    join(&mut s, focus, "focus", "");
    owner_set(
        &mut s,
        focus,
        "<field var='muc#roomconfig_membersonly'><value>true</value></field><field var='muc#roomconfig_maxusers'><value>2</value></field>",
    );
    let out = join(&mut s, &user(1), "a", "");
    assert_eq!(
        error_condition(&out[0]).as_deref(),
        Some("registration-required")
    );
    for n in 1..=3 {
        s.handle(parse(&format!("<iq xmlns='jabber:client' type='set' id='m' from='{focus}' to='{R}'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='member' jid='u{n}@meet.jitsi'/></query></iq>")), Instant::now());
    }
    assert!(
        join(&mut s, &user(1), "a", "")
            .iter()
            .any(|p| statuses(p).contains(&"110".into()))
    );
    assert!(
        join(&mut s, &user(2), "b", "")
            .iter()
            .any(|p| statuses(p).contains(&"110".into()))
    );
    // The focus does not count; the third member does not fit.
    let out = join(&mut s, &user(3), "c", "");
    assert_eq!(
        error_condition(&out[0]).as_deref(),
        Some("service-unavailable")
    );
}

fn admin_set(s: &mut Shard, from: &str, item: &str) -> Vec<Element> {
    s.handle(
        parse(&format!("<iq xmlns='jabber:client' type='set' id='k' from='{from}' to='{R}'><query xmlns='http://jabber.org/protocol/muc#admin'>{item}</query></iq>")),
        Instant::now(),
    )
}

#[test]
fn kick_grant_and_permission_failures() {
    let mut s = shard(cfg());
    let focus = "focus@auth.meet.jitsi/focus";
    join(&mut s, focus, "focus", "");
    join(&mut s, &user(1), "a", "");
    join(&mut s, &user(2), "b", "");
    join(&mut s, &user(3), "c", "");
    // A participant may not kick.
    let out = admin_set(&mut s, &user(2), "<item nick='c' role='none'/>");
    assert_eq!(error_condition(&out[0]).as_deref(), Some("forbidden"));
    // The focus makes a owner (Jicofo's auto-owner); a becomes moderator with the actor.
    let out = admin_set(
        &mut s,
        focus,
        "<item affiliation='owner' jid='u1@meet.jitsi'/>",
    );
    let a_self = out
        .iter()
        .find(|p| p.attr("to") == Some(&user(1)) && p.name() == "presence")
        .unwrap();
    assert_eq!(item(a_self).attr("role"), Some("moderator"));
    assert_eq!(item(a_self).attr("affiliation"), Some("owner"));
    assert!(item(a_self).get_child("actor", room::NS_MUC_USER).is_some());
    // a may not kick the focus (owner) ...
    let out = admin_set(&mut s, &user(1), "<item nick='focus' role='none'/>");
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-allowed"));
    // ... but may kick c, who sees 307 + 110.
    let out = admin_set(
        &mut s,
        &user(1),
        "<item nick='c' role='none'><reason>bye</reason></item>",
    );
    let c_self = out.iter().find(|p| p.attr("to") == Some(&user(3))).unwrap();
    let st = statuses(c_self);
    assert!(
        st.contains(&"307".into()) && st.contains(&"110".into()),
        "{st:?}"
    );
    assert!(
        out.iter()
            .any(|p| p.attr("to") == Some(&user(2)) && statuses(p).contains(&"307".into()))
    );
    assert!(
        out.iter()
            .any(|r| r.name() == "iq" && r.attr("type") == Some("result"))
    );
    // Grant moderator role to b, then b (moderator, affiliation none) may not kick a.
    admin_set(&mut s, &user(1), "<item nick='b' role='moderator'/>");
    let out = admin_set(&mut s, &user(2), "<item nick='a' role='none'/>");
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-allowed"));
    // Ban b: 301.
    let out = admin_set(
        &mut s,
        &user(1),
        "<item affiliation='outcast' jid='u2@meet.jitsi'/>",
    );
    assert!(
        out.iter()
            .any(|p| p.attr("to") == Some(&user(2)) && statuses(p).contains(&"301".into()))
    );
    let out = join(&mut s, &user(2), "b", "");
    assert_eq!(error_condition(&out[0]).as_deref(), Some("forbidden"));
}

#[test]
fn occupant_iq_routing_both_ways() {
    let mut s = shard(cfg());
    let focus = "focus@auth.meet.jitsi/focus";
    join(&mut s, focus, "focus", "");
    join(&mut s, &user(1), "a", "");
    let out = s.handle(parse(&format!("<iq xmlns='jabber:client' type='set' id='j1' from='{focus}' to='{R}/a'><jingle xmlns='urn:xmpp:jingle:1' action='session-initiate'/></iq>")), Instant::now());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].attr("to"), Some(user(1).as_str()));
    assert_eq!(out[0].attr("from"), Some(format!("{R}/focus").as_str()));
    assert!(out[0].has_child("jingle", "urn:xmpp:jingle:1"));
    let out = s.handle(
        parse(&format!(
            "<iq xmlns='jabber:client' type='result' id='j1' from='{}' to='{R}/focus'/>",
            user(1)
        )),
        Instant::now(),
    );
    assert_eq!(out[0].attr("to"), Some(focus));
    assert_eq!(out[0].attr("from"), Some(format!("{R}/a").as_str()));
    // A non-occupant cannot reach occupants.
    let out = s.handle(parse(&format!("<iq xmlns='jabber:client' type='get' id='x' from='{}' to='{R}/a'><query xmlns='q'/></iq>", user(9))), Instant::now());
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-acceptable"));
}

#[test]
fn messages_and_nick_conflict() {
    let mut s = shard(cfg());
    join(&mut s, &user(1), "a", "");
    join(&mut s, &user(2), "b", "");
    let out = join(&mut s, &user(3), "a", "");
    assert_eq!(error_condition(&out[0]).as_deref(), Some("conflict"));
    let out = s.handle(parse(&format!("<message xmlns='jabber:client' type='groupchat' from='{}' to='{R}'><body>hi</body><nick xmlns='http://jabber.org/protocol/nick'>A</nick><json-message xmlns='http://jitsi.org/jitmeet'>{{}}</json-message></message>", user(1))), Instant::now());
    assert_eq!(out.len(), 2);
    for m in &out {
        assert_eq!(m.attr("from"), Some(format!("{R}/a").as_str()));
        assert!(
            m.get_child("nick", "http://jabber.org/protocol/nick")
                .is_none()
        );
        assert!(m.has_child("json-message", room::NS_JITMEET));
    }
    let out = s.handle(parse(&format!("<message xmlns='jabber:client' type='chat' from='{}' to='{R}/b'><body>psst</body></message>", user(1))), Instant::now());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].attr("to"), Some(user(2).as_str()));
    // Outsiders cannot post.
    let out = s.handle(parse(&format!("<message xmlns='jabber:client' type='groupchat' from='{}' to='{R}'><body>spam</body></message>", user(7))), Instant::now());
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-acceptable"));
}

#[test]
fn flooding_occupant_only_hurts_itself() {
    let mut c = cfg();
    c.message_rate = 1;
    c.message_burst = 3;
    let mut s = shard(c);
    join(&mut s, &user(1), "a", "");
    join(&mut s, &user(2), "b", "");
    let now = Instant::now();
    let msg = |n: usize| {
        parse(&format!(
            "<message xmlns='jabber:client' type='groupchat' from='{}' to='{R}'><body>x</body></message>",
            user(n)
        ))
    };
    for _ in 0..3 {
        assert_eq!(s.handle(msg(1), now).len(), 2);
    }
    let out = s.handle(msg(1), now);
    assert_eq!(
        error_condition(&out[0]).as_deref(),
        Some("policy-violation")
    );
    assert_eq!(s.handle(msg(2), now).len(), 2);
}

#[test]
fn creator_owns_room_when_anyone_may_create() {
    let mut s = shard(cfg());
    let out = join(&mut s, &user(1), "a", "");
    let me = out
        .iter()
        .find(|p| statuses(p).contains(&"110".into()))
        .unwrap();
    assert_eq!(item(me).attr("affiliation"), Some("owner"));
    assert_eq!(item(me).attr("role"), Some("moderator"));
    let out = join(&mut s, &user(2), "b", "");
    let me = out
        .iter()
        .find(|p| p.attr("to") == Some(&user(2)) && statuses(p).contains(&"110".into()))
        .unwrap();
    assert_eq!(item(me).attr("role"), Some("participant"));
}

#[test]
fn creation_restricted_to_admins() {
    let mut c = cfg();
    c.creation = Creation::Admins;
    let mut s = shard(c);
    let out = join(&mut s, &user(1), "a", "");
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-allowed"));
    assert!(crate::xml::to_string(&out[0]).contains("Room creation is restricted"));
    assert!(s.rooms.is_empty());
    join(&mut s, "focus@auth.meet.jitsi/focus", "focus", "");
    assert!(
        join(&mut s, &user(1), "a", "")
            .iter()
            .any(|p| statuses(p).contains(&"110".into()))
    );
}

#[test]
fn brewery_only_for_service_accounts() {
    let mut c = MucConfig::new("internal-muc.meet.jitsi");
    c.allowed_domains = vec!["auth.meet.jitsi".into()];
    let mut s = shard(c);
    let b = "jvbbrewery@internal-muc.meet.jitsi";
    let p = |from: &str, nick: &str| {
        parse(&format!(
            "<presence xmlns='jabber:client' from='{from}' to='{b}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/><stats xmlns='http://jitsi.org/protocol/colibri'><stat name='stress_level' value='0.1'/></stats></presence>"
        ))
    };
    let out = s.handle(p("u1@meet.jitsi/r", "x"), Instant::now());
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-allowed"));
    s.handle(p("focus@auth.meet.jitsi/focus", "focus"), Instant::now());
    let out = s.handle(p("jvb@auth.meet.jitsi/jvb1", "jvb1"), Instant::now());
    let to_focus = out
        .iter()
        .find(|e| e.attr("to") == Some("focus@auth.meet.jitsi/focus"))
        .unwrap();
    assert!(
        to_focus
            .get_child("stats", "http://jitsi.org/protocol/colibri")
            .is_some()
    );
}

struct DenyNick;
impl RoomModule for DenyNick {
    fn check_join(&mut self, _room: &Room, join: &JoinRequest<'_>) -> JoinCheck {
        match stanza::error_reply(join.presence, StanzaError::NOT_ALLOWED, None) {
            Some(e) if join.nick == "evil" => JoinCheck::Refuse(e),
            _ => JoinCheck::Continue,
        }
    }
    fn on_event(&mut self, ctx: &mut Ctx<'_>, room: &str, ev: &RoomEvent) {
        if let RoomEvent::Joined { nick, .. } = ev {
            ctx.out.push(el(
                "message",
                ns::CLIENT,
                &[("to", "log@meet.jitsi"), ("from", room), ("id", nick)],
            ));
        }
    }
}

#[test]
fn modules_hook_joins() {
    let mut s = shard(cfg());
    s.modules.insert(0, Box::new(DenyNick));
    let out = join(&mut s, &user(1), "evil", "");
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-allowed"));
    assert!(s.rooms.is_empty());
    let out = join(&mut s, &user(1), "good", "");
    assert!(
        out.iter()
            .any(|m| m.attr("to") == Some("log@meet.jitsi") && m.attr("id") == Some("good"))
    );
}

#[test]
fn room_metadata_from_moderators_reaches_everyone_and_joiners() {
    let mut s = shard(cfg());
    s.modules.insert(
        0,
        Box::new(metadata::RoomMetadata::new("metadata.meet.jitsi")),
    );
    // Each joiner gets the map before its own presence, `{}` while nothing is set.
    let metadata_then_self = |out: &[Element], jid: &str| -> serde_json::Value {
        let meta = out
            .iter()
            .position(|m| {
                m.attr("to") == Some(jid) && m.attr("from") == Some("metadata.meet.jitsi")
            })
            .expect("metadata for the joiner");
        let own = out
            .iter()
            .position(|p| {
                p.name() == "presence"
                    && p.attr("to") == Some(jid)
                    && statuses(p).iter().any(|c| c == "110")
            })
            .expect("self-presence");
        assert!(meta < own, "metadata after the self-presence: {out:?}");
        let text = out[meta]
            .get_child("json-message", room::NS_JITMEET)
            .unwrap()
            .text();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["metadata"].clone()
    };
    let out = join(&mut s, &user(1), "a", "");
    assert_eq!(metadata_then_self(&out, &user(1)), serde_json::json!({}));
    join(&mut s, &user(2), "b", "");
    let set = |from: &str, json: &str| {
        parse(&format!(
            "<message xmlns='jabber:client' from='{from}' to='metadata.meet.jitsi'><room_metadata xmlns='http://jitsi.org/jitmeet' room='{R}'>{json}</room_metadata></message>"
        ))
    };
    // a created the room (owner, moderator): its update goes to both occupants.
    let out = s.handle(
        set(
            &user(1),
            r#"{"key":"startMuted","data":{"audio":true,"video":false},"type":"room_metadata"}"#,
        ),
        Instant::now(),
    );
    assert_eq!(out.len(), 2, "{out:?}");
    for m in &out {
        assert_eq!(m.attr("from"), Some("metadata.meet.jitsi"));
        let v: serde_json::Value = serde_json::from_str(
            &m.get_child("json-message", room::NS_JITMEET)
                .unwrap()
                .text(),
        )
        .unwrap();
        assert_eq!(v["type"], "room_metadata");
        assert_eq!(v["metadata"]["startMuted"]["audio"], true);
    }
    // b is a participant: refused.
    let out = s.handle(set(&user(2), r#"{"key":"x","data":1}"#), Instant::now());
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-allowed"));
    // Garbage is refused too.
    let out = s.handle(set(&user(1), "not json"), Instant::now());
    assert_eq!(error_condition(&out[0]).as_deref(), Some("bad-request"));
    // A late joiner gets the current map.
    let out = join(&mut s, &user(3), "c", "");
    assert_eq!(
        metadata_then_self(&out, &user(3))["startMuted"]["audio"],
        true
    );
}

#[test]
fn semi_anonymous_rooms_show_real_jids_to_moderators_only() {
    let mut s = shard(cfg());
    let focus = "focus@auth.meet.jitsi/focus";
    join(&mut s, focus, "focus", "");
    owner_set(
        &mut s,
        focus,
        "<field var='muc#roomconfig_whois'><value>moderators</value></field>",
    );
    let out = join(&mut s, &user(1), "a", "");
    // The participant sees the focus without its real JID, itself with its own.
    let focus_seen = out
        .iter()
        .find(|p| p.attr("from") == Some(&format!("{R}/focus")) && p.attr("to") == Some(&user(1)))
        .unwrap();
    assert_eq!(item(focus_seen).attr("jid"), None);
    let own = out
        .iter()
        .find(|p| p.attr("to") == Some(&user(1)) && statuses(p).contains(&"110".into()))
        .unwrap();
    assert_eq!(item(own).attr("jid"), Some(user(1).as_str()));
    // The focus (a moderator) sees the participant's real JID.
    let to_focus = out.iter().find(|p| p.attr("to") == Some(focus)).unwrap();
    assert_eq!(item(to_focus).attr("jid"), Some(user(1).as_str()));
}

#[test]
fn mediated_invitations_make_members_in_members_only_rooms() {
    let mut s = shard(cfg());
    let focus = "focus@auth.meet.jitsi/focus";
    join(&mut s, focus, "focus", "");
    owner_set(
        &mut s,
        focus,
        "<field var='muc#roomconfig_roomsecret'><value>pw</value></field><field var='muc#roomconfig_membersonly'><value>true</value></field>",
    );
    let invite = |from: &str, to: &str| {
        parse(&format!(
            "<message xmlns='jabber:client' from='{from}' to='{R}'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='{to}'/></x></message>"
        ))
    };
    // u1 knocks with the password: not a member yet.
    let with_pw = || {
        parse(&format!(
            "<presence xmlns='jabber:client' from='{}' to='{R}/a'><x xmlns='http://jabber.org/protocol/muc'><password>pw</password></x></presence>",
            user(1)
        ))
    };
    let out = s.handle(with_pw(), Instant::now());
    assert_eq!(
        error_condition(&out[0]).as_deref(),
        Some("registration-required")
    );
    // The moderator (the focus here) invites u1: an invitation with the password, from the room.
    let out = s.handle(invite(focus, &user(1)), Instant::now());
    let inv = out.iter().find(|m| m.attr("to") == Some(&user(1))).unwrap();
    assert_eq!(inv.attr("from"), Some(R));
    let x = inv.get_child("x", room::NS_MUC_USER).unwrap();
    assert!(x.get_child("invite", room::NS_MUC_USER).is_some());
    assert_eq!(
        x.get_child("password", room::NS_MUC_USER).unwrap().text(),
        "pw"
    );
    let out = s.handle(with_pw(), Instant::now());
    assert!(out.iter().any(|p| statuses(p).contains(&"110".into())));
    // A participant may not invite into a members-only room.
    let out = s.handle(invite(&user(1), &user(2)), Instant::now());
    assert_eq!(error_condition(&out[0]).as_deref(), Some("forbidden"));
}

const L: &str = "room@lobby.meet.jitsi";

fn lobby_shard() -> Shard {
    let mut s = shard(cfg());
    s.modules.insert(
        0,
        Box::new(lobby::Lobby::new(
            vec!["focus@auth.meet.jitsi".into()],
            "muc.meet.jitsi",
            "lobby.meet.jitsi",
            Vec::new(),
            10,
        )),
    );
    s
}

fn json_of(m: &Element) -> Option<serde_json::Value> {
    m.get_child("json-message", room::NS_JITMEET)
        .and_then(|j| serde_json::from_str(&j.text()).ok())
}

fn presence_to(room: &str, from: &str, nick: &str, name: &str, pw: Option<&str>) -> Element {
    let pw = pw.map_or(String::new(), |p| format!("<password>{p}</password>"));
    let nick_el = if name.is_empty() {
        String::new()
    } else {
        format!("<nick xmlns='http://jabber.org/protocol/nick'>{name}</nick>")
    };
    parse(&format!(
        "<presence xmlns='jabber:client' from='{from}' to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'>{pw}</x>{nick_el}</presence>"
    ))
}

fn joined(out: &[Element], jid: &str) -> bool {
    out.iter().any(|p| {
        p.attr("to") == Some(jid) && statuses(p).contains(&"110".into()) && p.attr("type").is_none()
    })
}

#[test]
fn lobby_knock_admit_reject_password_and_disable() {
    let mut s = lobby_shard();
    let now = Instant::now;
    let focus = "focus@auth.meet.jitsi/focus";
    join(&mut s, focus, "focus", "");
    join(&mut s, &user(1), "alice", "");
    admin_set(
        &mut s,
        focus,
        &format!("<item affiliation='owner' jid='{}'/>", bare_of(&user(1))),
    );
    owner_set(
        &mut s,
        &user(1),
        "<field var='muc#roomconfig_roomsecret'><value>pw</value></field>",
    );
    // Alice turns the lobby on: everyone hears it from her, the room names its lobby.
    let out = owner_set(
        &mut s,
        &user(1),
        "<field var='muc#roomconfig_membersonly'><value>true</value></field><field var='muc#roomconfig_roomsecret'><value>pw</value></field>",
    );
    let note = out
        .iter()
        .find_map(|m| json_of(m).filter(|v| v["event"] == "LOBBY-ENABLED"))
        .unwrap();
    assert_eq!(note["value"], true);
    assert!(s.rooms.contains_key(L));
    let disco = s.handle(parse(&format!("<iq xmlns='jabber:client' type='get' id='d' from='{}' to='{R}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", user(1))), now());
    assert!(crate::xml::to_string(&disco[0]).contains(L));
    // Bob knocks on the main room: no name → 406; with a name → 407 naming the lobby.
    let out = s.handle(presence_to(R, &user(2), "bob", "", None), now());
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-acceptable"));
    let out = s.handle(presence_to(R, &user(2), "bob", "Bob", None), now());
    assert_eq!(
        error_condition(&out[0]).as_deref(),
        Some("registration-required")
    );
    assert!(crate::xml::to_string(&out[0]).contains(&format!(">{L}</lobbyroom>")));
    // In the lobby: Bob waits; Alice (an owner) joins and sees him, he does not see her.
    assert!(joined(
        &s.handle(presence_to(L, &user(2), "bob", "Bob", None), now()),
        &user(2)
    ));
    let out = s.handle(presence_to(L, &user(1), "alice", "Alice", None), now());
    assert!(
        out.iter()
            .any(|p| p.attr("to") == Some(&user(1)) && p.attr("from") == Some(&format!("{L}/bob")))
    );
    assert!(
        !out.iter().any(|p| p.attr("to") == Some(&user(2))),
        "{out:?}"
    );
    // Lobby chat reaches the moderators only.
    s.handle(presence_to(L, &user(3), "carol", "Carol", None), now());
    let out = s.handle(parse(&format!("<message xmlns='jabber:client' type='groupchat' from='{}' to='{L}'><body>hi</body></message>", user(2))), now());
    let to: Vec<&str> = out.iter().filter_map(|m| m.attr("to")).collect();
    assert_eq!(to, [user(1).as_str()]);
    // Alice admits Bob: he is invited (with the password), everyone hears it.
    let out = s.handle(parse(&format!("<message xmlns='jabber:client' from='{}' to='{R}'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='{}'/></x></message>", user(1), user(2))), now());
    assert!(
        out.iter()
            .any(|m| m.attr("to") == Some(&user(2)) && m.attr("from") == Some(R))
    );
    let granted = out
        .iter()
        .find_map(|m| json_of(m).filter(|v| v["event"] == "LOBBY-ACCESS-GRANTED"))
        .unwrap();
    assert_eq!(granted["value"], format!("{L}/bob"));
    assert_eq!(granted["name"], "Bob");
    assert!(joined(
        &s.handle(presence_to(R, &user(2), "bob", "Bob", Some("pw")), now()),
        &user(2)
    ));
    // Alice rejects Carol: a kick from the lobby, everyone hears it; Carol cannot walk in.
    let out = s.handle(parse(&format!("<iq xmlns='jabber:client' type='set' id='k' from='{}' to='{L}'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='carol' role='none'/></query></iq>", user(1))), now());
    assert!(
        out.iter()
            .any(|p| p.attr("to") == Some(&user(3)) && statuses(p).contains(&"307".into()))
    );
    assert!(
        out.iter()
            .any(|m| json_of(m).is_some_and(|v| v["event"] == "LOBBY-ACCESS-DENIED"))
    );
    let out = s.handle(presence_to(R, &user(3), "carol", "Carol", None), now());
    assert_eq!(
        error_condition(&out[0]).as_deref(),
        Some("registration-required")
    );
    // The password lets Dave past the lobby.
    assert!(joined(
        &s.handle(presence_to(R, &user(4), "dave", "Dave", Some("pw")), now()),
        &user(4)
    ));
    // Eve waits; Alice turns the lobby off: the lobby is destroyed pointing at the room, and Eve
    // gets in without knocking.
    s.handle(presence_to(L, &user(5), "eve", "Eve", None), now());
    let out = owner_set(
        &mut s,
        &user(1),
        "<field var='muc#roomconfig_membersonly'><value>false</value></field>",
    );
    let destroy = out.iter().find(|p| p.attr("to") == Some(&user(5))).unwrap();
    let d = destroy
        .get_child("x", room::NS_MUC_USER)
        .unwrap()
        .get_child("destroy", room::NS_MUC_USER)
        .unwrap();
    assert_eq!(d.attr("jid"), Some(R));
    assert!(!s.rooms.contains_key(L));
    assert!(joined(
        &s.handle(presence_to(R, &user(5), "eve", "Eve", Some("pw")), now()),
        &user(5)
    ));
}

#[test]
fn polls_created_answered_and_given_to_late_joiners() {
    let mut s = shard(cfg());
    s.modules.insert(
        0,
        Box::new(polls::Polls::new(
            "polls.meet.jitsi",
            polls::PollLimits {
                per_room: 2,
                options: 3,
            },
        )),
    );
    let cmd = |from: &str, json: &str| {
        parse(&format!(
            "<message xmlns='jabber:client' type='chat' from='{from}' to='polls.meet.jitsi'><json-message xmlns='http://jitsi.org/jitmeet'>{json}</json-message></message>"
        ))
    };
    let now = Instant::now;
    s.handle(presence_to(R, &user(1), "aaaa1111", "Alice", None), now());
    s.handle(presence_to(R, &user(2), "bbbb2222", "Bob", None), now());
    let out = s.handle(cmd(&user(1), r#"{"type":"polls","command":"new-poll","pollId":"p1","question":"Lunch?","answers":[{"name":"Pizza"},{"name":"Sushi"}]}"#), now());
    assert_eq!(out.len(), 2);
    for m in &out {
        let v = json_of(m).unwrap();
        assert_eq!(
            (v["command"].as_str(), v["senderId"].as_str()),
            (Some("new-poll"), Some("aaaa1111"))
        );
        assert_eq!(m.attr("from"), Some("polls.meet.jitsi"));
    }
    let out = s.handle(
        cmd(
            &user(2),
            r#"{"type":"polls","command":"answer-poll","pollId":"p1","answers":[false,true]}"#,
        ),
        now(),
    );
    let v = json_of(&out[0]).unwrap();
    assert_eq!(
        (v["senderId"].as_str(), v["senderName"].as_str()),
        (Some("bbbb2222"), Some("Bob"))
    );
    // Bob changes his mind: his vote moves, it is not counted twice.
    s.handle(
        cmd(
            &user(2),
            r#"{"type":"polls","command":"answer-poll","pollId":"p1","answers":[true,false]}"#,
        ),
        now(),
    );
    // Errors: an unknown poll, the same id again, a bad answer count, too large, too many.
    let err = |out: Vec<Element>| error_condition(&out[0]);
    assert_eq!(
        err(s.handle(
            cmd(
                &user(2),
                r#"{"type":"polls","command":"answer-poll","pollId":"nope","answers":[true]}"#
            ),
            now()
        ))
        .as_deref(),
        Some("item-not-found")
    );
    let again = r#"{"type":"polls","command":"new-poll","pollId":"p1","question":"Again?","answers":[{"name":"x"}]}"#;
    assert_eq!(
        err(s.handle(cmd(&user(2), again), now())).as_deref(),
        Some("not-allowed")
    );
    assert_eq!(
        err(s.handle(
            cmd(
                &user(2),
                r#"{"type":"polls","command":"answer-poll","pollId":"p1","answers":[true]}"#
            ),
            now()
        ))
        .as_deref(),
        Some("bad-request")
    );
    let big = format!(
        r#"{{"type":"polls","command":"new-poll","pollId":"p9","question":"{}","answers":[{{"name":"x"}}]}}"#,
        "q".repeat(1100)
    );
    assert_eq!(
        err(s.handle(cmd(&user(2), &big), now())).as_deref(),
        Some("policy-violation")
    );
    let four = r#"{"type":"polls","command":"new-poll","pollId":"p2","question":"?","answers":[{"name":"a"},{"name":"b"},{"name":"c"},{"name":"d"}]}"#;
    assert_eq!(
        err(s.handle(cmd(&user(2), four), now())).as_deref(),
        Some("policy-violation")
    );
    s.handle(cmd(&user(2), r#"{"type":"polls","command":"new-poll","pollId":"p2","question":"?","answers":[{"name":"a"}]}"#), now());
    assert_eq!(err(s.handle(cmd(&user(2), r#"{"type":"polls","command":"new-poll","pollId":"p3","question":"?","answers":[{"name":"a"}]}"#), now())).as_deref(), Some("policy-violation"));
    // Someone outside the room cannot vote.
    assert_eq!(
        err(s.handle(
            cmd(
                &user(9),
                r#"{"type":"polls","command":"answer-poll","pollId":"p1","answers":[true,true]}"#
            ),
            now()
        ))
        .as_deref(),
        Some("not-allowed")
    );
    // A late joiner gets both polls with their voters.
    let out = s.handle(presence_to(R, &user(3), "cccc3333", "Carol", None), now());
    let old = out
        .iter()
        .find_map(|m| json_of(m).filter(|v| v["command"] == "old-polls"))
        .unwrap();
    assert_eq!(old["polls"].as_array().unwrap().len(), 2);
    assert_eq!(old["polls"][0]["answers"][0]["voters"][0]["name"], "Bob");
    assert!(
        old["polls"][0]["answers"][1]["voters"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn end_conference_by_a_moderator_only() {
    let mut s = shard(cfg());
    s.modules.insert(
        0,
        Box::new(end_conference::EndConference::new(
            "endconference.meet.jitsi",
            "muc.meet.jitsi",
        )),
    );
    let focus = "focus@auth.meet.jitsi/focus";
    let now = Instant::now;
    join(&mut s, focus, "focus", "");
    join(&mut s, &user(1), "a", "");
    join(&mut s, &user(2), "b", "");
    admin_set(
        &mut s,
        focus,
        &format!("<item affiliation='owner' jid='{}'/>", bare_of(&user(1))),
    );
    let end = |from: &str| {
        parse(&format!(
            "<message xmlns='jabber:client' from='{from}' to='endconference.meet.jitsi'><end_conference/></message>"
        ))
    };
    let out = s.handle(end(&user(2)), now());
    assert_eq!(error_condition(&out[0]).as_deref(), Some("forbidden"));
    assert!(s.rooms.contains_key(R));
    assert_eq!(
        error_condition(&s.handle(end(&user(7)), now())[0]).as_deref(),
        Some("not-allowed")
    );
    let out = s.handle(end(&user(1)), now());
    for who in [focus.to_string(), user(1), user(2)] {
        let p = out.iter().find(|p| p.attr("to") == Some(&who)).unwrap();
        let d = p
            .get_child("x", room::NS_MUC_USER)
            .unwrap()
            .get_child("destroy", room::NS_MUC_USER)
            .unwrap();
        assert_eq!(
            d.get_child("reason", room::NS_MUC_USER).unwrap().text(),
            "The meeting has been terminated"
        );
    }
    assert!(!s.rooms.contains_key(R));
}

#[test]
fn speaker_stats_add_up_and_reach_late_joiners() {
    let mut s = shard(cfg());
    s.modules.insert(
        0,
        Box::new(speaker_stats::SpeakerStats::new(
            "speakerstats.meet.jitsi",
            vec!["focus@auth.meet.jitsi".into()],
            100,
        )),
    );
    let t0 = Instant::now();
    let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
    let speak = |from: &str| {
        parse(&format!(
            "<message xmlns='jabber:client' from='{from}' to='speakerstats.meet.jitsi'><speakerstats xmlns='http://jitsi.org/jitmeet' room='{R}'/></message>"
        ))
    };
    s.handle(join_el("focus@auth.meet.jitsi/focus", "focus"), at(0));
    s.handle(presence_to(R, &user(1), "aaaa1111", "Alice", None), at(0));
    s.handle(presence_to(R, &user(2), "bbbb2222", "Bob", None), at(0));
    s.handle(speak(&user(1)), at(1000));
    s.handle(speak(&user(2)), at(4000));
    // Someone outside the room cannot claim time.
    s.handle(speak(&user(8)), at(4500));
    // Bob leaves at 6 s; Carol joins at 7 s and gets the totals: Alice 3 s, Bob 2 s.
    s.handle(
        parse(&format!(
            "<presence xmlns='jabber:client' type='unavailable' from='{}' to='{R}/bbbb2222'/>",
            user(2)
        )),
        at(6000),
    );
    let out = s.handle(
        presence_to(R, &user(3), "cccc3333", "Carol", None),
        at(7000),
    );
    let v = out
        .iter()
        .find_map(|m| json_of(m).filter(|v| v["type"] == "speakerstats"))
        .unwrap();
    assert_eq!(v["users"]["aaaa1111"]["totalDominantSpeakerTime"], 3000);
    assert_eq!(v["users"]["aaaa1111"]["displayName"], "Alice");
    assert_eq!(v["users"]["bbbb2222"]["totalDominantSpeakerTime"], 2000);
    assert!(v["users"].get("focus").is_none());
}

fn join_el(from: &str, nick: &str) -> Element {
    parse(&format!(
        "<presence xmlns='jabber:client' from='{from}' to='{R}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
}

#[test]
fn av_moderation_commands_notices_and_whitelists() {
    let mut s = shard(cfg());
    s.modules.insert(
        0,
        Box::new(av_moderation::AvModeration::new("avmoderation.meet.jitsi")),
    );
    let focus = "focus@auth.meet.jitsi/focus";
    let now = Instant::now;
    join(&mut s, focus, "focus", "");
    s.handle(presence_to(R, &user(1), "aaaa1111", "Alice", None), now());
    s.handle(presence_to(R, &user(2), "bbbb2222", "Bob", None), now());
    admin_set(
        &mut s,
        focus,
        &format!("<item affiliation='owner' jid='{}'/>", bare_of(&user(1))),
    );
    let cmd = |from: &str, attrs: &str| {
        parse(&format!(
            "<message xmlns='jabber:client' from='{from}' to='avmoderation.meet.jitsi'><av_moderation {attrs}/></message>"
        ))
    };
    // A participant may not turn it on.
    let out = s.handle(cmd(&user(2), "enable='true' mediaType='audio'"), now());
    assert_eq!(error_condition(&out[0]).as_deref(), Some("forbidden"));
    // The moderator does: everyone hears it, the focus too.
    let out = s.handle(cmd(&user(1), "enable='true' mediaType='audio'"), now());
    for who in [focus.to_string(), user(1), user(2)] {
        let v = out
            .iter()
            .filter(|m| m.attr("to") == Some(&who))
            .find_map(json_of)
            .unwrap();
        assert_eq!(
            (v["enabled"].as_bool(), v["mediaType"].as_str()),
            (Some(true), Some("audio"))
        );
        assert_eq!(v["actor"], format!("{R}/aaaa1111"));
    }
    // Approving Bob: moderators get the whitelist, Bob that he is approved.
    let out = s.handle(
        cmd(
            &user(1),
            &format!("jidToWhitelist='{R}/bbbb2222' mediaType='audio'"),
        ),
        now(),
    );
    let to_bob = out
        .iter()
        .filter(|m| m.attr("to") == Some(&user(2)))
        .find_map(json_of)
        .unwrap();
    assert_eq!(to_bob["approved"], true);
    let to_alice = out
        .iter()
        .filter(|m| m.attr("to") == Some(&user(1)))
        .find_map(json_of)
        .unwrap();
    assert_eq!(to_alice["whitelists"]["audio"][0], format!("{R}/bbbb2222"));
    // A late joiner learns it is on.
    let out = s.handle(presence_to(R, &user(3), "cccc3333", "Carol", None), now());
    assert!(
        out.iter()
            .filter(|m| m.attr("to") == Some(&user(3)))
            .filter_map(json_of)
            .any(|v| v["enabled"] == true)
    );
    // Taking Bob off again.
    let out = s.handle(
        cmd(
            &user(1),
            &format!("jidToBlacklist='{R}/bbbb2222' mediaType='audio'"),
        ),
        now(),
    );
    let to_bob = out
        .iter()
        .filter(|m| m.attr("to") == Some(&user(2)))
        .find_map(json_of)
        .unwrap();
    assert_eq!(to_bob["removed"], true);
    // Unknown media and unknown occupants are errors.
    assert_eq!(
        error_condition(&s.handle(cmd(&user(1), "enable='true' mediaType='smell'"), now())[0])
            .as_deref(),
        Some("bad-request")
    );
    assert_eq!(
        error_condition(
            &s.handle(
                cmd(
                    &user(1),
                    &format!("jidToWhitelist='{R}/nobody' mediaType='audio'")
                ),
                now()
            )[0]
        )
        .as_deref(),
        Some("item-not-found")
    );
}

#[test]
fn breakout_rooms_add_move_rename_remove_and_close() {
    let mut s = shard(cfg());
    s.modules.insert(
        0,
        Box::new(breakout_rooms::BreakoutRooms::new(
            "muc.meet.jitsi",
            "breakout.meet.jitsi",
            vec!["focus@auth.meet.jitsi".into()],
            2,
        )),
    );
    let focus = "focus@auth.meet.jitsi/focus";
    let t0 = Instant::now();
    let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
    s.handle(join_el(focus, "focus"), at(0));
    s.handle(presence_to(R, &user(1), "aaaa1111", "Alice", None), at(0));
    s.handle(presence_to(R, &user(2), "bbbb2222", "Bob", None), at(0));
    admin_set(
        &mut s,
        focus,
        &format!("<item affiliation='owner' jid='{}'/>", bare_of(&user(1))),
    );
    let cmd = |from: &str, attrs: &str| {
        parse(&format!(
            "<message xmlns='jabber:client' from='{from}' to='breakout.meet.jitsi'><breakout_rooms {attrs}/></message>"
        ))
    };
    // Bob (a participant) may not add rooms.
    let out = s.handle(
        cmd(
            &user(2),
            "type='features/breakout-rooms/add' subject='Nope'",
        ),
        at(10),
    );
    assert_eq!(error_condition(&out[0]).as_deref(), Some("forbidden"));
    s.handle(
        cmd(
            &user(1),
            "type='features/breakout-rooms/add' subject='Room 1'",
        ),
        at(20),
    );
    // The update comes a moment later, to everyone but the focus.
    assert!(s.tick(at(100)).is_empty());
    let out = s.tick(at(400));
    let to: Vec<&str> = out.iter().filter_map(|m| m.attr("to")).collect();
    assert!(
        to.contains(&user(1).as_str()) && to.contains(&user(2).as_str()) && !to.contains(&focus)
    );
    let v = json_of(&out[0]).unwrap();
    assert_eq!(v["event"], "features/breakout-rooms/update");
    let rooms = v["rooms"].as_object().unwrap();
    assert_eq!(rooms["room"]["isMainRoom"], true);
    assert!(
        rooms["room"]["participants"]
            .get(format!("{R}/bbbb2222"))
            .is_some()
    );
    let b = rooms.values().find(|r| r["name"] == "Room 1").unwrap()["jid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(b.starts_with("room~") && b.ends_with("@breakout.meet.jitsi"));
    // Alice moves Bob; he leaves the main room and joins the breakout room.
    let out = s.handle(
        cmd(
            &user(1),
            &format!(
                "type='features/breakout-rooms/move-to-room' participantJid='{}' roomJid='{b}'",
                user(2)
            ),
        ),
        at(500),
    );
    let mv = out
        .iter()
        .filter(|m| m.attr("to") == Some(&user(2)))
        .find_map(json_of)
        .unwrap();
    assert_eq!(
        (mv["event"].as_str(), mv["roomJid"].as_str()),
        (
            Some("features/breakout-rooms/move-to-room"),
            Some(b.as_str())
        )
    );
    s.handle(
        parse(&format!(
            "<presence xmlns='jabber:client' type='unavailable' from='{}' to='{R}/bbbb2222'/>",
            user(2)
        )),
        at(600),
    );
    let out = s.handle(presence_to(&b, &user(2), "bbbb2222", "Bob", None), at(650));
    assert!(joined(&out, &user(2)));
    let v = s.tick(at(1000)).iter().find_map(json_of).unwrap();
    assert!(v["rooms"].as_object().unwrap().values().any(
        |r| r["jid"] == b.as_str() && r["participants"].get(format!("{b}/bbbb2222")).is_some()
    ));
    // Unknown rooms and people are errors; two rooms at most.
    assert_eq!(error_condition(&s.handle(cmd(&user(1), &format!("type='features/breakout-rooms/move-to-room' participantJid='{}' roomJid='x@breakout.meet.jitsi'", user(2))), at(1100))[0]).as_deref(), Some("item-not-found"));
    s.handle(
        cmd(
            &user(1),
            "type='features/breakout-rooms/add' subject='Room 2'",
        ),
        at(1200),
    );
    assert_eq!(
        error_condition(
            &s.handle(
                cmd(
                    &user(1),
                    "type='features/breakout-rooms/add' subject='Room 3'"
                ),
                at(1300)
            )[0]
        )
        .as_deref(),
        Some("policy-violation")
    );
    // Rename: Bob's room tells him its new subject.
    let out = s.handle(
        cmd(
            &user(1),
            &format!(
                "type='features/breakout-rooms/rename' breakoutRoomJid='{b}' subject='Group A'"
            ),
        ),
        at(1400),
    );
    assert!(out.iter().any(|m| {
        m.attr("to") == Some(&user(2))
            && m.get_child("subject", ns::CLIENT)
                .is_some_and(|s| s.text() == "Group A")
    }));
    // Alice leaves: the main room stays while Bob is in a breakout room.
    s.handle(
        parse(&format!(
            "<presence xmlns='jabber:client' type='unavailable' from='{}' to='{R}/aaaa1111'/>",
            user(1)
        )),
        at(1500),
    );
    s.tick(at(8000));
    assert!(s.rooms.contains_key(R));
    // Bob leaves too: five seconds later everything is gone.
    s.handle(
        parse(&format!(
            "<presence xmlns='jabber:client' type='unavailable' from='{}' to='{b}/bbbb2222'/>",
            user(2)
        )),
        at(9000),
    );
    s.tick(at(10000));
    assert!(s.rooms.contains_key(R));
    s.tick(at(14100));
    assert!(
        !s.rooms.contains_key(R) && !s.rooms.contains_key(&b),
        "{:?}",
        s.rooms.keys().collect::<Vec<_>>()
    );
}

#[test]
fn removing_a_breakout_room_sends_its_people_back() {
    let mut s = shard(cfg());
    s.modules.insert(
        0,
        Box::new(breakout_rooms::BreakoutRooms::new(
            "muc.meet.jitsi",
            "breakout.meet.jitsi",
            vec!["focus@auth.meet.jitsi".into()],
            10,
        )),
    );
    let focus = "focus@auth.meet.jitsi/focus";
    let now = Instant::now();
    s.handle(join_el(focus, "focus"), now);
    s.handle(presence_to(R, &user(1), "aaaa1111", "Alice", None), now);
    admin_set(
        &mut s,
        focus,
        &format!("<item affiliation='owner' jid='{}'/>", bare_of(&user(1))),
    );
    s.handle(parse(&format!("<message xmlns='jabber:client' from='{}' to='breakout.meet.jitsi'><breakout_rooms type='features/breakout-rooms/add' subject='X'/></message>", user(1))), now);
    let b = s
        .rooms
        .keys()
        .find(|k| k.contains("@breakout."))
        .unwrap()
        .clone();
    // Moderators of the main room are moderators in the breakout room.
    let out = s.handle(presence_to(&b, &user(1), "aaaa1111", "Alice", None), now);
    let own = out
        .iter()
        .find(|p| p.attr("to") == Some(&user(1)) && statuses(p).contains(&"110".into()))
        .unwrap();
    assert_eq!(item(own).attr("role"), Some("moderator"));
    s.handle(presence_to(&b, &user(2), "bbbb2222", "Bob", None), now);
    let out = s.handle(parse(&format!("<message xmlns='jabber:client' from='{}' to='breakout.meet.jitsi'><breakout_rooms type='features/breakout-rooms/remove' breakoutRoomJid='{b}'/></message>", user(1))), now);
    let p = out.iter().find(|p| p.attr("to") == Some(&user(2))).unwrap();
    let d = p
        .get_child("x", room::NS_MUC_USER)
        .unwrap()
        .get_child("destroy", room::NS_MUC_USER)
        .unwrap();
    assert_eq!(d.attr("jid"), Some(R));
    assert!(!s.rooms.contains_key(&b));
    // A breakout room that does not exist cannot be joined.
    let out = s.handle(
        presence_to("nope~1@breakout.meet.jitsi", &user(3), "cccc", "C", None),
        now,
    );
    assert_eq!(error_condition(&out[0]).as_deref(), Some("item-not-found"));
}

#[test]
fn guests_wait_for_the_host() {
    let mut s = shard(cfg());
    s.modules.insert(
        0,
        Box::new(
            lobby::Lobby::new(
                vec!["focus@auth.meet.jitsi".into()],
                "muc.meet.jitsi",
                "lobby.meet.jitsi",
                Vec::new(),
                10,
            )
            .wait_for_host(super::lobby::Hosts::Domain("meet.jitsi".into())),
        ),
    );
    let now = Instant::now;
    let guest = "g1@guest.meet.jitsi/web";
    let host = "teacher@meet.jitsi/web";
    join(&mut s, "focus@auth.meet.jitsi/focus", "focus", "");
    // The guest comes first: it waits in the lobby, without having to give a name.
    let out = s.handle(presence_to(R, guest, "gggg", "", None), now());
    assert_eq!(
        error_condition(&out[0]).as_deref(),
        Some("registration-required")
    );
    assert!(crate::xml::to_string(&out[0]).contains("waiting-for-host"));
    assert!(joined(
        &s.handle(presence_to(L, guest, "gggg", "Guest", None), now()),
        guest
    ));
    // The host comes: a moderator, the lobby goes and sends the guest in.
    let out = s.handle(presence_to(R, host, "hhhh", "Teacher", None), now());
    let own = out
        .iter()
        .find(|p| p.attr("to") == Some(host) && statuses(p).contains(&"110".into()))
        .unwrap();
    assert_eq!(item(own).attr("role"), Some("moderator"));
    let d = out.iter().find(|p| p.attr("to") == Some(guest)).unwrap();
    assert_eq!(
        d.get_child("x", room::NS_MUC_USER)
            .unwrap()
            .get_child("destroy", room::NS_MUC_USER)
            .unwrap()
            .attr("jid"),
        Some(R)
    );
    assert!(joined(
        &s.handle(presence_to(R, guest, "gggg", "Guest", None), now()),
        guest
    ));
    // Later guests walk straight in, and are not moderators.
    let out = s.handle(
        presence_to(R, "g2@guest.meet.jitsi/web", "g2g2", "Other", None),
        now(),
    );
    let own = out
        .iter()
        .find(|p| {
            p.attr("to") == Some("g2@guest.meet.jitsi/web") && statuses(p).contains(&"110".into())
        })
        .unwrap();
    assert_eq!(item(own).attr("role"), Some("participant"));
}

#[test]
fn token_holders_join_their_room_with_the_tokens_role_and_identity() {
    use crate::token::{Identities, TokenIdentity, TokenUser};
    let ids = Arc::new(Identities::default());
    let mut s = shard(cfg());
    s.modules.insert(
        0,
        Box::new(token::TokenRooms::new(
            ids.clone(),
            Some("breakout.meet.jitsi".into()),
        )),
    );
    let teacher = "t1@meet.jitsi/web";
    let student = "s1@meet.jitsi/web";
    let guest = "g1@meet.jitsi/web";
    let id = |room: &str, moderator: bool, name: &str| {
        Arc::new(TokenIdentity {
            room: Some(room.into()),
            moderator,
            user: TokenUser {
                name: Some(name.into()),
                avatar: Some("https://moodle.example/a.png".into()),
                ..Default::default()
            },
            group: Some("g".into()),
            ..Default::default()
        })
    };
    ids.set(teacher, id("Room", true, "Teacher"));
    ids.set(student, id("room", false, "Student"));
    let now = Instant::now;
    join(&mut s, "focus@auth.meet.jitsi/focus", "focus", "");

    // A token for another room is refused; the room stays as it was.
    ids.set("x1@meet.jitsi/web", id("other", true, "X"));
    let out = s.handle(
        presence_to(R, "x1@meet.jitsi/web", "xxxx", "X", None),
        now(),
    );
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-allowed"));
    assert_eq!(s.rooms[R].occupants.len(), 1);

    // The teacher is a moderator; a forged identity in its presence is replaced.
    let forged = parse(&format!(
        "<presence xmlns='jabber:client' from='{teacher}' to='{R}/tttt'><x xmlns='http://jabber.org/protocol/muc'/>\
         <identity><user><name>Mallory</name></user></identity>\
         <x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' role='moderator'/></x></presence>"
    ));
    let out = s.handle(forged, now());
    let own = out
        .iter()
        .find(|p| p.attr("to") == Some(teacher) && statuses(p).contains(&"110".into()))
        .unwrap();
    assert_eq!(item(own).attr("role"), Some("moderator"));
    let idents: Vec<&Element> = own.children().filter(|c| c.name() == "identity").collect();
    assert_eq!(idents.len(), 1);
    let text = crate::xml::to_string(idents[0]);
    assert!(
        text.contains("<name>Teacher</name>") && !text.contains("Mallory"),
        "{text}"
    );
    assert!(text.contains("<group>g</group>"), "{text}");

    // The student is a member and a participant, even when its presence claims otherwise.
    let forged = parse(&format!(
        "<presence xmlns='jabber:client' from='{student}' to='{R}/ssss'><x xmlns='http://jabber.org/protocol/muc'/>\
         <x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' role='moderator'/></x></presence>"
    ));
    let out = s.handle(forged, now());
    let own = out
        .iter()
        .find(|p| p.attr("to") == Some(student) && statuses(p).contains(&"110".into()))
        .unwrap();
    assert_eq!(item(own).attr("role"), Some("participant"));
    assert_eq!(item(own).attr("affiliation"), Some("member"));
    // A later presence keeps the server's identity.
    let upd = parse(&format!(
        "<presence xmlns='jabber:client' from='{student}' to='{R}/ssss'><identity><user><name>Boss</name></user></identity></presence>"
    ));
    let out = s.handle(upd, now());
    let seen = out.iter().find(|p| p.attr("to") == Some(teacher)).unwrap();
    let text = crate::xml::to_string(seen);
    assert!(
        text.contains("<name>Student</name>") && !text.contains("Boss"),
        "{text}"
    );

    // Without a token (a guest where allowed): no identity, whatever it wrote.
    let out = s.handle(
        parse(&format!(
            "<presence xmlns='jabber:client' from='{guest}' to='{R}/gggg'><x xmlns='http://jabber.org/protocol/muc'/>\
             <identity><user><name>Teacher</name></user></identity></presence>"
        )),
        now(),
    );
    assert!(joined(&out, guest));
    let from_guest = format!("{R}/gggg");
    assert!(
        out.iter()
            .filter(|p| p.attr("from") == Some(from_guest.as_str()))
            .all(|p| !crate::xml::to_string(p).contains("<identity"))
    );

    // Breakout rooms of the token's room are the token's room.
    let t = token::TokenRooms::new(ids.clone(), Some("breakout.meet.jitsi".into()));
    let tok = ids.get(student).unwrap();
    assert!(tok.allows_room(t_claimed(&t, "room~1a2b@breakout.meet.jitsi")));
    assert!(!tok.allows_room(t_claimed(&t, "room~1a2b@muc.meet.jitsi")));
}

fn t_claimed<'a>(t: &token::TokenRooms, jid: &'a str) -> &'a str {
    t.claimed_node(jid)
}

#[test]
fn token_features_gate_recording_and_streaming_requests() {
    use crate::token::{Identities, TokenIdentity};
    let ids = Arc::new(Identities::default());
    let mut s = shard(cfg());
    s.modules
        .insert(0, Box::new(token::TokenRooms::new(ids.clone(), None)));
    let now = Instant::now;
    join(&mut s, "focus@auth.meet.jitsi/focus", "focus", "");
    let features = |pairs: &[(&str, bool)]| {
        Arc::new(TokenIdentity {
            moderator: true,
            features: Some(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
            ..Default::default()
        })
    };
    let streamer = "t1@meet.jitsi/web";
    let recorder = "t2@meet.jitsi/web";
    let plain = "t3@meet.jitsi/web";
    ids.set(streamer, features(&[("livestreaming", true)]));
    ids.set(recorder, features(&[("recording", true)]));
    ids.set(
        plain,
        Arc::new(TokenIdentity {
            moderator: true,
            ..Default::default()
        }),
    );
    for (who, nick) in [(streamer, "aaaa"), (recorder, "bbbb"), (plain, "cccc")] {
        join(&mut s, who, nick, "");
    }
    let jibri = |from: &str, mode: &str| {
        parse(&format!(
            "<iq xmlns='jabber:client' type='set' id='j1' from='{from}' to='{R}/focus'>\
             <jibri xmlns='http://jitsi.org/protocol/jibri' action='start' recording_mode='{mode}' streamid='k'/></iq>"
        ))
    };
    let relayed = |out: &[Element]| {
        out.iter()
            .any(|e| e.attr("to") == Some("focus@auth.meet.jitsi/focus"))
    };
    // Granted: relayed to the focus (which checks the moderator).
    assert!(relayed(&s.handle(jibri(streamer, "stream"), now())));
    assert!(relayed(&s.handle(jibri(recorder, "file"), now())));
    // A token without context.features grants what the role allows.
    assert!(relayed(&s.handle(jibri(plain, "stream"), now())));
    // Not granted: refused here, the focus never sees it.
    let out = s.handle(jibri(streamer, "file"), now());
    assert!(!relayed(&out));
    assert_eq!(error_condition(&out[0]).as_deref(), Some("forbidden"));
    let out = s.handle(jibri(recorder, "stream"), now());
    assert_eq!(error_condition(&out[0]).as_deref(), Some("forbidden"));
    // Phone dial-out needs outbound-call (stock mod_filter_iq_rayo).
    let dial = |from: &str| {
        parse(&format!(
            "<iq xmlns='jabber:client' type='set' id='d1' from='{from}' to='{R}/focus'>\
             <dial xmlns='urn:xmpp:rayo:1' to='+4930' from='fromnumber'/></iq>"
        ))
    };
    let out = s.handle(dial(streamer), now());
    assert_eq!(error_condition(&out[0]).as_deref(), Some("forbidden"));
    assert!(relayed(&s.handle(dial(plain), now())));
}

#[test]
fn policies_nicks_health_checks_allow_list_and_the_focus() {
    let mut c = cfg();
    c.validate_nicknames = true;
    c.allow_list = vec!["recorder.meet.jitsi".into(), "ops@meet.jitsi".into()];
    let mut s = shard(c);
    let focus = "focus@auth.meet.jitsi/focus";
    join(&mut s, focus, "focus", "");
    // Nicks as the web app makes them pass; others, and the focus's, are refused.
    assert!(
        join(&mut s, &user(1), "a1b2c3d4", "")
            .iter()
            .any(|p| statuses(p).contains(&"110".into()))
    );
    for bad in ["has-dash", "_x", "focus", "FOCUS"] {
        let out = join(&mut s, &user(2), bad, "");
        assert_eq!(
            error_condition(&out[0]).as_deref(),
            Some("not-allowed"),
            "{bad}"
        );
    }
    // The allow-list passes the password and the size limit and does not count.
    owner_set(
        &mut s,
        focus,
        "<field var='muc#roomconfig_roomsecret'><value>1234</value></field><field var='muc#roomconfig_maxusers'><value>1</value></field>",
    );
    let out = join(&mut s, &user(3), "c3", "");
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-authorized"));
    for (n, jid) in [
        (4, "jibri@recorder.meet.jitsi/r"),
        (5, "ops@meet.jitsi/laptop"),
    ] {
        let out = join(&mut s, jid, &format!("allowed{n}"), "");
        assert!(
            out.iter().any(|p| statuses(p).contains(&"110".into())),
            "{jid}"
        );
    }
    // An owner may not ban or demote the focus.
    admin_set(
        &mut s,
        focus,
        "<item affiliation='owner' jid='u1@meet.jitsi'/>",
    );
    let out = admin_set(
        &mut s,
        &user(1),
        "<item affiliation='outcast' jid='focus@auth.meet.jitsi'/>",
    );
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-allowed"));
    let out = admin_set(&mut s, &user(1), "<item role='none' nick='focus'/>");
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-allowed"));
    assert!(s.rooms[R].occupants.iter().any(|o| o.nick == "focus"));
}

#[test]
fn health_check_rooms_are_the_focus_s() {
    let mut s = shard(cfg());
    let hc = "__jicofo-health-check-1@muc.meet.jitsi";
    let focus_join = parse(&format!(
        "<presence xmlns='jabber:client' from='focus@auth.meet.jitsi/focus' to='{hc}/focus'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ));
    assert!(
        s.handle(focus_join, Instant::now())
            .iter()
            .any(|p| statuses(p).contains(&"110".into()))
    );
    let out = s.handle(parse(&format!("<presence xmlns='jabber:client' from='{}' to='{hc}/x1'><x xmlns='http://jabber.org/protocol/muc'/></presence>", user(1))), Instant::now());
    assert_eq!(
        error_condition(&out[0]).as_deref(),
        Some("service-unavailable")
    );
}

#[test]
fn name_readonly_tokens_fix_the_display_name() {
    use crate::token::{Identities, TokenIdentity, TokenUser};
    let ids = Arc::new(Identities::default());
    let mut s = shard(cfg());
    s.modules
        .insert(0, Box::new(token::TokenRooms::new(ids.clone(), None)));
    let features = |ro: bool| Some([("name-readonly".to_string(), ro)].into_iter().collect());
    for (jid, ro, name) in [
        ("t1@meet.jitsi/web", true, Some("Teacher")),
        ("t2@meet.jitsi/web", false, Some("Tutor")),
        ("t3@meet.jitsi/web", true, None),
    ] {
        ids.set(
            jid,
            Arc::new(TokenIdentity {
                room: Some("*".into()),
                user: TokenUser {
                    name: name.map(str::to_string),
                    ..Default::default()
                },
                features: features(ro),
                ..Default::default()
            }),
        );
    }
    join(&mut s, "focus@auth.meet.jitsi/focus", "focus", "");
    let nick_of = |out: &[Element], jid: &str| {
        out.iter()
            .find(|p| p.attr("to") == Some(jid) && statuses(p).contains(&"110".into()))
            .and_then(|p| p.get_child("nick", "http://jabber.org/protocol/nick"))
            .map(|n| n.text())
    };
    let claim = "<nick xmlns='http://jabber.org/protocol/nick'>Mallory</nick>";
    let out = join(&mut s, "t1@meet.jitsi/web", "t1", claim);
    assert_eq!(
        nick_of(&out, "t1@meet.jitsi/web").as_deref(),
        Some("Teacher")
    );
    let out = join(&mut s, "t2@meet.jitsi/web", "t2", claim);
    assert_eq!(
        nick_of(&out, "t2@meet.jitsi/web").as_deref(),
        Some("Mallory")
    );
    let out = join(&mut s, "t3@meet.jitsi/web", "t3", claim);
    assert_eq!(nick_of(&out, "t3@meet.jitsi/web"), None);
}

fn groupchat(s: &mut Shard, from: &str, body: &str) -> Vec<Element> {
    s.handle(
        parse(&format!("<message xmlns='jabber:client' type='groupchat' from='{from}' to='{R}'><body>{body}</body></message>")),
        Instant::now(),
    )
}

#[test]
fn chat_limit_closes_the_chat_once() {
    let mut c = cfg();
    c.max_chat_messages = 2;
    let mut s = shard(c);
    join(&mut s, "focus@auth.meet.jitsi/focus", "focus", "");
    join(&mut s, &user(1), "a", "");
    join(&mut s, &user(2), "b", "");
    for n in 0..2 {
        let out = groupchat(&mut s, &user(1), &format!("m{n}"));
        assert!(
            out.iter().any(|m| m.attr("to") == Some(&user(2))),
            "message {n} relayed"
        );
    }
    let out = groupchat(&mut s, &user(2), "one too many");
    assert!(
        out.iter()
            .any(|m| error_condition(m).as_deref() == Some("not-allowed"))
    );
    let notices = out
        .iter()
        .filter(|m| {
            m.get_child("body", ns::CLIENT)
                .is_some_and(|b| b.text() == policies::CHAT_LIMIT_TEXT)
        })
        .count();
    assert_eq!(notices, 3, "the room tells everyone once: {out:?}");
    let out = groupchat(&mut s, &user(1), "later");
    assert_eq!(out.len(), 1);
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-allowed"));
    // A poll answer (no body) still passes.
    let out = s.handle(parse(&format!("<message xmlns='jabber:client' type='groupchat' from='{}' to='{R}'><json-message xmlns='http://jitsi.org/jitmeet'>{{\"type\":\"answer-poll\"}}</json-message></message>", user(2))), Instant::now());
    assert!(out.iter().all(|m| error_condition(m).is_none()));
}

#[test]
fn group_chat_restricted_to_moderators() {
    let mut s = shard({
        let mut c = cfg();
        c.creation = Creation::Anyone;
        c
    });
    s.modules.insert(
        0,
        Box::new(metadata::RoomMetadata::new("metadata.meet.jitsi")),
    );
    join(&mut s, &user(1), "a", "");
    join(&mut s, &user(2), "b", "");
    s.handle(parse(&format!(
        "<message xmlns='jabber:client' from='{}' to='metadata.meet.jitsi'><room_metadata xmlns='http://jitsi.org/jitmeet' room='{R}'>{{\"key\":\"permissions\",\"data\":{{\"groupChatRestricted\":true}},\"type\":\"room_metadata\"}}</room_metadata></message>",
        user(1)
    )), Instant::now());
    let out = groupchat(&mut s, &user(2), "may I?");
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-allowed"));
    let out = groupchat(&mut s, &user(1), "the moderator may");
    assert!(out.iter().any(|m| m.attr("to") == Some(&user(2))));
}

#[test]
fn nick_changes_refused_when_nicks_are_validated() {
    let mut c = cfg();
    c.validate_nicknames = true;
    let mut s = shard(c);
    join(&mut s, "focus@auth.meet.jitsi/focus", "focus", "");
    join(&mut s, &user(1), "a1", "");
    let out = s.handle(
        parse(&format!(
            "<presence xmlns='jabber:client' from='{}' to='{R}/b2'/>",
            user(1)
        )),
        Instant::now(),
    );
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-allowed"));
    assert!(s.rooms[R].occupants.iter().any(|o| o.nick == "a1"));
}

#[test]
fn group_chat_restricted_follows_token_features() {
    use crate::token::{Identities, TokenIdentity};
    let ids = Arc::new(Identities::default());
    let mut s = shard({
        let mut c = cfg();
        c.creation = Creation::Anyone;
        c
    });
    s.modules.insert(
        0,
        Box::new(metadata::RoomMetadata::new("metadata.meet.jitsi").with_identities(ids.clone())),
    );
    let feature = |ok: bool| {
        Arc::new(TokenIdentity {
            features: Some([("send-groupchat".to_string(), ok)].into_iter().collect()),
            ..Default::default()
        })
    };
    join(&mut s, &user(1), "a", "");
    join(&mut s, &user(2), "b", "");
    join(&mut s, &user(3), "c", "");
    ids.set(&user(2), feature(true));
    ids.set(&user(1), feature(false));
    s.handle(parse(&format!(
        "<message xmlns='jabber:client' from='{}' to='metadata.meet.jitsi'><room_metadata xmlns='http://jitsi.org/jitmeet' room='{R}'>{{\"key\":\"permissions\",\"data\":{{\"groupChatRestricted\":true}},\"type\":\"room_metadata\"}}</room_metadata></message>",
        user(1)
    )), Instant::now());
    // The participant whose token grants it may; the moderator whose token says no may not.
    assert!(
        groupchat(&mut s, &user(2), "granted")
            .iter()
            .any(|m| m.attr("to") == Some(&user(3)))
    );
    let out = groupchat(&mut s, &user(1), "denied");
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-allowed"));
}

#[test]
fn moderators_without_token_features_are_told_their_permissions() {
    use crate::token::{Identities, TokenIdentity};
    let ids = Arc::new(Identities::default());
    let mut s = shard(cfg());
    s.modules.push(Box::new(permissions::Permissions::new(
        Some(ids.clone()),
        vec!["focus@auth.meet.jitsi".into()],
    )));
    let own = |out: &[Element], to: &str| {
        out.iter()
            .find(|p| p.attr("to") == Some(to) && statuses(p).contains(&"110".into()))
            .cloned()
            .unwrap()
    };
    let granted = |p: &Element| -> Vec<String> {
        p.get_child("permissions", permissions::NS_PERMISSIONS)
            .map(|x| {
                x.children()
                    .filter(|c| c.attr("val") == Some("true"))
                    .filter_map(|c| c.attr("name").map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    // The creator moderates: told, live streaming and recording among them.
    let out = join(&mut s, &user(1), "a", "");
    let g = granted(&own(&out, &user(1)));
    assert!(
        g.contains(&"livestreaming".into()) && g.contains(&"recording".into()),
        "{g:?}"
    );
    // A participant is not told; nor is a moderator whose token lists its own features.
    let out = join(&mut s, &user(2), "b", "");
    assert!(granted(&own(&out, &user(2))).is_empty());
    let teacher = "t1@meet.jitsi/web";
    ids.set(
        teacher,
        Arc::new(TokenIdentity {
            moderator: true,
            features: Some([("livestreaming".to_string(), false)].into_iter().collect()),
            ..Default::default()
        }),
    );
    // Made moderators: b is told; the token holder, whose token says, is not.
    let out = admin_set(&mut s, &user(1), "<item nick='b' role='moderator'/>");
    assert!(granted(&own(&out, &user(2))).contains(&"livestreaming".into()));
    join(&mut s, teacher, "t", "");
    let out = admin_set(&mut s, &user(1), "<item nick='t' role='moderator'/>");
    let p = own(&out, teacher);
    assert_eq!(item(&p).attr("role"), Some("moderator"));
    assert!(
        p.get_child("permissions", permissions::NS_PERMISSIONS)
            .is_none()
    );
}

/// A shard with the visitor view (`muc.v1.meet.jitsi`, logins of `v1.meet.jitsi`) and the
/// visitors component, with the focus in the room; and the focus's JID.
fn visitors_shard() -> (Shard, &'static str) {
    let mut c = cfg();
    c.visitors = Some(VisitorView {
        login_domain: "v1.meet.jitsi".into(),
        muc_domain: "muc.v1.meet.jitsi".into(),
    });
    let mut s = shard(c);
    s.modules.insert(
        0,
        Box::new(visitors::Visitors::new(
            "visitors.meet.jitsi",
            "muc.v1.meet.jitsi",
            "focus@auth.meet.jitsi",
            7,
        )),
    );
    let focus = "focus@auth.meet.jitsi/focus";
    join(&mut s, focus, "focus", "");
    (s, focus)
}

/// docs/visitors.md §4: the room says visitors are enabled (the app then offers "Move to
/// viewer"), and a moderator's demote request reaches the participant named and the other
/// moderators from `visitors.<domain>`, never the room; anyone else's is refused.
#[test]
fn a_moderator_moves_a_participant_to_the_viewers() {
    let (mut s, _) = visitors_shard();
    join(&mut s, &user(1), "alice", "");
    join(&mut s, &user(2), "bob", "");
    join(&mut s, &user(3), "carol", "");
    for o in &mut s.rooms.get_mut(R).unwrap().occupants {
        if o.nick == "alice" || o.nick == "carol" {
            o.role = Role::Moderator;
        }
    }
    let disco = s.handle(parse(&format!("<iq xmlns='jabber:client' type='get' id='d' from='{}' to='{R}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", user(2))), Instant::now());
    assert!(
        String::from(&disco[0]).contains("muc#roominfo_visitorsEnabled"),
        "{:?}",
        disco[0]
    );
    let demote = |from: &str, id: &str, actor: &str| {
        parse(&format!(
            "<message xmlns='jabber:client' type='groupchat' id='m1' from='{from}' to='{R}'><json-message xmlns='http://jitsi.org/jitmeet'>{{\"type\":\"visitors\",\"action\":\"demote-request\",\"id\":\"{id}\",\"actor\":\"{actor}\"}}</json-message></message>"
        ))
    };
    let out = s.handle(demote(&user(1), "bob", "alice"), Instant::now());
    let to: Vec<&str> = out.iter().filter_map(|e| e.attr("to")).collect();
    assert_eq!(to.len(), 2, "{out:?}");
    assert!(
        to.contains(&user(2).as_str()) && to.contains(&user(3).as_str()),
        "{to:?}"
    );
    for e in &out {
        assert_eq!(
            (e.attr("from"), e.attr("type")),
            (Some("visitors.meet.jitsi"), Some("chat"))
        );
        let v: serde_json::Value = serde_json::from_str(
            &e.get_child("json-message", room::NS_JITMEET)
                .unwrap()
                .text(),
        )
        .unwrap();
        assert_eq!(
            (v["action"].as_str(), v["id"].as_str(), v["actor"].as_str()),
            (Some("demote-request"), Some("bob"), Some("alice"))
        );
    }
    // Bob (no moderator) may not; nor may Alice in someone else's name, nor name nobody.
    for (from, id, actor, condition) in [
        (user(2), "carol", "bob", "forbidden"),
        (user(1), "bob", "carol", "bad-request"),
        (user(1), "nobody", "alice", "item-not-found"),
    ] {
        let out = s.handle(demote(&from, id, actor), Instant::now());
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].attr("type"), Some("error"));
        assert_eq!(out[0].attr("to"), Some(from.as_str()));
        assert!(String::from(&out[0]).contains(condition), "{:?}", out[0]);
    }
}

/// docs/visitors.md: a visitor (of the visitors' login domain) joins through the view domain;
/// it sees the room from the view, the others never see it (the focus does), it may not write,
/// and its raised hand reaches the moderators as a request that a moderator's answer turns
/// into a promotion IQ for the visitor.
#[test]
fn visitors_see_the_room_from_their_view_are_hidden_and_can_be_admitted() {
    let (mut s, focus) = visitors_shard();
    join(&mut s, &user(1), "alice", "");
    // Alice is the moderator (the focus made her owner).
    for o in &mut s.rooms.get_mut(R).unwrap().occupants {
        if o.nick == "alice" {
            o.role = Role::Moderator;
        }
    }
    let vera = "anon1@v1.meet.jitsi/x";
    let out = s.handle(
        parse(&format!("<presence xmlns='jabber:client' from='{vera}' to='room@muc.v1.meet.jitsi/vera'><x xmlns='http://jabber.org/protocol/muc'/></presence>")),
        Instant::now(),
    );
    // Vera gets the room from the view, her own role visitor.
    let to_vera: Vec<&Element> = out.iter().filter(|e| e.attr("to") == Some(vera)).collect();
    assert!(!to_vera.is_empty());
    assert!(
        to_vera.iter().all(|e| e
            .attr("from")
            .unwrap_or("")
            .starts_with("room@muc.v1.meet.jitsi")),
        "{to_vera:?}"
    );
    let own = to_vera
        .iter()
        .find(|e| e.name() == "presence" && statuses(e).contains(&"110".to_string()))
        .unwrap();
    assert_eq!(item(own).attr("role"), Some("visitor"));
    // Alice does not see her; the focus does.
    assert!(
        !out.iter()
            .any(|e| e.attr("to") == Some(&user(1)) && e.name() == "presence")
    );
    assert!(out.iter().any(
        |e| e.attr("to") == Some(focus) && e.attr("from") == Some(&format!("{R}/vera") as &str)
    ));
    // She chats with everyone, named as a viewer from her presence, not from her message.
    let out = s.handle(
        parse(&format!("<message xmlns='jabber:client' type='groupchat' from='{vera}' to='room@muc.v1.meet.jitsi'><body>hi</body><nick xmlns='http://jabber.org/protocol/nick'>forged</nick></message>")),
        Instant::now(),
    );
    let to_alice = out
        .iter()
        .find(|e| e.attr("to") == Some(&user(1) as &str))
        .expect("Alice gets Vera's chat");
    assert_eq!(to_alice.attr("from"), Some(&format!("{R}/vera") as &str));
    assert_eq!(
        to_alice.get_child("body", "jabber:client").unwrap().text(),
        "hi"
    );
    let dn = to_alice
        .get_child("display-name", "http://jitsi.org/protocol/display-name")
        .unwrap();
    assert_eq!(dn.attr("source"), Some("visitor"));
    assert_eq!(dn.text(), "Viewer", "her presence carries no nick");
    assert!(!String::from(to_alice).contains("forged"));
    assert!(out.iter().any(
        |e| e.attr("to") == Some(vera) && e.attr("from") == Some("room@muc.v1.meet.jitsi/vera")
    ));
    // Nothing else: no private messages, no subject.
    for m in [
        format!(
            "<message xmlns='jabber:client' type='chat' from='{vera}' to='room@muc.v1.meet.jitsi/alice'><body>psst</body></message>"
        ),
        format!(
            "<message xmlns='jabber:client' type='groupchat' from='{vera}' to='room@muc.v1.meet.jitsi'><subject>mine</subject></message>"
        ),
    ] {
        let out = s.handle(parse(&m), Instant::now());
        assert!(
            out.iter()
                .all(|e| e.attr("type") == Some("error") && e.attr("to") == Some(vera)),
            "{out:?}"
        );
    }
    // Her raised hand: Alice (moderator) gets the request, from visitors.<domain>.
    let out = s.handle(
        parse(&format!("<presence xmlns='jabber:client' from='{vera}' to='room@muc.v1.meet.jitsi/vera'><jitsi_participant_raisedHand>1723456789012</jitsi_participant_raisedHand></presence>")),
        Instant::now(),
    );
    let req = out
        .iter()
        .find(|e| e.attr("from") == Some("visitors.meet.jitsi"))
        .expect("a request");
    assert_eq!(req.attr("to"), Some(user(1).as_str()));
    let body = req
        .get_child("json-message", room::NS_JITMEET)
        .unwrap()
        .text();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["action"].as_str(), v["from"].as_str(), v["on"].as_bool()),
        (Some("promotion-request"), Some(vera), Some(true))
    );
    // A participant's answer does nothing; the moderator's promotes her.
    let answer = |from: &str| {
        parse(&format!(
            "<message xmlns='jabber:client' type='groupchat' from='{from}' to='{R}'><json-message xmlns='http://jitsi.org/jitmeet'>{{\"type\":\"visitors\",\"action\":\"promotion-response\",\"approved\":true,\"id\":\"{vera}\"}}</json-message></message>"
        ))
    };
    let out = s.handle(answer(&user(1)), Instant::now());
    let iq = out
        .iter()
        .find(|e| e.name() == "iq" && e.attr("to") == Some(vera))
        .expect("the promotion");
    assert_eq!(iq.attr("from"), Some("room@muc.v1.meet.jitsi"));
    let pr = iq.get_child("visitors", "jitsi:visitors").unwrap();
    assert_eq!(pr.attr("focusjid"), Some("focus@auth.meet.jitsi"));
    let r = pr
        .get_child("promotion-response", "jitsi:visitors")
        .unwrap();
    assert_eq!(r.attr("allow"), Some("true"));
    assert!(!r.attr("username").unwrap_or("").is_empty());
    // A moderator revoking someone's voice (role visitor) does not hide that participant.
    join(&mut s, &user(2), "bob", "");
    let out = s.handle(
        parse(&format!("<iq xmlns='jabber:client' type='set' id='v' from='{}' to='{R}'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='bob' role='visitor'/></query></iq>", user(1))),
        Instant::now(),
    );
    let _ = out;
    let out = s.handle(
        parse(&format!(
            "<presence xmlns='jabber:client' from='{}' to='{R}/bob'><status>hi</status></presence>",
            user(2)
        )),
        Instant::now(),
    );
    assert!(
        out.iter().any(|e| e.attr("to") == Some(&user(1))
            && e.attr("from") == Some(&format!("{R}/bob") as &str)),
        "{out:?}"
    );
    // A password-protected room refuses a visitor without the password, as anyone.
    s.rooms.get_mut(R).unwrap().config.password = Some("1234".into());
    let wally = "anon2@v1.meet.jitsi/y";
    let out = s.handle(
        parse(&format!("<presence xmlns='jabber:client' from='{wally}' to='room@muc.v1.meet.jitsi/wally'><x xmlns='http://jabber.org/protocol/muc'/></presence>")),
        Instant::now(),
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].attr("type"), Some("error"));
    assert_eq!(error_condition(&out[0]).as_deref(), Some("not-authorized"));
    assert_eq!(out[0].attr("from"), Some("room@muc.v1.meet.jitsi/wally"));
    // Vera leaves: nobody but the focus and herself hears of it.
    let out = s.handle(
        parse(&format!("<presence xmlns='jabber:client' type='unavailable' from='{vera}' to='room@muc.v1.meet.jitsi/vera'/>")),
        Instant::now(),
    );
    assert!(
        out.iter()
            .filter(|e| e.name() == "presence")
            .all(|e| e.attr("to") == Some(vera) || e.attr("to") == Some(focus)),
        "{out:?}"
    );
}
