//! Values that must not leave the process: the HMAC key, the Redis URL's password and the
//! librdkafka properties librdkafka itself treats as sensitive. Their `Debug`, `Display` and
//! `Serialize` redact, so a `{:?}` of the settings, a log line or `--check-config` cannot print
//! them; the real value is reached only through an explicit `expose()`.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize, Serializer};

pub const REDACTED: &str = "<redacted>";

/// A secret string. Empty stays visibly empty (an unset secret is worth seeing).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn shown(&self) -> &'static str {
        if self.0.is_empty() { "" } else { REDACTED }
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.shown())
    }
}

/// A Redis URL: shown with its user information replaced, so the host and database stay
/// visible for diagnosis while the password does not.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn redacted(&self) -> String {
        redacted_url(&self.0)
    }
}

impl From<&str> for RedisUrl {
    fn from(value: &str) -> Self {
        RedisUrl(value.to_string())
    }
}

impl From<String> for RedisUrl {
    fn from(value: String) -> Self {
        RedisUrl(value)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

/// The URL with any user information (`user:password@`) replaced, for logs and messages. It
/// does not rely on the URL being well formed: whatever precedes the last `@` before the
/// host part is hidden, with or without a `://`, so a mistyped URL is not echoed in clear.
pub fn redacted_url(url: &str) -> String {
    // A cluster's seed list: each node's URL on its own, so every host stays visible.
    if url.contains(',') {
        return url
            .split(',')
            .map(|node| redacted_node_url(node.trim()))
            .collect::<Vec<_>>()
            .join(",");
    }
    redacted_node_url(url)
}

fn redacted_node_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(end) => (&url[..end + 3], &url[end + 3..]),
        None => ("", url),
    };
    // The authority ends at the first '/', '?' or '#'; a password may contain any of them
    // only percent-encoded, but a malformed one may not be, so the last '@' anywhere wins.
    match rest.rfind('@') {
        Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
        None if scheme.is_empty() && rest.contains(':') && !looks_like_host_port(rest) => {
            // No scheme and no '@': cannot tell a password from a host; show nothing.
            REDACTED.to_string()
        }
        None => url.to_string(),
    }
}

/// `host:port` or `host:port/db`, the one scheme-less shape safe to show.
fn looks_like_host_port(text: &str) -> bool {
    let authority = text.split('/').next().unwrap_or(text);
    match authority.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// librdkafka's own sensitive properties: those flagged `_RK_SENSITIVE` in `rdkafka_conf.c`
/// (librdkafka redacts exactly these in its own config dumps). Taken from librdkafka 2.x.
pub const SENSITIVE_PROPERTIES: [&str; 13] = [
    "ssl.key.location",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.ca.pem",
    "ssl.keystore.password",
    "sasl.username",
    "sasl.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.assertion.private.key.file",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
];

/// Whether a librdkafka property's value is hidden. librdkafka's list decides; a property it
/// does not know (a newer librdkafka, or a typo) is also hidden when its name says password,
/// secret or key, since showing one by mistake costs more than hiding one.
pub fn is_sensitive_property(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    SENSITIVE_PROPERTIES.contains(&name.as_str())
        || [
            "password",
            "secret",
            "passphrase",
            ".key",
            "token",
            "credential",
        ]
        .iter()
        .any(|s| name.contains(s))
}

/// Whether a dotted settings key holds a secret, so messages about it never show its value.
pub fn is_secret_key(dotted: &str) -> bool {
    match dotted {
        "store.redis_url"
        | "detectors.customer_hmac_key"
        | "detectors.customer_hmac_previous_key" => true,
        _ => ["kafka.common.", "kafka.consumer.", "kafka.producer."]
            .iter()
            .any(|p| dotted.strip_prefix(p).is_some_and(is_sensitive_property)),
    }
}

/// librdkafka properties (`kafka.common`, `.consumer`, `.producer`): an ordinary map whose
/// `Debug` and `Serialize` hide the values of sensitive properties.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Properties(BTreeMap<String, String>);

impl Properties {
    /// The entries as they will be shown: sensitive values replaced.
    pub fn redacted(&self) -> BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| {
                let shown = if is_sensitive_property(k) {
                    REDACTED
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect()
    }
}

impl Deref for Properties {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl From<BTreeMap<String, String>> for Properties {
    fn from(map: BTreeMap<String, String>) -> Self {
        Properties(map)
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Properties {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        Properties(
            iter.into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

impl Serialize for Properties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.redacted().serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_display_and_serialize_hide_secrets() {
        let key = Secret::from("hunter2-hunter2-hunter2");
        assert_eq!(format!("{key:?}"), "\"<redacted>\"");
        assert_eq!(key.to_string(), REDACTED);
        assert_eq!(key.expose(), "hunter2-hunter2-hunter2");
        let url = RedisUrl::from("redis://user:hunter2@host:6379/0");
        assert!(!format!("{url:?} {url}").contains("hunter2"));
        let props: Properties = [
            ("sasl.oauthbearer.config", "principal=admin secret=hunter2"),
            ("security.protocol", "SASL_SSL"),
        ]
        .into_iter()
        .collect();
        let debug = format!("{props:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("SASL_SSL"),
            "{debug}"
        );
    }

    #[test]
    fn urls_are_redacted_even_when_malformed() {
        assert_eq!(
            redacted_url("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redacted_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redacted_url("rediss://u:secret@a:7000, b:7001,rediss://u:secret@c:7002"),
            "rediss://***@a:7000,b:7001,rediss://***@c:7002"
        );
        assert_eq!(redacted_url("redis//user:secret@host"), "***@host");
        assert_eq!(redacted_url("user:secret@host:6379"), "***@host:6379");
        assert_eq!(redacted_url("rediss:/:p@ss@word@host"), "***@host");
        assert_eq!(redacted_url("host:6379/0"), "host:6379/0");
        assert_eq!(redacted_url("default:hunter2"), REDACTED);
    }

    #[test]
    fn every_librdkafka_sensitive_property_is_hidden() {
        for name in SENSITIVE_PROPERTIES {
            assert!(is_sensitive_property(name), "{name}");
        }
        assert!(!is_sensitive_property("security.protocol"));
        assert!(!is_sensitive_property("sasl.mechanism"));
        assert!(is_secret_key("kafka.common.sasl.oauthbearer.config"));
        assert!(is_secret_key("store.redis_url"));
        assert!(!is_secret_key("kafka.brokers"));
    }
}
