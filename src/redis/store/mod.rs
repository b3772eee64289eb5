//! The code table in Redis: immutable, numbered versions and a pointer to the current one.
//!
//! Layout, for key prefix `P` (default `promo:`); every key carries the hash tag `{codes}` after
//! the prefix (or the prefix's own tag, if it has one), so on Redis Cluster they share one slot
//! and the publish script may touch them together:
//!
//! | key                  | type   | content                                                      |
//! |----------------------|--------|--------------------------------------------------------------|
//! | `P{codes}:seq`       | string | last version number handed out (`INCR`)                      |
//! | `P{codes}:current`   | string | the version in force                                         |
//! | `P{codes}:current_fingerprint` | string | the content fingerprint of the version in force    |
//! | `P{codes}:generation` | string | random id of this store's life, made by its first publish   |
//! | `P{codes}:history`   | list   | one JSON [`VersionMeta`] per published version, newest first |
//! | `P{codes}:v:<N>`     | hash   | `meta`, `published_ms` (Redis clock), `partners` (CSV), `programs` (JSON), `codes:<i>` (CSV chunks) |
//!
//! and the pub/sub channel `P{codes}:announce`, which carries each new version number (a
//! sharded channel, `SPUBLISH`, on a Redis Cluster: it lives in the store's slot).
//!
//! Version numbers alone do not name a content: a store that lost its keys and was imported
//! again starts at version 1 again, and one restored from an older backup hands out numbers it
//! had already used. So every version records the fingerprint of its content (checked on each
//! load) and the generation it was published in; the pointer carries the current fingerprint,
//! and workers compare both with what they hold, reloading when the number is the same but the
//! content is not. Outputs name the table as `<version>-<fingerprint>`.
//!
//! A version is written under its own key first (with an expiry, so an interrupted upload
//! leaves nothing behind), then one script checks that the pointer still holds the version the
//! change was made from, clears the expiry, moves the pointer, appends the history entry and
//! announces the version. A reader therefore sees the old version or the new one, never a mix.
//! Old versions are removed with `UNLINK` once they are neither among the last `keep_versions`
//! nor within `grace_secs` of being replaced; a version is a hash of a few dozen large values,
//! so even `DEL` would free it at once.

pub mod snapshot;

use std::time::Duration;

use redis::{Commands, Connection, Script};

use crate::ids::content_fingerprint;
use crate::redis::connect::{Endpoint, Subscription};
use crate::settings::StoreSettings;
pub use snapshot::{Encoded, Snapshot, VersionMeta};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis at {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error(
        "the code table changed while this change was prepared (now version {current}, expected {expected}); nothing was written"
    )]
    Conflict { current: String, expected: String },
    #[error("version {0} is not in the store (never published, or removed after keep_versions)")]
    MissingVersion(u64),
    #[error("stored version {version} is unreadable: {reason}")]
    Corrupt { version: u64, reason: String },
}

/// How long a staged, unpublished version survives an interrupted upload.
const STAGING_TTL_SECS: u64 = 3600;
/// History entries kept for `codes history`.
const HISTORY_LENGTH: isize = 1000;

const PUBLISH: &str = r#"
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then
    return redis.error_reply('CONFLICT ' .. (current or 'none'))
end
local generation = redis.call('GET', KEYS[4])
if generation and generation ~= ARGV[6] then
    return redis.error_reply('CONFLICT generation ' .. generation)
end
if redis.call('EXISTS', KEYS[3]) == 0 then
    return redis.error_reply('NOSTAGED version ' .. ARGV[2] .. ' expired before it was published')
end
redis.call('PERSIST', KEYS[3])
local now = redis.call('TIME')
redis.call('HSET', KEYS[3], 'published_ms', tostring(now[1] * 1000 + math.floor(now[2] / 1000)))
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[5], ARGV[7])
if not generation then
    redis.call('SET', KEYS[4], ARGV[6])
end
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]) - 1)
redis.call(ARGV[8], ARGV[4], ARGV[2])
return ARGV[2]
"#;

/// Key names of one store.
#[derive(Debug, Clone)]
pub struct Keys {
    base: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        // A prefix with its own hash tag already pins the slot; a second tag would be ignored.
        let base = if has_hash_tag(prefix) {
            prefix.to_string()
        } else {
            format!("{prefix}{{codes}}:")
        };
        Keys { base }
    }
    pub fn seq(&self) -> String {
        format!("{}seq", self.base)
    }
    pub fn current(&self) -> String {
        format!("{}current", self.base)
    }
    pub fn current_fingerprint(&self) -> String {
        format!("{}current_fingerprint", self.base)
    }
    pub fn generation(&self) -> String {
        format!("{}generation", self.base)
    }
    pub fn history(&self) -> String {
        format!("{}history", self.base)
    }
    pub fn version(&self, version: u64) -> String {
        format!("{}v:{version}", self.base)
    }
    pub fn channel(&self) -> String {
        format!("{}announce", self.base)
    }
}

/// What the pointer says: the version in force, the fingerprint of its content and the store's
/// generation (`None` in a store last published by a release that did not record them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    pub version: u64,
    pub fingerprint: Option<String>,
    pub generation: Option<String>,
}

/// A stored version, read back.
pub struct StoredVersion {
    pub meta: VersionMeta,
    /// The content's fingerprint: the recorded one (verified against the bytes read), or for a
    /// version published without one, computed from them.
    pub fingerprint: String,
    pub codes_csv: Vec<u8>,
    pub partners_csv: Vec<u8>,
    pub programs_json: Vec<u8>,
}

impl StoredVersion {
    pub fn origin(&self) -> String {
        format!("store version {}", self.meta.version)
    }

    /// The `code_table_version` of decisions made with this version.
    pub fn table_version(&self) -> String {
        VersionMeta::table_version(self.meta.version, &self.fingerprint)
    }

    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Snapshot::decode(
            self.codes_csv.as_slice(),
            &self.partners_csv,
            &self.programs_json,
            &self.origin(),
        )
        .map_err(|problems| StoreError::Corrupt {
            version: self.meta.version,
            reason: problems.to_string(),
        })
    }
}

/// One connection to the store.
pub struct Store {
    url: String,
    keys: Keys,
    connection: Connection,
    /// On a cluster, announcements go out by sharded pub/sub.
    cluster: bool,
}

impl Store {
    /// Connects to the node that holds the store: the one node, or on a cluster the primary of
    /// the store's slot (all its keys share one hash tag).
    pub fn connect(settings: &StoreSettings) -> Result<Store, StoreError> {
        let url = settings.redis_url.redacted();
        let wrap = |source| StoreError::Redis {
            url: url.clone(),
            source,
        };
        let endpoint = Endpoint::new(settings).map_err(wrap)?;
        let keys = Keys::new(&settings.key_prefix);
        let connection = endpoint.connect_for(&keys.current()).map_err(wrap)?;
        Ok(Store {
            url,
            keys,
            connection,
            cluster: endpoint.is_cluster(),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn redis(&self, source: redis::RedisError) -> StoreError {
        StoreError::Redis {
            url: self.url.clone(),
            source,
        }
    }

    /// A failed read of `version`'s keys: a key of the wrong type or a value the client cannot
    /// convert is the content's fault, not Redis's, so the version is refused (and counted)
    /// rather than retried as an outage forever.
    fn read_failure(&self, version: u64, key: &str, source: redis::RedisError) -> StoreError {
        let content = source.code() == Some("WRONGTYPE")
            || source.kind() == redis::ErrorKind::UnexpectedReturnType;
        if content {
            StoreError::Corrupt {
                version,
                reason: format!("{key}: {source}"),
            }
        } else {
            self.redis(source)
        }
    }

    /// The version in force, `None` before the first publish.
    pub fn current_version(&mut self) -> Result<Option<u64>, StoreError> {
        let key = self.keys.current();
        let value: Option<String> = self
            .connection
            .get(&key)
            .map_err(|e| self.read_failure(0, &key, e))?;
        match value {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| StoreError::Corrupt {
                version: 0,
                reason: format!("{key} holds {text:?}, not a version number"),
            }),
        }
    }

    /// The pointer with the current fingerprint and the generation, in one round trip; `None`
    /// before the first publish.
    pub fn pointer(&mut self) -> Result<Option<Pointer>, StoreError> {
        let keys = [
            self.keys.current(),
            self.keys.current_fingerprint(),
            self.keys.generation(),
        ];
        let (current, fingerprint, generation): (Option<String>, Option<String>, Option<String>) =
            redis::cmd("MGET")
                .arg(&keys)
                .query(&mut self.connection)
                .map_err(|e| self.redis(e))?;
        let Some(text) = current else {
            return Ok(None);
        };
        let version = text.parse().map_err(|_| StoreError::Corrupt {
            version: 0,
            reason: format!("{} holds {text:?}, not a version number", keys[0]),
        })?;
        Ok(Some(Pointer {
            version,
            fingerprint,
            generation,
        }))
    }

    /// The store's generation; `None` before the first publish.
    pub fn generation(&mut self) -> Result<Option<String>, StoreError> {
        let key = self.keys.generation();
        self.connection.get(&key).map_err(|e| self.redis(e))
    }

    /// What a version says about itself, without its content.
    pub fn load_meta(&mut self, version: u64) -> Result<VersionMeta, StoreError> {
        let key = self.keys.version(version);
        // Read as bytes and parsed here: every field is the store's content, which a typo, a
        // bad restore or a hostile write can make anything at all.
        let (meta, published_ms): (Option<Vec<u8>>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(&key)
            .arg("meta")
            .arg("published_ms")
            .query(&mut self.connection)
            .map_err(|e| self.read_failure(version, &key, e))?;
        let Some(json) = meta else {
            return Err(StoreError::MissingVersion(version));
        };
        let corrupt = |reason: String| StoreError::Corrupt { version, reason };
        let mut meta: VersionMeta =
            serde_json::from_slice(&json).map_err(|e| corrupt(format!("meta: {e}")))?;
        if meta.version != version {
            // The meta's number is what the CLI builds on and reports; one naming another
            // version would have the next change made from the wrong base.
            return Err(corrupt(format!(
                "meta names version {} under {key}",
                meta.version
            )));
        }
        meta.published_ms = published_ms
            .map(|raw| {
                std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|text| text.parse::<i64>().ok())
                    .ok_or_else(|| {
                        corrupt(format!(
                            "published_ms holds {:?}, not a Unix time in milliseconds",
                            String::from_utf8_lossy(&raw)
                        ))
                    })
            })
            .transpose()?;
        Ok(meta)
    }

    pub fn load_version(&mut self, version: u64) -> Result<StoredVersion, StoreError> {
        let key = self.keys.version(version);
        let meta = self.load_meta(version)?;
        // The chunk count comes from the stored meta: a corrupt or hostile value must not size
        // an allocation, so it is checked against the fields the hash really has (meta,
        // partners, programs, one per chunk, and published_ms once the version is published).
        let fields_held: usize = self
            .connection
            .hlen(&key)
            .map_err(|e| self.read_failure(version, &key, e))?;
        if meta.chunks > fields_held.saturating_sub(3) {
            return Err(StoreError::Corrupt {
                version,
                reason: format!(
                    "meta names {} chunks but the version holds {fields_held} fields",
                    meta.chunks
                ),
            });
        }
        let mut fields: Vec<String> = vec!["partners".into(), "programs".into()];
        fields.extend((0..meta.chunks).map(|i| format!("codes:{i}")));
        let values: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(&key)
            .arg(&fields)
            .query(&mut self.connection)
            .map_err(|e| self.read_failure(version, &key, e))?;
        let mut values = values.into_iter();
        let mut next = |field: &str| {
            values.next().flatten().ok_or_else(|| StoreError::Corrupt {
                version,
                reason: format!("field {field} is missing (removed while being read?)"),
            })
        };
        let partners_csv = next("partners")?;
        let programs_json = next("programs")?;
        let mut chunks = Vec::with_capacity(meta.chunks);
        for i in 0..meta.chunks {
            chunks.push(next(&format!("codes:{i}"))?);
        }
        let codes = chunks.iter().map(Vec::as_slice).collect::<Vec<_>>();
        let fingerprint = content_fingerprint(&[&codes, &[&partners_csv], &[&programs_json]]);
        if let Some(recorded) = &meta.fingerprint
            && *recorded != fingerprint
        {
            return Err(StoreError::Corrupt {
                version,
                reason: format!(
                    "its content has fingerprint {fingerprint}, not the {recorded} it was published with (changed or damaged in Redis)"
                ),
            });
        }
        let codes_csv = chunks.concat();
        Ok(StoredVersion {
            meta,
            fingerprint,
            codes_csv,
            partners_csv,
            programs_json,
        })
    }

    /// The version in force with its content; `None` before the first publish. A pointer that
    /// moves while reading is followed.
    pub fn load_current(&mut self) -> Result<Option<StoredVersion>, StoreError> {
        for _ in 0..3 {
            let Some(version) = self.current_version()? else {
                return Ok(None);
            };
            match self.load_version(version) {
                Err(StoreError::MissingVersion(_)) => continue,
                other => return other.map(Some),
            }
        }
        Err(StoreError::Corrupt {
            version: 0,
            reason: "the current version kept disappearing while being read".into(),
        })
    }

    /// Writes `snapshot` as a new version made from `base`, and makes it current, unless the
    /// pointer moved away from `base` meanwhile ([`StoreError::Conflict`]).
    pub fn publish(
        &mut self,
        snapshot: &Snapshot,
        base: Option<u64>,
        mut meta: VersionMeta,
    ) -> Result<VersionMeta, StoreError> {
        let encoded = snapshot.encode().map_err(|e| StoreError::Corrupt {
            version: 0,
            reason: format!("cannot encode: {e}"),
        })?;
        let version: u64 = self
            .connection
            .incr(self.keys.seq(), 1)
            .map_err(|e| self.redis(e))?;
        meta.version = version;
        meta.base = base;
        meta.codes = snapshot.entries.len();
        meta.partners = snapshot.partners.len();
        meta.programs = snapshot.programs.len();
        meta.chunks = encoded.code_chunks.len();
        let fingerprint = encoded.fingerprint();
        meta.fingerprint = Some(fingerprint.clone());
        let generation = match self.generation()? {
            Some(generation) => generation,
            None => new_generation(),
        };
        meta.generation = Some(generation.clone());
        let meta_json = serde_json::to_string(&meta).map_err(|e| StoreError::Corrupt {
            version,
            reason: e.to_string(),
        })?;
        let key = self.keys.version(version);
        self.stage(&key, &encoded, &meta_json)?;
        let history_entry = serde_json::to_string(&VersionMeta {
            delta: Vec::new(),
            ..meta.clone()
        })
        .map_err(|e| StoreError::Corrupt {
            version,
            reason: e.to_string(),
        })?;
        let expected = base.map(|v| v.to_string()).unwrap_or_default();
        let published: Result<String, redis::RedisError> = Script::new(PUBLISH)
            .key(self.keys.current())
            .key(self.keys.history())
            .key(&key)
            .key(self.keys.generation())
            .key(self.keys.current_fingerprint())
            .arg(&expected)
            .arg(version)
            .arg(history_entry)
            .arg(self.keys.channel())
            .arg(HISTORY_LENGTH)
            .arg(&generation)
            .arg(&fingerprint)
            .arg(if self.cluster { "SPUBLISH" } else { "PUBLISH" })
            .invoke(&mut self.connection);
        match published {
            Ok(_) => Ok(meta),
            Err(e) if e.to_string().contains("CONFLICT") => {
                let _: Result<(), _> = self.connection.unlink(&key);
                let current = self
                    .current_version()?
                    .map_or("none".into(), |v| v.to_string());
                Err(StoreError::Conflict {
                    current,
                    expected: base.map_or("none".into(), |v| v.to_string()),
                })
            }
            Err(e) => Err(self.redis(e)),
        }
    }

    fn stage(&mut self, key: &str, encoded: &Encoded, meta_json: &str) -> Result<(), StoreError> {
        // Field by field: one command per ~5 MB chunk keeps every request well under Redis's
        // 512 MB protocol limit and the client's write timeout.
        let mut pipe = redis::pipe();
        pipe.hset(key, "meta", meta_json)
            .ignore()
            .hset(key, "partners", &encoded.partners)
            .ignore()
            .hset(key, "programs", &encoded.programs)
            .ignore()
            .expire(key, STAGING_TTL_SECS as i64)
            .ignore();
        pipe.query::<()>(&mut self.connection)
            .map_err(|e| self.redis(e))?;
        for (i, chunk) in encoded.code_chunks.iter().enumerate() {
            let _: () = self
                .connection
                .hset(key, format!("codes:{i}"), chunk)
                .map_err(|e| self.redis(e))?;
        }
        Ok(())
    }

    /// Published versions, newest first.
    pub fn history(&mut self, limit: usize) -> Result<Vec<VersionMeta>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let entries: Vec<String> = self
            .connection
            .lrange(self.keys.history(), 0, limit.saturating_sub(1) as isize)
            .map_err(|e| self.redis(e))?;
        entries
            .iter()
            .map(|json| {
                serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
                    version: 0,
                    reason: format!("history entry: {e}"),
                })
            })
            .collect()
    }

    pub fn version_exists(&mut self, version: u64) -> Result<bool, StoreError> {
        self.connection
            .exists(self.keys.version(version))
            .map_err(|e| self.redis(e))
    }

    /// Removes the content of versions beyond the newest `keep` that were replaced more than
    /// `grace` ago. Returns the versions removed.
    pub fn prune(
        &mut self,
        keep: usize,
        grace: Duration,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<u64>, StoreError> {
        let history = self.history(HISTORY_LENGTH as usize)?;
        let current = self.current_version()?;
        let mut removed = Vec::new();
        // history[i - 1] replaced history[i].
        for i in keep.max(1)..history.len() {
            let version = history[i].version;
            let replaced_at = chrono::DateTime::parse_from_rfc3339(&history[i - 1].published_at)
                .map(|t| t.with_timezone(&chrono::Utc));
            let old_enough = replaced_at
                .is_ok_and(|t| now.signed_duration_since(t).to_std().unwrap_or_default() >= grace);
            if Some(version) == current || !old_enough {
                continue;
            }
            let unlinked: i64 = self
                .connection
                .unlink(self.keys.version(version))
                .map_err(|e| self.redis(e))?;
            if unlinked > 0 {
                removed.push(version);
            }
        }
        Ok(removed)
    }

    /// Waits for the announcements of new versions: plain pub/sub on a single node, sharded
    /// pub/sub (to the primary of the store's slot) on a cluster, as the publish script sends
    /// them. `tick` bounds each wait.
    pub fn subscribe(settings: &StoreSettings, tick: Duration) -> Result<Subscription, StoreError> {
        let endpoint = Endpoint::new(settings).map_err(|source| StoreError::Redis {
            url: settings.redis_url.redacted(),
            source,
        })?;
        let channel = Keys::new(&settings.key_prefix).channel();
        Subscription::open(&endpoint, &channel, tick).map_err(|source| StoreError::Redis {
            url: endpoint.shown().to_string(),
            source,
        })
    }
}

/// A fresh generation id. It only has to differ from other generations of the same store, so
/// the clock, the process and a per-process counter are enough; it is not a secret.
fn new_generation() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static MADE: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let material = format!(
        "{nanos}/{}/{}",
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed)
    );
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(material.as_bytes()))
}

/// Redis Cluster's rule: the key's slot comes from the part between the first `{` and the next
/// `}`, if that part is not empty.
fn has_hash_tag(key: &str) -> bool {
    key.find('{')
        .is_some_and(|open| key[open + 1..].find('}').is_some_and(|length| length > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = Keys::new("promo:");
        assert_eq!(keys.current(), "promo:{codes}:current");
        assert_eq!(keys.version(7), "promo:{codes}:v:7");
        let tagged = Keys::new("{tenant-a}:promo:");
        assert_eq!(tagged.history(), "{tenant-a}:promo:history");
        // Not tags by Redis's rule, so the store adds its own.
        assert_eq!(Keys::new("{}a:").current(), "{}a:{codes}:current");
        assert_eq!(Keys::new("}a{:").current(), "}a{:{codes}:current");
    }
}
