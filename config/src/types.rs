use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A node id: the 32-byte public key of a node.
pub type NodeIdBytes = [u8; 32];

/// The token a Prometheus server sends to `[metrics] listen`
/// (`Authorization: Bearer <token>`). Never empty, no whitespace.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl fmt::Debug for BearerToken {
    // Configs get logged with `{:?}`; the token must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// The file's text without surrounding whitespace; `None` if nothing
    /// is left or the token holds whitespace (a header cannot carry it).
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        (!t.is_empty() && !t.contains(char::is_whitespace)).then(|| BearerToken(t.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The shared secret every member of a fleet knows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FleetSecret(pub [u8; 32]);

impl fmt::Debug for FleetSecret {
    // Configs get logged with `{:?}`; the secret must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetSecret(<redacted>)")
    }
}

impl FleetSecret {
    /// Lowercase hex, the form the config file uses.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 64 hex chars (either case). The error never contains the input,
    /// because the input is (almost) a secret.
    pub fn from_hex(s: &str) -> Result<Self, String> {
        decode_32(s).map(FleetSecret)
    }
}

/// Parse a node id: 64 hex chars (either case) = 32 bytes.
pub fn parse_node_id(s: &str) -> Result<NodeIdBytes, String> {
    decode_32(s)
}

fn decode_32(s: &str) -> Result<[u8; 32], String> {
    let len = s.chars().count();
    if len != 64 {
        return Err(format!(
            "expected 64 hex chars (32 bytes), found {len} char{}",
            if len == 1 { "" } else { "s" }
        ));
    }
    if let Some(pos) = s.bytes().position(|b| !b.is_ascii_hexdigit()) {
        return Err(format!(
            "expected 64 hex chars (32 bytes), found a non-hex character at position {}",
            pos + 1
        ));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|e| format!("invalid hex: {e}"))?;
    Ok(out)
}

/// A statically configured peer: `<64-hex node id>@<ip>:<port>` or
/// `<64-hex node id>@<host name>:<port>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub id: NodeIdBytes,
    pub addr: PeerHost,
}

/// Where a static peer is: an address, or a host name the mesh resolves
/// before every dial (so a peer whose address changes is found again on
/// reconnect). Parsing does no I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerHost {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl From<SocketAddr> for PeerHost {
    fn from(a: SocketAddr) -> Self {
        PeerHost::Ip(a)
    }
}

impl FromStr for PeerHost {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(PeerHost::Ip(a));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| {
            format!("address {s:?} has no port; expected <ip>:<port> or <host name>:<port>")
        })?;
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => {
                return Err(format!(
                    "address {s:?}: port {port:?} is not a number from 1 to 65535"
                ))
            }
        };
        if host.contains(':') || host.starts_with('[') {
            return Err(format!(
                "address {s:?} is not an <ip>:<port> socket address"
            ));
        }
        check_host_name(host).map_err(|why| format!("address {s:?}: {why}"))?;
        Ok(PeerHost::Name {
            host: host.to_string(),
            port,
        })
    }
}

/// RFC 1123 host name: dot-separated labels of 1-63 letters, digits and
/// hyphens, not starting or ending with a hyphen, at most 253 bytes. A
/// trailing dot (fully qualified) is allowed.
pub fn check_host_name(host: &str) -> Result<(), String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err("empty host name".to_string());
    }
    if name.len() > 253 {
        return Err(format!("host name is {} bytes, at most 253", name.len()));
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{host:?} is neither an IP address nor a host name (a name's last label is not all digits)"
        ));
    }
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{label:?} is not a valid host name label \
                 (1-63 letters, digits or '-', not starting or ending with '-')"
            ));
        }
    }
    Ok(())
}

impl fmt::Display for PeerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerHost::Ip(a) => write!(f, "{a}"),
            PeerHost::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl FromStr for PeerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (id, addr) = s
            .split_once('@')
            .ok_or_else(|| "missing '@' between node id and address".to_string())?;
        let id = parse_node_id(id).map_err(|e| format!("node id: {e}"))?;
        let addr = addr.parse::<PeerHost>()?;
        Ok(PeerAddr { id, addr })
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", hex::encode(self.id), self.addr)
    }
}

/// Which directions a folder syncs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderMode {
    SendReceive,
    SendOnly,
    ReceiveOnly,
}

impl FolderMode {
    pub const ALL: [FolderMode; 3] = [
        FolderMode::SendReceive,
        FolderMode::SendOnly,
        FolderMode::ReceiveOnly,
    ];

    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            FolderMode::SendReceive => "send-receive",
            FolderMode::SendOnly => "send-only",
            FolderMode::ReceiveOnly => "receive-only",
        }
    }

    /// Whether local changes are offered to peers.
    pub fn can_send(self) -> bool {
        self != FolderMode::ReceiveOnly
    }

    /// Whether peers' changes are applied locally.
    pub fn can_receive(self) -> bool {
        self != FolderMode::SendOnly
    }
}

/// How a folder notices local changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// OS file-change events (inotify, FSEvents, ...).
    Notify,
    /// Periodic scans every `poll_interval`, for file systems without events
    /// (network mounts, some containers).
    Poll,
}

impl WatchMode {
    pub const ALL: [WatchMode; 2] = [WatchMode::Notify, WatchMode::Poll];

    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchMode::Notify => "notify",
            WatchMode::Poll => "poll",
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

impl LogFormat {
    pub const ALL: [LogFormat; 2] = [LogFormat::Human, LogFormat::Json];

    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

/// The accepted spellings of a config enum, for error messages.
pub(crate) trait Choices {
    fn choices() -> String;
}

// The three enums share their string handling so the error for a bad value
// always lists exactly the spellings `from_str` accepts.
macro_rules! config_enum_strings {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Choices for $ty {
            fn choices() -> String {
                $ty::ALL
                    .iter()
                    .map(|v| format!("\"{v}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("{s:?} is not one of {}", $ty::choices()))
            }
        }
    };
}

config_enum_strings!(FolderMode);
config_enum_strings!(WatchMode);
config_enum_strings!(LogFormat);

/// Parse a human duration such as "200ms", "5s", "1h" or "1h 30m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "invalid duration {s:?} ({e}); expected a number with a unit \
             (ns, us, ms, s, m, h, d), e.g. \"200ms\", \"5s\", \"1h\""
        )
    })
}
