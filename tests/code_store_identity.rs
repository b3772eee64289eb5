//! One name per table content: the store's version numbers are not enough, because a store that
//! lost its keys and was imported again (or was restored from an older backup) hands the same
//! numbers out again. These tests wipe and re-import a real store under their own key prefix and
//! check that the name outputs carry, and the table a running worker holds, follow the content.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use promo_attribution::redis::store::{Keys, Store, StoreError, VersionMeta};
use support::store::{
    codes, import_samples, ok, order, produce, redis_connection, spawn_worker, store_sets,
    store_settings,
};
use support::{Names, codes_csv, field, partners_csv, read, redis_url, unique_prefix, wait_until};

/// Removes every key of the store under `prefix`, as a flushed or replaced Redis would.
fn wipe(url: &str, prefix: &str) {
    let mut connection = redis_connection(url);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut connection)
        .expect("list the store's keys");
    assert!(
        !keys.is_empty(),
        "the store under {prefix} has keys to wipe"
    );
    let () = redis::cmd("UNLINK")
        .arg(&keys)
        .query(&mut connection)
        .expect("wipe the store");
}

/// The sample codes with ANNA10 owned by partner 2002 instead of 2001.
fn samples_with_anna10_moved(dir: &std::path::Path) -> String {
    let original = std::fs::read_to_string(codes_csv()).expect("read the sample codes");
    let moved = original.replace("ANNA10,1001,2001,", "ANNA10,1001,2002,");
    assert_ne!(
        moved, original,
        "the sample codes have the ANNA10 row this test moves"
    );
    let path = dir.join("codes.csv");
    std::fs::write(&path, moved).expect("write the changed codes");
    path.display().to_string()
}

fn import(url: &str, prefix: &str, codes_path: &str) -> String {
    let partners_path = partners_csv().display().to_string();
    ok(&codes(
        url,
        prefix,
        &["import", codes_path, "--partners", &partners_path],
    ))
}

fn pointer(url: &str, prefix: &str) -> promo_attribution::redis::store::Pointer {
    Store::connect(&store_settings(url, prefix))
        .expect("connect to the test Redis")
        .pointer()
        .expect("read the pointer")
        .expect("a version is in force")
}

#[test]
fn every_version_records_its_content_and_the_store_generation() {
    let url = redis_url();
    let prefix = unique_prefix("identity");
    let dir = tempfile::tempdir().expect("temp dir");
    import_samples(url, &prefix);
    let first = pointer(url, &prefix);
    let mut store = Store::connect(&store_settings(url, &prefix)).expect("connect");
    let v1 = store.load_version(1).expect("version 1");
    assert_eq!(first.fingerprint.as_deref(), Some(v1.fingerprint.as_str()));
    assert_eq!(v1.meta.fingerprint, first.fingerprint);
    assert_eq!(v1.meta.generation, first.generation);
    assert_eq!(
        v1.table_version(),
        format!("1-{}", v1.fingerprint),
        "outputs name the number and the content"
    );

    // An edit keeps the generation and names new content; a rollback names the old content again.
    ok(&codes(url, &prefix, &["expire", "ANNA10"]));
    let second = pointer(url, &prefix);
    assert_eq!(second.version, 2);
    assert_eq!(second.generation, first.generation);
    assert_ne!(second.fingerprint, first.fingerprint);
    ok(&codes(url, &prefix, &["rollback", "1"]));
    let third = pointer(url, &prefix);
    assert_eq!(
        (third.version, &third.fingerprint),
        (3, &first.fingerprint),
        "version 3 holds version 1's content"
    );

    // Content changed in Redis behind the store's back is refused, not served.
    let key = Keys::new(&prefix).version(1);
    let mut connection = redis_connection(url);
    let chunk: Vec<u8> = redis::cmd("HGET")
        .arg(&key)
        .arg("codes:0")
        .query(&mut connection)
        .expect("read a chunk");
    let tampered = String::from_utf8(chunk)
        .expect("CSV text")
        .replace("ANNA10,1001,2001,", "ANNA10,1001,2002,");
    let () = redis::cmd("HSET")
        .arg(&key)
        .arg("codes:0")
        .arg(tampered)
        .query(&mut connection)
        .expect("tamper with the chunk");
    match store.load_version(1) {
        Err(StoreError::Corrupt { version: 1, reason }) => {
            assert!(reason.contains("fingerprint"), "{reason}")
        }
        other => panic!(
            "a tampered version must be refused, got {:?}",
            other.map(|v| v.table_version())
        ),
    }

    // Wiped and imported again: numbers restart, the generation and (for new content) the
    // name do not repeat; the same content imported again gets the same name.
    wipe(url, &prefix);
    let moved = samples_with_anna10_moved(dir.path());
    let out = import(url, &prefix, &moved);
    assert!(out.contains("published version 1"), "{out}");
    let again = pointer(url, &prefix);
    assert_eq!(again.version, 1);
    assert_ne!(again.generation, first.generation, "a new store life");
    assert_ne!(again.fingerprint, first.fingerprint, "other content");
    wipe(url, &prefix);
    import_samples(url, &prefix);
    assert_eq!(
        pointer(url, &prefix).fingerprint,
        first.fingerprint,
        "the name follows the content, not the store's history"
    );
    wipe(url, &prefix);
}

/// The defect this guards against: a worker holding version 1 kept deciding with it after the
/// store was wiped and a different table was imported as version 1 again, while a fresh worker
/// used the new one, and both stamped `code_table_version` "1".
#[test]
fn a_running_worker_follows_a_wiped_store_reimported_under_the_same_number() {
    let url = redis_url();
    let prefix = unique_prefix("reimport");
    let dir = tempfile::tempdir().expect("temp dir");
    let names = Names::new("reimport");
    names.create_topics(1);
    import_samples(url, &prefix);
    let before = pointer(url, &prefix);
    let mut worker = spawn_worker(
        &names,
        &store_sets(url, &prefix, &[]),
        &dir.path().join("w.log"),
    );

    let mut sent = 0;
    let mut send = |names: &Names| {
        let id = format!("o-{sent}");
        sent += 1;
        produce(names, &[order(&id, "anna10")]);
        sent
    };
    let total = send(&names);
    let first = read(&names.conversions, total, Duration::from_secs(30));
    assert_eq!(first.len(), 1, "log:\n{}", worker.log_tail());
    let payload = first[0].payload.as_deref().unwrap_or_default();
    assert_eq!(field(payload, "partner_id"), "2001");
    let old_name = field(payload, "code_table_version");
    assert_eq!(
        old_name,
        format!("1-{}", before.fingerprint.clone().unwrap_or_default())
    );

    wipe(url, &prefix);
    let moved = samples_with_anna10_moved(dir.path());
    let out = import(url, &prefix, &moved);
    assert!(out.contains("published version 1"), "{out}");
    let after = pointer(url, &prefix);
    let new_name = format!("1-{}", after.fingerprint.clone().unwrap_or_default());
    assert_ne!(new_name, old_name);

    // Orders keep coming until one is decided with the re-imported table.
    let mut last: Vec<String> = Vec::new();
    let followed = wait_until(Duration::from_secs(20), || {
        let total = send(&names);
        let records = read(&names.conversions, total, Duration::from_secs(10));
        last = records
            .iter()
            .map(|r| {
                let payload = r.payload.as_deref().unwrap_or_default();
                format!(
                    "{} {}",
                    field(payload, "code_table_version"),
                    field(payload, "partner_id")
                )
            })
            .collect();
        last.iter().any(|line| line == &format!("{new_name} 2002"))
    });
    assert!(
        followed,
        "the worker never used the re-imported table; decisions: {last:?}\nlog:\n{}",
        worker.log_tail()
    );
    // No decision names the new content with the old owner, or the old content with the new.
    for line in &last {
        assert!(
            line == &format!("{old_name} 2001") || line == &format!("{new_name} 2002"),
            "a decision whose name and content disagree: {line}"
        );
    }
    assert_eq!(
        VersionMeta::version_number(&new_name),
        Some(1),
        "the number stays readable"
    );
    assert!(
        worker
            .terminate(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    wipe(url, &prefix);
}
