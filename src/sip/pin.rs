//! Asking a caller for the meeting PIN (docs/sip.md §2): keys in, a lookup out, and after
//! the answer whether to let the caller in, ask again, or hang up. Sans-IO: the glue plays
//! the prompts, looks the PIN up and keeps the time.

/// The longest PIN taken; more keys before `#` are a wrong PIN.
pub const MAX_DIGITS: usize = 12;

/// What the caller's key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Keep listening.
    More,
    /// `#` after digits: look this PIN up and call [`PinEntry::looked_up`].
    Lookup(u64),
    /// `#` after nothing usable: as a wrong PIN ([`PinEntry::looked_up`] with `false`).
    Unusable,
}

/// What follows a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Join,
    /// Wrong: play the wrong-PIN prompt and ask again.
    Again,
    /// Wrong for the last time: hang up.
    HangUp,
}

#[derive(Debug)]
pub struct PinEntry {
    digits: String,
    too_long: bool,
    wrong: u32,
    max_tries: u32,
    /// A lookup is under way: keys wait.
    looking: bool,
}

impl PinEntry {
    /// A caller gets `max_tries` tries (at least one).
    pub fn new(max_tries: u32) -> PinEntry {
        PinEntry {
            digits: String::new(),
            too_long: false,
            wrong: 0,
            max_tries: max_tries.max(1),
            looking: false,
        }
    }

    /// Wrong PINs so far.
    pub fn wrong(&self) -> u32 {
        self.wrong
    }

    /// One key. `*` starts over; `#` ends the PIN.
    pub fn key(&mut self, k: char) -> Step {
        if self.looking {
            return Step::More;
        }
        match k {
            '0'..='9' if self.digits.len() < MAX_DIGITS => self.digits.push(k),
            '0'..='9' => self.too_long = true,
            '*' => {
                self.digits.clear();
                self.too_long = false;
            }
            '#' => {
                let digits = std::mem::take(&mut self.digits);
                let too_long = std::mem::replace(&mut self.too_long, false);
                self.looking = true;
                return match digits.parse::<u64>() {
                    Ok(pin) if !too_long => Step::Lookup(pin),
                    _ => Step::Unusable,
                };
            }
            _ => {}
        }
        Step::More
    }

    /// The lookup's answer: `found` the room of the PIN.
    pub fn looked_up(&mut self, found: bool) -> Verdict {
        self.looking = false;
        if found {
            return Verdict::Join;
        }
        self.wrong += 1;
        if self.wrong >= self.max_tries {
            Verdict::HangUp
        } else {
            Verdict::Again
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(p: &mut PinEntry, keys: &str) -> Step {
        let mut last = Step::More;
        for k in keys.chars() {
            last = p.key(k);
        }
        last
    }

    #[test]
    fn digits_then_hash_are_looked_up_and_star_starts_over() {
        let mut p = PinEntry::new(3);
        assert_eq!(typed(&mut p, "12"), Step::More);
        assert_eq!(typed(&mut p, "*987654321#"), Step::Lookup(987654321));
        // Keys during the lookup wait.
        assert_eq!(typed(&mut p, "5#"), Step::More);
        assert_eq!(p.looked_up(true), Verdict::Join);
    }

    #[test]
    fn three_wrong_pins_hang_up() {
        let mut p = PinEntry::new(3);
        assert_eq!(typed(&mut p, "111#"), Step::Lookup(111));
        assert_eq!(p.looked_up(false), Verdict::Again);
        assert_eq!(typed(&mut p, "#"), Step::Unusable);
        assert_eq!(p.looked_up(false), Verdict::Again);
        assert_eq!(typed(&mut p, "1234567890123#"), Step::Unusable);
        assert_eq!(p.looked_up(false), Verdict::HangUp);
        assert_eq!(p.wrong(), 3);
    }

    #[test]
    fn letters_are_ignored_and_one_try_at_least() {
        let mut p = PinEntry::new(0);
        assert_eq!(typed(&mut p, "4A2#"), Step::Lookup(42));
        assert_eq!(p.looked_up(false), Verdict::HangUp);
    }
}
