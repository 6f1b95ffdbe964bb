//! Phone dial-in, the web app's side (docs/dialin.md): the numbers from `[dialin]` and a
//! stable numeric PIN per room, as the app's `dialInNumbersUrl` and `dialInConfCodeUrl` and
//! a SIP gateway's PIN lookup expect them. The PIN lives in the database (`dialin_pins`).

use rand::Rng;
use serde_json::{Value, json};

use crate::config::DialInSection;

/// Why a lookup was refused (the JSON answer's `message`, with an HTTP status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: &'static str,
}

/// What `dialInNumbersUrl` answers: the app's list format (one entry per number).
pub fn numbers(cfg: &DialInSection) -> Value {
    Value::Array(
        cfg.numbers
            .iter()
            .map(|n| {
                json!({
                    "countryCode": n.country.to_ascii_lowercase(),
                    "tollFree": n.toll_free,
                    "formattedNumber": n.number,
                })
            })
            .collect(),
    )
}

/// A random PIN of `digits` digits (not starting with 0), for a room that has none yet.
pub fn random_pin(digits: u32, rng: &mut impl Rng) -> u64 {
    let digits = digits.clamp(4, 12);
    let low = 10u64.pow(digits - 1);
    rng.random_range(low..low * 10)
}

/// The room JID a `conference` query names, lower-cased, if it is a room of `muc_domain`
/// with a plausible name.
pub fn room_of(conference: &str, muc_domains: &[&str]) -> Result<String, Refusal> {
    let bad = Refusal {
        status: 400,
        message: "conference must be <room>@<muc domain>",
    };
    let (node, domain) = conference.split_once('@').ok_or(bad.clone())?;
    if node.is_empty()
        || node.len() > 256
        || node
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '/')
        || !muc_domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    {
        return Err(bad);
    }
    Ok(format!("{node}@{domain}").to_lowercase())
}

/// The answer to a PIN lookup in either direction.
pub fn mapping(pin: u64, room: &str) -> Value {
    json!({
        "message": "Successfully retrieved conference mapping",
        "id": pin,
        "conference": room,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DialInNumber;
    use rand::SeedableRng;

    #[test]
    fn numbers_in_the_apps_list_format() {
        let cfg = DialInSection {
            numbers: vec![DialInNumber {
                country: "DE".into(),
                number: "+49 30 1234567".into(),
                toll_free: false,
            }],
            ..Default::default()
        };
        assert_eq!(
            numbers(&cfg),
            json!([{ "countryCode": "de", "tollFree": false, "formattedNumber": "+49 30 1234567" }])
        );
        assert_eq!(numbers(&DialInSection::default()), json!([]));
    }

    #[test]
    fn pins_have_their_digits() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for _ in 0..1000 {
            let p = random_pin(9, &mut rng);
            assert!((100_000_000..1_000_000_000).contains(&p), "{p}");
        }
        assert!(random_pin(1, &mut rng) >= 1000);
    }

    #[test]
    fn only_rooms_of_our_domains() {
        let d = ["muc.meet.jitsi"];
        assert_eq!(
            room_of("Physics101@muc.meet.jitsi", &d).unwrap(),
            "physics101@muc.meet.jitsi"
        );
        for bad in [
            "",
            "x",
            "@muc.meet.jitsi",
            "a@other.example",
            "a b@muc.meet.jitsi",
            "a/b@muc.meet.jitsi",
        ] {
            assert_eq!(room_of(bad, &d).unwrap_err().status, 400, "{bad}");
        }
    }
}
