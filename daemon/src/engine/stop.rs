//! Stop strings during streaming. Text is released only once it cannot be the start of a
//! stop string: a suffix that is a prefix of some stop string is held back until the next
//! token proves it innocent (or completes the stop string, which is then never shown).
//!
//! Only a window of recent text is kept (as long as the longest stop string plus the
//! newest delta), in a buffer reserved up front, so streaming does not allocate per token.

/// Most stop strings a request may give.
pub const MAX_STOP_STRINGS: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StopError {
    #[error("at most {MAX_STOP_STRINGS} stop strings are allowed, {0} were given")]
    TooMany(usize),
    #[error("stop strings must be 1 to {MAX_STOP_LEN} bytes long")]
    Length,
}

/// Watches generated text for stop strings.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text generated but not yet released (plus, until the next push, what was released
    /// last: `released` bytes at the front).
    held: String,
    released: usize,
}

/// What to do with the text so far.
#[derive(Debug, PartialEq, Eq)]
pub enum StopStatus<'a> {
    /// Release this text; keep going.
    Continue(&'a str),
    /// A stop string was found: release this text (what preceded it) and stop.
    Stop(&'a str),
}

impl StopMatcher {
    /// A matcher for `stops` (validated: count and lengths bounded). `max_delta` is the
    /// longest text one token can add, so the buffer never has to grow.
    pub fn new(stops: &[String], max_delta: usize) -> Result<StopMatcher, StopError> {
        if stops.len() > MAX_STOP_STRINGS {
            return Err(StopError::TooMany(stops.len()));
        }
        if stops.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
            return Err(StopError::Length);
        }
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        Ok(StopMatcher {
            stops: stops.to_vec(),
            held: String::with_capacity(2 * (longest + max_delta) + 8),
            released: 0,
        })
    }

    /// Adds newly generated text and says what may be shown. The returned text borrows the
    /// matcher until the next call.
    pub fn push(&mut self, delta: &str) -> StopStatus<'_> {
        self.held.drain(..self.released);
        self.released = 0;
        self.held.push_str(delta);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.held.truncate(at);
            self.released = at;
            return StopStatus::Stop(&self.held[..at]);
        }
        self.released = self.held.len() - self.partial_suffix();
        StopStatus::Continue(&self.held[..self.released])
    }

    /// The end of generation: whatever was held back is released.
    pub fn finish(&mut self) -> &str {
        self.held.drain(..self.released);
        self.released = self.held.len();
        &self.held
    }

    /// Length of the longest suffix of `held` that is a proper prefix of a stop string.
    /// (It starts on a character boundary: it equals the start of a valid string.)
    fn partial_suffix(&self) -> usize {
        let mut best = 0;
        for s in &self.stops {
            for k in (best + 1..s.len().min(self.held.len() + 1)).rev() {
                if s.is_char_boundary(k) && self.held.ends_with(&s[..k]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `deltas`, returns (released text, stopped).
    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops, 16).unwrap();
        let mut out = String::new();
        for d in deltas {
            match m.push(d) {
                StopStatus::Continue(t) => out.push_str(t),
                StopStatus::Stop(t) => {
                    out.push_str(t);
                    return (out, true);
                }
            }
        }
        out.push_str(m.finish());
        (out, false)
    }

    #[test]
    fn no_stops_releases_everything_at_once() {
        let stops: Vec<String> = vec![];
        let mut m = StopMatcher::new(&stops, 16).unwrap();
        assert_eq!(m.push("abc"), StopStatus::Continue("abc"));
        assert_eq!(m.push("d"), StopStatus::Continue("d"));
    }

    #[test]
    fn a_stop_split_across_tokens_is_never_shown() {
        assert_eq!(
            run(&["</end>"], &["hello </", "en", "d> more"]),
            ("hello ".into(), true)
        );
        assert_eq!(
            run(&["\n\nUser:"], &["a\n", "\nUs", "er: x"]),
            ("a".into(), true)
        );
    }

    #[test]
    fn an_innocent_prefix_is_released_later() {
        assert_eq!(
            run(&["STOP"], &["ST", "ART and ST"]),
            ("START and ST".into(), false)
        );
        let stops = vec!["STOP".to_string()];
        let mut m = StopMatcher::new(&stops, 16).unwrap();
        assert_eq!(m.push("xST"), StopStatus::Continue("x"));
        assert_eq!(m.push("AR"), StopStatus::Continue("STAR"));
    }

    #[test]
    fn the_earliest_stop_wins_and_multibyte_text_is_safe() {
        assert_eq!(run(&["b", "a"], &["xxab"]), ("xx".into(), true));
        assert_eq!(run(&["€uro"], &["1 €", "ur", "os"]), ("1 ".into(), true));
        assert_eq!(run(&["é!"], &["café", " ok"]), ("café ok".into(), false));
    }

    #[test]
    fn limits_are_enforced() {
        let many: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        let r = StopMatcher::new(&many, 8);
        assert!(matches!(r, Err(StopError::TooMany(5))), "{r:?}");
        let r = StopMatcher::new(&[String::new()], 8);
        assert!(matches!(r, Err(StopError::Length)), "{r:?}");
        let r = StopMatcher::new(&["x".repeat(MAX_STOP_LEN + 1)], 8);
        assert!(matches!(r, Err(StopError::Length)), "{r:?}");
    }
}
