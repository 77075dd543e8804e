//! An incremental parser for server-sent events (the WHATWG `text/event-stream` format), fed
//! with whatever byte chunks the network delivers.
//!
//! Lines may end in LF, CRLF or a lone CR, and a chunk may end anywhere: inside a field
//! name, between the CR and LF of one line ending, or in the middle of a UTF-8 sequence
//! (bytes are kept until their line is complete, so a split code point is decoded whole).
//! Comment lines (`:` first) are skipped, `data:` lines accumulate (joined by `\n`) and a
//! blank line dispatches the event. `id` and `retry` are ignored: a broken completion
//! stream is not resumable, so there is nothing to reconnect with.
//!
//! The input is untrusted: a line longer than [`SseLimits::max_line_bytes`] or an event
//! larger than [`SseLimits::max_event_bytes`] is an error, so a server that never sends a
//! newline cannot make the buffer grow without bound. Invalid UTF-8 is replaced with U+FFFD
//! as the standard requires.

/// Bounds on what one stream may make the parser hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SseLimits {
    /// Longest line, without its terminator.
    pub max_line_bytes: usize,
    /// Largest event: its data lines together, plus the event name.
    pub max_event_bytes: usize,
}

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, or `message` when there was none.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// A limit was exceeded; the stream cannot be parsed further.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("event-stream line longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("event larger than {limit} bytes")]
    EventTooLarge { limit: usize },
}

/// The parser's state between chunks.
#[derive(Debug)]
pub struct SseParser {
    limits: SseLimits,
    /// The incomplete current line.
    line: Vec<u8>,
    /// The previous chunk ended in CR: a LF starting the next one belongs to that line end.
    after_cr: bool,
    /// No line has been completed yet (a leading byte-order mark is dropped from it).
    first_line: bool,
    data: String,
    has_data: bool,
    event: String,
}

impl SseParser {
    pub fn new(limits: SseLimits) -> SseParser {
        SseParser {
            limits,
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            data: String::new(),
            has_data: false,
            event: String::new(),
        }
    }

    /// Parses one chunk, appending the events it completes to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.after_cr {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while let Some(i) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.extend_line(&chunk[..i])?;
            let cr = chunk[i] == b'\r';
            chunk = &chunk[i + 1..];
            if cr {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.end_line(out)?;
        }
        self.extend_line(chunk)
    }

    /// True when the stream stopped inside an event (an unterminated line or data not yet
    /// dispatched by a blank line): the standard discards it, and a caller may want to know
    /// the stream was cut.
    pub fn has_partial_event(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.limits.max_line_bytes {
            return Err(SseError::LineTooLong {
                limit: self.limits.max_line_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut line = std::mem::take(&mut self.line);
        let result = self.process_line(&line, out);
        // Keep the allocation: most lines of a stream are about the same length.
        line.clear();
        self.line = line;
        result
    }

    fn process_line(&mut self, mut line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if std::mem::take(&mut self.first_line) {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                let extra = value.len() + usize::from(self.has_data);
                if self.data.len() + self.event.len() + extra > self.limits.max_event_bytes {
                    return Err(SseError::EventTooLarge {
                        limit: self.limits.max_event_bytes,
                    });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            b"event" => {
                // Bounded by the line limit; an oversized name is still caught with the data.
                self.event = String::from_utf8_lossy(value).into_owned();
            }
            // `id`, `retry` and unknown fields are ignored, as the standard says.
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        out.push(SseEvent {
            event: if event.is_empty() {
                "message".into()
            } else {
                event
            },
            data: std::mem::take(&mut self.data),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SseLimits = SseLimits {
        max_line_bytes: 256,
        max_event_bytes: 1024,
    };

    fn parse_chunks(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, SseError> {
        let mut p = SseParser::new(LIMITS);
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out)?;
        }
        Ok(out)
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn basic_events_comments_and_fields() {
        let s = b": keep-alive\n\ndata: {\"a\":1}\n\nevent: error\ndata: oops\nid: 7\nretry: 10\n\ndata\n\ndata:x\ndata:  y\n\n";
        assert_eq!(
            parse_chunks(&[s]).unwrap(),
            vec![
                ev("message", "{\"a\":1}"),
                ev("error", "oops"),
                ev("message", ""),
                ev("message", "x\n y"),
            ]
        );
    }

    #[test]
    fn line_endings_lf_crlf_and_lone_cr() {
        let want = vec![ev("message", "a"), ev("message", "b"), ev("message", "c")];
        assert_eq!(
            parse_chunks(&[b"data: a\n\ndata: b\n\ndata: c\n\n"]).unwrap(),
            want
        );
        assert_eq!(
            parse_chunks(&[b"data: a\r\n\r\ndata: b\r\n\r\ndata: c\r\n\r\n"]).unwrap(),
            want
        );
        assert_eq!(
            parse_chunks(&[b"data: a\r\rdata: b\r\rdata: c\r\r"]).unwrap(),
            want
        );
        // A CR ending one chunk and a LF starting the next are one line end, not two.
        assert_eq!(
            parse_chunks(&[b"data: a\r", b"\ndata: more\r\n\r\n"]).unwrap(),
            vec![ev("message", "a\nmore")]
        );
    }

    #[test]
    fn events_without_data_and_trailing_partial_are_not_dispatched() {
        let mut p = SseParser::new(LIMITS);
        let mut out = Vec::new();
        p.feed(b"event: x\n\n: c\n\ndata: half", &mut out).unwrap();
        assert!(out.is_empty());
        assert!(p.has_partial_event());
        p.feed(b"\n", &mut out).unwrap();
        assert!(out.is_empty());
        assert!(p.has_partial_event());
        p.feed(b"\n", &mut out).unwrap();
        // The `event: x` of the discarded event does not leak into the next one.
        assert_eq!(out, vec![ev("message", "half")]);
        assert!(!p.has_partial_event());
    }

    #[test]
    fn byte_order_mark_and_invalid_utf8() {
        assert_eq!(
            parse_chunks(&[b"\xEF\xBB", b"\xBFdata: a\n\n"]).unwrap(),
            vec![ev("message", "a")]
        );
        assert_eq!(
            parse_chunks(&[b"data: \xFF\n\n"]).unwrap(),
            vec![ev("message", "\u{FFFD}")]
        );
    }

    /// Every way of cutting a stream into two or three chunks parses the same as the whole.
    #[test]
    fn every_split_point_gives_the_same_events() {
        let s = "\u{FEFF}: hi\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"é🦀\"}}]}\r\n\r\nevent: error\rdata: a\rdata: b\r\rdata: [DONE]\n\n".as_bytes();
        let whole = parse_chunks(&[s]).unwrap();
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[1], ev("error", "a\nb"));
        for i in 0..=s.len() {
            assert_eq!(
                parse_chunks(&[&s[..i], &s[i..]]).unwrap(),
                whole,
                "split at {i}"
            );
            for j in i..=s.len() {
                assert_eq!(
                    parse_chunks(&[&s[..i], &s[i..j], &s[j..]]).unwrap(),
                    whole,
                    "split at {i}, {j}"
                );
            }
        }
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes).unwrap(), whole);
    }

    #[test]
    fn oversize_line_is_refused_even_without_a_newline() {
        let mut p = SseParser::new(LIMITS);
        let mut out = Vec::new();
        let chunk = [b'a'; 100];
        p.feed(&chunk, &mut out).unwrap();
        p.feed(&chunk, &mut out).unwrap();
        assert_eq!(
            p.feed(&chunk, &mut out),
            Err(SseError::LineTooLong { limit: 256 })
        );
        // Exactly the limit is fine.
        let line = format!("data: {}\n\n", "b".repeat(250));
        assert_eq!(parse_chunks(&[line.as_bytes()]).unwrap()[0].data.len(), 250);
    }

    #[test]
    fn oversize_event_is_refused() {
        let line = format!("data: {}\n", "c".repeat(200));
        let many: Vec<&[u8]> = std::iter::repeat_n(line.as_bytes(), 6).collect();
        assert_eq!(
            parse_chunks(&many),
            Err(SseError::EventTooLarge { limit: 1024 })
        );
        // The same lines as separate events are fine: the bound is per event.
        let sep = format!("data: {}\n\n", "c".repeat(200));
        let many: Vec<&[u8]> = std::iter::repeat_n(sep.as_bytes(), 6).collect();
        assert_eq!(parse_chunks(&many).unwrap().len(), 6);
    }
}
