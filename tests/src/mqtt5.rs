//! A small synchronous MQTT 5 client over plain TCP, for the chaos tests and the soak
//! (`chaos`, `bin/soak.rs`): CONNECT with or without a persistent session, SUBSCRIBE at
//! QoS 1, PUBLISH at QoS 0 or 1 with a response topic, correlation data and an expiry, and
//! every received message kept with the time it arrived.
//!
//! Why not rumqttc: these tests must know exactly which of their requests the broker
//! acknowledged (a PUBACK for that packet id: only those are owed an answer when the broker
//! is killed), and must be able to send a real QoS 1 duplicate (the DUP flag and the same
//! packet id). rumqttc retransmits by itself and does not say which publish a PUBACK is
//! for. A dead connection stays dead here: the owner reconnects when it chooses.
//!
//! Keep-alive is off (0): a killed broker closes the socket, which the reader sees.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Largest packet accepted from the broker (the daemon's `max_packet_bytes` default).
const MAX_PACKET_BYTES: usize = 1 << 20;

/// MQTT 5 property identifiers used here.
const PROP_PAYLOAD_FORMAT: u8 = 0x01;
const PROP_MESSAGE_EXPIRY: u8 = 0x02;
const PROP_CONTENT_TYPE: u8 = 0x03;
const PROP_RESPONSE_TOPIC: u8 = 0x08;
const PROP_CORRELATION_DATA: u8 = 0x09;
const PROP_SUBSCRIPTION_ID: u8 = 0x0B;
const PROP_SESSION_EXPIRY: u8 = 0x11;
const PROP_TOPIC_ALIAS: u8 = 0x23;
const PROP_USER_PROPERTY: u8 = 0x26;

/// How to connect.
#[derive(Clone, Debug)]
pub struct Options {
    pub client_id: String,
    /// Start without the broker's stored session (and end it on disconnect).
    pub clean_start: bool,
    /// How long the broker keeps the session (and queues QoS 1 messages) while offline.
    pub session_expiry_secs: u32,
}

/// MQTT 5 properties of an outgoing PUBLISH.
#[derive(Clone, Debug, Default)]
pub struct PublishProps {
    pub response_topic: Option<String>,
    pub correlation: Option<Vec<u8>>,
    pub expiry_secs: Option<u32>,
}

/// A received PUBLISH.
#[derive(Clone, Debug)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub correlation: Option<Vec<u8>>,
    pub response_topic: Option<String>,
    pub retain: bool,
    pub dup: bool,
    pub qos: u8,
    pub at: Instant,
}

impl Message {
    /// The payload as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// Acknowledgements (PUBACK, SUBACK) by packet id, with the first reason code.
#[derive(Debug, Default)]
struct Acks {
    by_pkid: Mutex<HashMap<u16, u8>>,
    changed: Condvar,
}

/// One connection to the broker. Dropping it closes the socket without a DISCONNECT (as a
/// crash would); [`Connection::disconnect`] ends it properly.
#[derive(Debug)]
pub struct Connection {
    writer: Arc<Mutex<TcpStream>>,
    messages: mpsc::Receiver<Message>,
    acks: Arc<Acks>,
    closed: Arc<AtomicBool>,
    next_pkid: u16,
    /// Whether the broker still had our session (CONNACK).
    pub session_present: bool,
}

impl Connection {
    /// Connects to `127.0.0.1:port` and waits for the CONNACK.
    pub fn connect(port: u16, opts: &Options, timeout: Duration) -> io::Result<Connection> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.write_all(&connect_packet(opts))?;
        stream.set_read_timeout(Some(timeout))?;
        let (header, body) = read_packet(&mut stream)?;
        if header >> 4 != 2 || body.len() < 2 {
            return Err(protocol(format!(
                "expected CONNACK, got packet type {} ({} bytes)",
                header >> 4,
                body.len()
            )));
        }
        if body[1] != 0 {
            return Err(protocol(format!(
                "the broker refused the connection: reason code {:#04x}",
                body[1]
            )));
        }
        let session_present = body[0] & 1 == 1;
        stream.set_read_timeout(None)?;
        let writer = Arc::new(Mutex::new(stream.try_clone()?));
        let (tx, messages) = mpsc::channel();
        let acks = Arc::new(Acks::default());
        let closed = Arc::new(AtomicBool::new(false));
        {
            let (writer, acks, closed) =
                (Arc::clone(&writer), Arc::clone(&acks), Arc::clone(&closed));
            std::thread::Builder::new()
                .name(format!("mqtt5-{}", opts.client_id))
                .spawn(move || {
                    // Whatever ends the loop (EOF, a reset, a malformed packet, DISCONNECT),
                    // the connection is over.
                    let _ = read_loop(&mut stream, &writer, &tx, &acks);
                    closed.store(true, Ordering::SeqCst);
                    acks.changed.notify_all();
                })?;
        }
        Ok(Connection {
            writer,
            messages,
            acks,
            closed,
            next_pkid: 0,
            session_present,
        })
    }

    /// Whether the broker closed the connection (or it broke).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        let pkid = self.next_pkid;
        // A wrapped id's old acknowledgement must not answer for the new packet.
        if let Ok(mut acks) = self.acks.by_pkid.lock() {
            acks.remove(&pkid);
        }
        pkid
    }

    fn write(&self, packet: &[u8]) -> io::Result<()> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| protocol("the writer lock is poisoned".into()))?;
        w.write_all(packet)
    }

    /// Subscribes to `filters` at QoS 1 and waits for the SUBACK; an error names a refused
    /// filter.
    pub fn subscribe(&mut self, filters: &[&str], timeout: Duration) -> io::Result<()> {
        let pkid = self.pkid();
        let mut body = pkid.to_be_bytes().to_vec();
        body.push(0); // no properties
        for f in filters {
            put_str(&mut body, f)?;
            body.push(0x01); // QoS 1
        }
        self.write(&frame(0x82, &body))?;
        match self.wait_ack(pkid, timeout) {
            Some(code) if code <= 1 => Ok(()),
            Some(code) => Err(protocol(format!(
                "the broker refused a subscription to {filters:?}: reason code {code:#04x}"
            ))),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no SUBACK for {filters:?} within {timeout:?}"),
            )),
        }
    }

    /// Publishes at QoS 1 and returns the packet id (see [`Connection::wait_ack`]).
    pub fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        props: &PublishProps,
    ) -> io::Result<u16> {
        let pkid = self.pkid();
        self.publish_raw(topic, payload, props, Some(pkid), false)?;
        Ok(pkid)
    }

    /// Publishes with full control: `pkid` None is QoS 0, else QoS 1 with that packet id
    /// (the same id and `dup` true make a redelivery, as after a lost PUBACK).
    pub fn publish_raw(
        &self,
        topic: &str,
        payload: &[u8],
        props: &PublishProps,
        pkid: Option<u16>,
        dup: bool,
    ) -> io::Result<()> {
        let mut body = Vec::with_capacity(payload.len() + topic.len() + 64);
        put_str(&mut body, topic)?;
        if let Some(id) = pkid {
            body.extend_from_slice(&id.to_be_bytes());
        }
        let mut p = Vec::new();
        if let Some(t) = &props.response_topic {
            p.push(PROP_RESPONSE_TOPIC);
            put_str(&mut p, t)?;
        }
        if let Some(c) = &props.correlation {
            p.push(PROP_CORRELATION_DATA);
            put_bin(&mut p, c)?;
        }
        if let Some(e) = props.expiry_secs {
            p.push(PROP_MESSAGE_EXPIRY);
            p.extend_from_slice(&e.to_be_bytes());
        }
        put_varint(&mut body, p.len());
        body.extend_from_slice(&p);
        body.extend_from_slice(payload);
        let qos = if pkid.is_some() { 1 } else { 0 };
        let header = 0x30 | (u8::from(dup) << 3) | (qos << 1);
        self.write(&frame(header, &body))
    }

    /// Waits for the PUBACK or SUBACK of `pkid`; its reason code, or None on a timeout or
    /// a closed connection.
    pub fn wait_ack(&self, pkid: u16, timeout: Duration) -> Option<u8> {
        let end = Instant::now() + timeout;
        let mut acks = self.acks.by_pkid.lock().ok()?;
        loop {
            if let Some(code) = acks.remove(&pkid) {
                return Some(code);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || self.is_closed() {
                return None;
            }
            acks = self.acks.changed.wait_timeout(acks, left).ok()?.0;
        }
    }

    /// The next received message, if one arrives within `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Message> {
        self.messages.recv_timeout(timeout).ok()
    }

    /// Sends DISCONNECT (normal) and closes the socket.
    pub fn disconnect(self) {
        let _ = self.write(&[0xE0, 0x00]);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Ok(w) = self.writer.lock() {
            let _ = w.shutdown(Shutdown::Both);
        }
    }
}

fn protocol(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn put_bin(out: &mut Vec<u8>, b: &[u8]) -> io::Result<()> {
    let len = u16::try_from(b.len())
        .map_err(|_| protocol(format!("{} bytes is too long for an MQTT string", b.len())))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) -> io::Result<()> {
    put_bin(out, s.as_bytes())
}

/// A packet: the fixed header byte, the remaining length, the body.
fn frame(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(header);
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

fn connect_packet(opts: &Options) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 5]);
    body.push(if opts.clean_start { 0x02 } else { 0 });
    body.extend_from_slice(&0u16.to_be_bytes()); // keep-alive off
    let mut p = vec![PROP_SESSION_EXPIRY];
    p.extend_from_slice(&opts.session_expiry_secs.to_be_bytes());
    put_varint(&mut body, p.len());
    body.extend_from_slice(&p);
    // Client ids are the tests' own short names; an overlong one is cut rather than refused.
    let id = &opts.client_id.as_bytes()[..opts.client_id.len().min(u16::MAX as usize)];
    let _ = put_bin(&mut body, id);
    frame(0x10, &body)
}

/// Reads one packet: the fixed header byte and the body.
fn read_packet(r: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    let header = b[0];
    let mut len = 0usize;
    for i in 0..4 {
        r.read_exact(&mut b)?;
        len |= usize::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            break;
        }
        if i == 3 {
            return Err(protocol("a remaining length longer than four bytes".into()));
        }
    }
    if len > MAX_PACKET_BYTES {
        return Err(protocol(format!(
            "a {len}-byte packet; the limit is {MAX_PACKET_BYTES}"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((header, body))
}

/// A cursor over a packet body whose reads fail (rather than panic) past its end.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                protocol(format!(
                    "a field runs past the end of a {}-byte packet",
                    self.buf.len()
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> io::Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn bin(&mut self) -> io::Result<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn string(&mut self) -> io::Result<String> {
        let b = self.bin()?;
        String::from_utf8(b.to_vec()).map_err(|e| protocol(format!("a string is not UTF-8: {e}")))
    }

    fn varint(&mut self) -> io::Result<usize> {
        let mut v = 0usize;
        for i in 0..4 {
            let b = self.u8()?;
            v |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(protocol(
            "a variable byte integer longer than four bytes".into(),
        ))
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
}

/// Parses an incoming PUBLISH (header flags and body).
fn parse_publish(header: u8, body: &[u8]) -> io::Result<(Message, Option<u16>)> {
    let qos = (header >> 1) & 3;
    let mut c = Cursor { buf: body, pos: 0 };
    let topic = c.string()?;
    let pkid = if qos > 0 { Some(c.u16()?) } else { None };
    let props_len = c.varint()?;
    let mut p = Cursor {
        buf: c.take(props_len)?,
        pos: 0,
    };
    let (mut correlation, mut response_topic) = (None, None);
    while p.pos < p.buf.len() {
        match p.u8()? {
            PROP_PAYLOAD_FORMAT => {
                p.u8()?;
            }
            PROP_MESSAGE_EXPIRY => {
                p.take(4)?;
            }
            PROP_CONTENT_TYPE => {
                p.bin()?;
            }
            PROP_RESPONSE_TOPIC => response_topic = Some(p.string()?),
            PROP_CORRELATION_DATA => correlation = Some(p.bin()?.to_vec()),
            PROP_SUBSCRIPTION_ID => {
                p.varint()?;
            }
            PROP_TOPIC_ALIAS => {
                p.u16()?;
            }
            PROP_USER_PROPERTY => {
                p.bin()?;
                p.bin()?;
            }
            other => {
                return Err(protocol(format!(
                    "unexpected PUBLISH property {other:#04x}"
                )));
            }
        }
    }
    let msg = Message {
        topic,
        payload: c.rest().to_vec(),
        correlation,
        response_topic,
        retain: header & 1 == 1,
        dup: header & 0x08 != 0,
        qos,
        at: Instant::now(),
    };
    Ok((msg, pkid))
}

fn read_loop(
    stream: &mut TcpStream,
    writer: &Mutex<TcpStream>,
    messages: &mpsc::Sender<Message>,
    acks: &Acks,
) -> io::Result<()> {
    loop {
        let (header, body) = read_packet(stream)?;
        match header >> 4 {
            3 => {
                let (msg, pkid) = parse_publish(header, &body)?;
                // Kept before it is acknowledged: an acknowledged message is ours.
                let _ = messages.send(msg);
                if let Some(id) = pkid {
                    let mut ack = vec![0x40, 0x02];
                    ack.extend_from_slice(&id.to_be_bytes());
                    writer
                        .lock()
                        .map_err(|_| protocol("the writer lock is poisoned".into()))?
                        .write_all(&ack)?;
                }
            }
            // PUBACK: packet id, then a reason code unless it is 0 (success). SUBACK: packet
            // id, properties, then one reason code per filter (the first is kept).
            4 | 9 => {
                let mut c = Cursor { buf: &body, pos: 0 };
                let pkid = c.u16()?;
                let code = if header >> 4 == 4 {
                    c.u8().unwrap_or(0)
                } else {
                    let n = c.varint()?;
                    c.take(n)?;
                    c.u8()?
                };
                if let Ok(mut a) = acks.by_pkid.lock() {
                    a.insert(pkid, code);
                }
                acks.changed.notify_all();
            }
            14 => {
                let code = body.first().copied().unwrap_or(0);
                return Err(protocol(format!(
                    "the broker disconnected us: reason code {code:#04x}"
                )));
            }
            // PINGRESP and anything else this client never asks for.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for n in [0usize, 1, 127, 128, 16_383, 16_384, 2_097_151, 268_435_455] {
            let mut v = Vec::new();
            put_varint(&mut v, n);
            let mut c = Cursor { buf: &v, pos: 0 };
            assert_eq!(c.varint().unwrap(), n);
        }
    }

    #[test]
    fn a_publish_with_properties_parses_back() {
        let mut body = Vec::new();
        put_str(&mut body, "a/b").unwrap();
        body.extend_from_slice(&7u16.to_be_bytes());
        let mut p = vec![PROP_CORRELATION_DATA];
        put_bin(&mut p, b"corr").unwrap();
        p.push(PROP_RESPONSE_TOPIC);
        put_str(&mut p, "r/t").unwrap();
        put_varint(&mut body, p.len());
        body.extend_from_slice(&p);
        body.extend_from_slice(b"{}");
        let (m, pkid) = parse_publish(0x3a, &body).unwrap();
        assert_eq!(pkid, Some(7));
        assert!(m.dup && m.qos == 1 && !m.retain);
        assert_eq!(
            (m.topic.as_str(), m.payload.as_slice()),
            ("a/b", &b"{}"[..])
        );
        assert_eq!(m.correlation.as_deref(), Some(&b"corr"[..]));
        assert_eq!(m.response_topic.as_deref(), Some("r/t"));
    }

    #[test]
    fn a_truncated_publish_is_an_error_not_a_panic() {
        let mut body = Vec::new();
        put_str(&mut body, "a/b").unwrap();
        body.push(0x00);
        // QoS 1: the packet id's two bytes are cut to one.
        let err = parse_publish(0x32, &body).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(
            err.to_string()
                .contains("a field runs past the end of a 6-byte packet"),
            "{err}"
        );
        // A 9-byte topic with one byte present.
        let err = parse_publish(0x30, &[0, 9, b'x']).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(
            err.to_string()
                .contains("a field runs past the end of a 3-byte packet"),
            "{err}"
        );
    }
}
