//! Join tickets: one copy-pasteable string that lets a new node join a
//! fleet (`fleetsync invite` prints one, `fleetsync join` consumes it).
//!
//! A ticket carries the fleet secret, one member's node id and where that
//! member can be reached (IP addresses and host names), and an expiry. It
//! is an [`iroh_tickets::Ticket`]: the `fleetsync` kind prefix followed by
//! lowercase base32 of a postcard-encoded, versioned `Wire` enum (so a
//! future format can be told apart from this one) and a short checksum (so
//! a mistyped character is an error, not a ticket with a different secret
//! or expiry).
//!
//! Limit: the expiry is only enforced by `join` ([`FleetTicket::check_fresh`]).
//! The ticket holds the real secret, so an expired ticket still leaks it;
//! revoking a leaked ticket means rotating the secret (or `deny`).

use std::{
    fmt,
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use iroh::EndpointId;
use iroh_tickets::{ParseError, Ticket};
use serde::{Deserialize, Serialize};

/// At most this many IP addresses in a ticket (more is not a ticket we made).
pub const MAX_TICKET_ADDRS: usize = 16;
/// At most this many host names in a ticket.
pub const MAX_TICKET_HOSTS: usize = 4;
/// The longest DNS name (RFC 1123).
pub const MAX_HOST_LEN: usize = 253;
/// The longest ticket string accepted: generous for the caps above, and
/// small enough that decoding garbage pasted by mistake costs nothing.
pub const MAX_TICKET_CHARS: usize = 8192;
/// Bytes of BLAKE3 over the encoded ticket appended to it.
const CHECKSUM_LEN: usize = 4;

fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let h = blake3::hash(body);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&h.as_bytes()[..CHECKSUM_LEN]);
    out
}

/// What a new node needs to join the fleet.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetTicket {
    /// The fleet secret (the same on every member).
    pub secret: [u8; 32],
    /// The inviting member.
    pub node: EndpointId,
    /// Where the inviting member listens.
    pub addrs: Vec<SocketAddr>,
    /// Host names (and ports) of the inviting member, resolved at dial time.
    pub hosts: Vec<(String, u16)>,
    /// Seconds since the Unix epoch after which `join` refuses the ticket.
    pub expires_unix: u64,
}

/// The encoded form. Versioned so a later layout decodes as a clear error
/// (or is migrated) instead of as garbage.
#[derive(Serialize, Deserialize)]
enum Wire {
    V1 {
        secret: [u8; 32],
        node: EndpointId,
        addrs: Vec<SocketAddr>,
        hosts: Vec<(String, u16)>,
        expires_unix: u64,
    },
}

impl fmt::Debug for FleetTicket {
    // Tickets end up in `{:?}` of errors and state; the secret must not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetTicket")
            .field("secret", &"<redacted>")
            .field("node", &self.node)
            .field("addrs", &self.addrs)
            .field("hosts", &self.hosts)
            .field("expires_unix", &self.expires_unix)
            .finish()
    }
}

impl Ticket for FleetTicket {
    const KIND: &'static str = "fleetsync";

    fn encode_bytes(&self) -> Vec<u8> {
        let wire = Wire::V1 {
            secret: self.secret,
            node: self.node,
            addrs: self.addrs.clone(),
            hosts: self.hosts.clone(),
            expires_unix: self.expires_unix,
        };
        let mut bytes = postcard::to_stdvec(&wire).expect("postcard encodes plain data into a Vec");
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum);
        bytes
    }

    fn decode_bytes(bytes: &[u8]) -> Result<Self, ParseError> {
        let Wire::V1 {
            secret,
            node,
            addrs,
            hosts,
            expires_unix,
        } = {
            let split = bytes
                .len()
                .checked_sub(CHECKSUM_LEN)
                .ok_or_else(|| ParseError::verification_failed("too short"))?;
            let (body, sum) = bytes.split_at(split);
            if checksum(body) != sum {
                return Err(ParseError::verification_failed("checksum mismatch"));
            }
            let (wire, rest) = postcard::take_from_bytes(body)?;
            if !rest.is_empty() {
                return Err(ParseError::verification_failed("trailing bytes"));
            }
            wire
        };
        if addrs.len() > MAX_TICKET_ADDRS {
            return Err(ParseError::verification_failed("too many addresses"));
        }
        if hosts.len() > MAX_TICKET_HOSTS {
            return Err(ParseError::verification_failed("too many host names"));
        }
        if hosts
            .iter()
            .any(|(h, port)| h.is_empty() || h.len() > MAX_HOST_LEN || *port == 0)
        {
            return Err(ParseError::verification_failed("bad host name"));
        }
        Ok(FleetTicket {
            secret,
            node,
            addrs,
            hosts,
            expires_unix,
        })
    }
}

/// Why a ticket cannot be used to join.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    #[error("not a fleetsync join ticket (it should start with \"fleetsync\")")]
    WrongKind,
    #[error("malformed ticket (truncated or mistyped?): {source}")]
    Malformed {
        #[source]
        source: ParseError,
    },
    #[error(
        "malformed ticket (truncated or mistyped?): longer than {MAX_TICKET_CHARS} characters"
    )]
    TooLong,
    #[error(
        "the ticket expired {ago} ago (at {at} Unix time); ask a member for a new one with \"fleetsync invite\"",
        ago = humantime_secs(*.ago)
    )]
    Expired { at: u64, ago: Duration },
}

fn humantime_secs(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

impl FleetTicket {
    /// Decode the string form, mapping errors to what an operator can act
    /// on. Surrounding whitespace (a pasted newline) is ignored.
    pub fn parse(s: &str) -> Result<Self, TicketError> {
        let s = s.trim();
        if s.len() > MAX_TICKET_CHARS {
            return Err(TicketError::TooLong);
        }
        FleetTicket::decode_string(s).map_err(|e| match e {
            ParseError::Kind { .. } => TicketError::WrongKind,
            source => TicketError::Malformed { source },
        })
    }

    /// The ticket's string form.
    pub fn encode(&self) -> String {
        self.encode_string()
    }

    /// Refuse a ticket whose expiry is at or before `now`.
    pub fn check_fresh(&self, now: SystemTime) -> Result<(), TicketError> {
        let at = UNIX_EPOCH + Duration::from_secs(self.expires_unix);
        match now.duration_since(at) {
            Ok(ago) => Err(TicketError::Expired {
                at: self.expires_unix,
                ago,
            }),
            Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iroh::SecretKey;

    fn ticket() -> FleetTicket {
        FleetTicket {
            secret: [0x5a; 32],
            node: SecretKey::generate().public(),
            addrs: vec![
                "127.0.0.1:7300".parse().unwrap(),
                "[::1]:7301".parse().unwrap(),
            ],
            hosts: vec![("host.example".to_string(), 7300)],
            expires_unix: 4_000_000_000,
        }
    }

    #[test]
    fn round_trips_through_the_string_form() {
        let t = ticket();
        let back = FleetTicket::parse(&format!("  {}\n", t.encode())).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn string_is_kind_plus_lowercase_base32() {
        let s = ticket().encode();
        let rest = s.strip_prefix("fleetsync").expect("kind prefix");
        assert!(rest
            .chars()
            .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)));
        assert!(s.len() < 400, "ticket is {} chars", s.len());
    }

    #[test]
    fn wrong_kind_is_a_clear_error() {
        let s = ticket().encode().replacen("fleetsync", "endpoint", 1);
        let e = FleetTicket::parse(&s).unwrap_err();
        assert!(matches!(e, TicketError::WrongKind), "{e:?}");
        assert!(e.to_string().contains("not a fleetsync join ticket"));
    }

    #[test]
    fn truncated_is_malformed() {
        let s = ticket().encode();
        for cut in [s.len() - 1, s.len() - 10, "fleetsync".len() + 3] {
            let e = FleetTicket::parse(&s[..cut]).unwrap_err();
            assert!(matches!(e, TicketError::Malformed { .. }), "{cut}: {e:?}");
            assert!(e.to_string().contains("malformed ticket"), "{e}");
        }
        let e = FleetTicket::parse(&"a".repeat(MAX_TICKET_CHARS + 1)).unwrap_err();
        assert!(matches!(e, TicketError::TooLong), "{e:?}");
    }

    #[test]
    fn a_mistyped_character_is_malformed() {
        let s = ticket().encode();
        let mut failures = 0;
        for i in "fleetsync".len()..s.len() {
            let mut chars: Vec<char> = s.chars().collect();
            chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
            let typo: String = chars.into_iter().collect();
            if let Err(e) = FleetTicket::parse(&typo) {
                assert!(e.to_string().contains("malformed ticket"), "{e}");
                failures += 1;
            }
        }
        // The last character may only carry padding bits; every other one
        // changes the bytes and fails the checksum.
        assert!(failures >= s.len() - "fleetsync".len() - 1, "{failures}");
    }

    #[test]
    fn expired_is_refused() {
        let mut t = ticket();
        t.expires_unix = 1_000;
        let now = UNIX_EPOCH + Duration::from_secs(1_000 + 7_200);
        let e = t.check_fresh(now).unwrap_err();
        match &e {
            TicketError::Expired { at, ago } => {
                assert_eq!(*at, 1_000);
                assert_eq!(*ago, Duration::from_secs(7_200));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("expired 2h ago"), "{e}");
        assert!(t.check_fresh(UNIX_EPOCH + Duration::from_secs(999)).is_ok());
    }

    #[test]
    fn debug_redacts_the_secret() {
        let t = ticket();
        let dbg = format!("{t:?}");
        assert!(dbg.contains("<redacted>"));
        assert!(!dbg.contains("90, 90"), "{dbg}");
        assert!(!dbg.contains(&hex::encode(t.secret)), "{dbg}");
    }

    #[test]
    fn oversized_address_lists_are_rejected() {
        let mut t = ticket();
        t.addrs = (0..=MAX_TICKET_ADDRS as u16)
            .map(|p| SocketAddr::from(([10, 0, 0, 1], 1000 + p)))
            .collect();
        let e = FleetTicket::parse(&t.encode()).unwrap_err();
        assert!(e.to_string().contains("too many addresses"), "{e}");

        let mut t = ticket();
        t.hosts = vec![("h.example".to_string(), 1); MAX_TICKET_HOSTS + 1];
        let e = FleetTicket::parse(&t.encode()).unwrap_err();
        assert!(e.to_string().contains("too many host names"), "{e}");

        let mut t = ticket();
        t.hosts = vec![("a".repeat(MAX_HOST_LEN + 1), 1)];
        let e = FleetTicket::parse(&t.encode()).unwrap_err();
        assert!(e.to_string().contains("bad host name"), "{e}");
    }
}
