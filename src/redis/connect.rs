//! How the worker and the CLI reach Redis, from `store.*`: one node, or a Redis Cluster found
//! from seed nodes, with the same TLS trust (CA file, client certificate) and credentials for
//! every node.
//!
//! On a cluster, connections go to the primary that serves a key's slot, found in the slot map
//! (`CLUSTER SLOTS`) read from any seed. The code store keeps all its keys in one slot, so it
//! talks to one node over a plain connection and every command, pipeline and script works as
//! on a single node. The detectors spread over slots; [`crate::redis::detector_state`] groups
//! its calls per node with a [`SlotMap`]. The redis crate's own cluster connection is not used:
//! its pipelines refuse `EVALSHA` and it has no sharded pub/sub on the synchronous side.
//!
//! A redirection (`MOVED`, `ASK`), `TRYAGAIN`, `CLUSTERDOWN` or a node that went away is an
//! error like any other Redis outage: callers drop their connections, read the slot map again
//! on the next attempt and redo the whole operation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::{
    Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    ProtocolVersion, RedisError, RedisResult, TlsCertificates, Value,
};

use crate::settings::{RedisMode, StoreSettings};

/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// Where the Redis of the settings is and how to connect to it.
#[derive(Clone)]
pub struct Endpoint {
    cluster: bool,
    seeds: Vec<ConnectionInfo>,
    certs: Option<TlsCertificates>,
    connect_timeout: Duration,
    io_timeout: Duration,
    shown: String,
}

/// A cluster node, as the slot map names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Which primary serves which slots.
#[derive(Debug, Clone, Default)]
pub struct SlotMap {
    /// `(first, last, primary)`, sorted by `first`.
    ranges: Vec<(u16, u16, Node)>,
}

impl SlotMap {
    pub fn primary(&self, slot: u16) -> Option<&Node> {
        let at = self.ranges.partition_point(|(first, _, _)| *first <= slot);
        let (first, last, node) = self.ranges.get(at.checked_sub(1)?)?;
        (*first <= slot && slot <= *last).then_some(node)
    }

    /// The primaries, each once.
    pub fn primaries(&self) -> Vec<Node> {
        let mut nodes: Vec<Node> = self.ranges.iter().map(|(_, _, n)| n.clone()).collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// Reads a `CLUSTER SLOTS` reply; a node announced without an address (`""`) is the one
    /// that answered, `seed_host`.
    fn parse(reply: Value, seed_host: &str) -> RedisResult<SlotMap> {
        let bad = |what: &str| RedisError::from((ErrorKind::Parse, "CLUSTER SLOTS", what.into()));
        let Value::Array(entries) = reply else {
            return Err(bad("not an array"));
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else {
                return Err(bad("an entry is not an array"));
            };
            let mut fields = fields.into_iter();
            let first: u16 = number(fields.next()).ok_or_else(|| bad("no first slot"))?;
            let last: u16 = number(fields.next()).ok_or_else(|| bad("no last slot"))?;
            let Some(Value::Array(primary)) = fields.next() else {
                return Err(bad("no primary"));
            };
            let mut primary = primary.into_iter();
            let host = match primary.next() {
                Some(Value::BulkString(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                Some(Value::SimpleString(text)) => text,
                _ => return Err(bad("a primary without a host")),
            };
            let port: u16 =
                number(primary.next()).ok_or_else(|| bad("a primary without a port"))?;
            let host = if host.is_empty() || host == "?" {
                seed_host.to_string()
            } else {
                host
            };
            ranges.push((first, last, Node { host, port }));
        }
        ranges.sort();
        Ok(SlotMap { ranges })
    }
}

fn number<T: TryFrom<i64>>(value: Option<Value>) -> Option<T> {
    match value? {
        Value::Int(n) => T::try_from(n).ok(),
        _ => None,
    }
}

impl Endpoint {
    pub fn new(settings: &StoreSettings) -> RedisResult<Endpoint> {
        let cluster = settings.redis_mode == RedisMode::Cluster;
        let mut seeds = Vec::new();
        let mut parts = settings.redis_url.expose().split(',').map(str::trim);
        let first = parts.next().unwrap_or_default();
        let first_info = first.into_connection_info()?;
        seeds.push(insecure_if(first_info.clone(), settings.tls_insecure));
        for part in parts.filter(|p| !p.is_empty()) {
            let info = if part.contains("://") {
                part.into_connection_info()?
            } else {
                first_info.clone().set_addr(with_host(
                    first_info.addr(),
                    &node_of(part).ok_or_else(|| {
                        RedisError::from((
                            ErrorKind::InvalidClientConfig,
                            "a seed of store.redis_url is not host:port",
                            part.to_string(),
                        ))
                    })?,
                ))
            };
            seeds.push(insecure_if(info, settings.tls_insecure));
        }
        if settings.tls_insecure {
            warn_insecure_once();
        }
        Ok(Endpoint {
            cluster,
            seeds,
            certs: certificates(settings)?,
            connect_timeout: Duration::from_millis(settings.connect_timeout_ms),
            io_timeout: Duration::from_millis(settings.io_timeout_ms),
            shown: settings.redis_url.redacted(),
        })
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The URL(s) without passwords, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn open(&self, info: ConnectionInfo) -> RedisResult<redis::Connection> {
        let client = match &self.certs {
            Some(certs) => Client::build_with_tls(info, certs.clone())?,
            None => Client::open(info)?,
        };
        let connection = client.get_connection_with_timeout(self.connect_timeout)?;
        // Without a timeout a server that stops answering (a stalled node, a half-open TCP
        // connection) would block the caller forever.
        connection.set_read_timeout(Some(self.io_timeout))?;
        connection.set_write_timeout(Some(self.io_timeout))?;
        Ok(connection)
    }

    /// A connection to the node that serves `key`: the one node, or on a cluster the primary of
    /// the key's slot as the slot map says now.
    pub fn connect_for(&self, key: &str) -> RedisResult<redis::Connection> {
        self.connect_for_with(key, ProtocolVersion::RESP2)
    }

    /// [`Endpoint::connect_for`] speaking the given protocol version.
    pub fn connect_for_with(
        &self,
        key: &str,
        protocol: ProtocolVersion,
    ) -> RedisResult<redis::Connection> {
        let info = |info: ConnectionInfo| {
            let settings = info.redis_settings().clone().set_protocol(protocol);
            info.set_redis_settings(settings)
        };
        if !self.cluster {
            return self.open(info(self.seeds[0].clone()));
        }
        let map = self.slot_map()?;
        let slot = slot(key.as_bytes());
        let node = map.primary(slot).ok_or_else(|| uncovered(slot))?;
        self.open(info(self.node_info(node)))
    }

    /// A connection to a cluster node, with the first seed's scheme, credentials and TLS.
    pub fn connect_to(&self, node: &Node) -> RedisResult<redis::Connection> {
        self.open(self.node_info(node))
    }

    /// The first seed's connection settings pointed at `node`.
    fn node_info(&self, node: &Node) -> ConnectionInfo {
        let seed = self.seeds[0].clone();
        let addr = with_host(seed.addr(), node);
        seed.set_addr(addr)
    }

    /// The cluster's slot map from the first seed that answers.
    pub fn slot_map(&self) -> RedisResult<SlotMap> {
        let mut last = None;
        for seed in &self.seeds {
            let host = match seed.addr() {
                ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
                _ => String::new(),
            };
            let read = self.open(seed.clone()).and_then(|mut connection| {
                let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut connection)?;
                SlotMap::parse(reply, &host)
            });
            match read {
                Ok(map) if !map.ranges.is_empty() => return Ok(map),
                Ok(_) => last = Some(uncovered(0)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| uncovered(0)))
    }
}

/// A subscription to one channel: `SUBSCRIBE` on a single node; on a cluster `SSUBSCRIBE` on
/// the primary of the channel's slot (sharded pub/sub stays within the slot's shard instead of
/// being broadcast to every node).
pub struct Subscription {
    /// RESP3: redis-rs takes a read that timed out for a reply still on its way and drops the
    /// next reply it reads to make up for it; in RESP2 a pub/sub message is such a reply, so the
    /// announcement after a quiet tick was the one dropped and a new version waited for the
    /// pointer poll. RESP3 delivers messages as pushes, which are never dropped that way.
    connection: redis::Connection,
}

impl Subscription {
    /// Subscribes and waits for the server's confirmation; `tick` then bounds each [`wait`].
    ///
    /// [`wait`]: Subscription::wait
    pub fn open(endpoint: &Endpoint, channel: &str, tick: Duration) -> RedisResult<Subscription> {
        let mut connection = endpoint.connect_for_with(channel, ProtocolVersion::RESP3)?;
        let command = if endpoint.is_cluster() {
            "SSUBSCRIBE"
        } else {
            "SUBSCRIBE"
        };
        connection.send_packed_command(&redis::cmd(command).arg(channel).get_packed_command())?;
        let confirmed = connection.recv_response()?;
        if !matches!(
            kind_of(&confirmed).as_deref(),
            Some("subscribe" | "ssubscribe")
        ) {
            return Err(RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "no subscription confirmation",
                format!("{confirmed:?}"),
            )));
        }
        connection.set_read_timeout(Some(tick))?;
        Ok(Subscription { connection })
    }

    /// Whether a message arrived within the tick. A shard channel whose slot moved to another
    /// node is unsubscribed by the server: an error, so the caller subscribes afresh.
    pub fn wait(&mut self) -> RedisResult<bool> {
        match self.connection.recv_response() {
            Ok(value) => match kind_of(&value).as_deref() {
                Some("message" | "smessage") => Ok(true),
                Some("sunsubscribe" | "unsubscribe") => Err(RedisError::from((
                    ErrorKind::Server(redis::ServerErrorKind::Moved),
                    "the server ended the subscription (slot moved)",
                ))),
                _ => Ok(false),
            },
            Err(e) if e.is_timeout() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The first element of a pub/sub reply (`message`, `ssubscribe`, ...).
fn kind_of(value: &Value) -> Option<String> {
    let items = match value {
        Value::Array(items) => items,
        Value::Push { kind, .. } => return Some(kind.to_string().to_ascii_lowercase()),
        _ => return None,
    };
    match items.first()? {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).to_ascii_lowercase()),
        Value::SimpleString(text) => Some(text.to_ascii_lowercase()),
        _ => None,
    }
}

fn uncovered(slot: u16) -> RedisError {
    RedisError::from((
        ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
        "no primary serves slot",
        slot.to_string(),
    ))
}

fn node_of(text: &str) -> Option<Node> {
    let (host, port) = text.rsplit_once(':')?;
    Some(Node {
        host: host.trim_start_matches('[').trim_end_matches(']').into(),
        port: port.parse().ok()?,
    })
}

/// `addr` moved to `node`, keeping plain or TLS and the TLS parameters.
fn with_host(addr: &ConnectionAddr, node: &Node) -> ConnectionAddr {
    match addr {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: node.host.clone(),
            port: node.port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(node.host.clone(), node.port),
    }
}

fn insecure_if(info: ConnectionInfo, insecure: bool) -> ConnectionInfo {
    match info.addr().clone() {
        ConnectionAddr::TcpTls {
            host,
            port,
            tls_params,
            ..
        } if insecure => info.set_addr(ConnectionAddr::TcpTls {
            host,
            port,
            insecure: true,
            tls_params,
        }),
        _ => info,
    }
}

fn warn_insecure_once() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "store.tls_insecure = true: Redis server certificates and host names are NOT checked; anyone on the network path can read and change the code table and the detectors' state"
        );
    }
}

fn certificates(settings: &StoreSettings) -> RedisResult<Option<TlsCertificates>> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|e| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "cannot read a TLS file",
                format!("{what} {}: {e}", path.display()),
            ))
        })
    };
    let root_cert = match &settings.tls_ca_file {
        Some(path) => Some(read(path, "store.tls_ca_file")?),
        None => None,
    };
    let client_tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read(cert, "store.tls_cert_file")?,
            client_key: read(key, "store.tls_key_file")?,
        }),
        _ => None,
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

/// The cluster slot of a key: CRC16 (XMODEM) of its hash tag (the part between the first `{`
/// and the next `}`, if not empty) or of the whole key, modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag_rule() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"promo:{codes}:current"), slot(b"codes"));
    }

    #[test]
    fn the_slot_map_finds_the_primary() {
        let node = |port| Node {
            host: "h".into(),
            port,
        };
        let map = SlotMap {
            ranges: vec![(0, 99, node(1)), (100, 16383, node(2))],
        };
        assert_eq!(map.primary(0), Some(&node(1)));
        assert_eq!(map.primary(99), Some(&node(1)));
        assert_eq!(map.primary(100), Some(&node(2)));
        assert_eq!(map.primary(16383), Some(&node(2)));
        assert_eq!(map.primaries(), vec![node(1), node(2)]);
        let gap = SlotMap {
            ranges: vec![(10, 20, node(1))],
        };
        assert_eq!(gap.primary(5), None);
        assert_eq!(gap.primary(21), None);
    }

    #[test]
    fn seeds_without_a_scheme_take_the_first_ones() {
        let settings = StoreSettings {
            redis_url: "redis://u:pw@10.0.0.1:7000, 10.0.0.2:7001".into(),
            redis_mode: RedisMode::Cluster,
            ..StoreSettings::default()
        };
        let endpoint = Endpoint::new(&settings).expect("parses");
        assert_eq!(endpoint.seeds.len(), 2);
        assert_eq!(
            endpoint.seeds[1].addr(),
            &ConnectionAddr::Tcp("10.0.0.2".into(), 7001)
        );
        assert_eq!(endpoint.seeds[1].redis_settings().password(), Some("pw"));
        assert!(!endpoint.shown().contains("pw"));
    }
}
