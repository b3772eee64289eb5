//! A worker following the code store while orders flow, on one node or a cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use promo_attribution::codes::CodeTable;
use promo_attribution::offline;
use promo_attribution::redis::store::{Keys, Store, VersionMeta};
use promo_attribution::settings::Settings;

use super::admin::strip_ansi;
use super::store::{
    codes, import_samples, key_connection, ok, order, produce, spawn_worker, store_sets,
    store_settings,
};
use super::{Names, field, read, read_settled, text, unique_prefix, wait_until};

/// Every conversion must be exactly what the offline engine decides for its order with the table
/// version the conversion names: a conversion made from half of an update would match neither.
pub fn assert_each_matches_its_version(
    url: &str,
    prefix: &str,
    orders: &BTreeMap<String, Vec<u8>>,
    conversions: &[Vec<u8>],
) {
    let mut tables: BTreeMap<String, CodeTable> = BTreeMap::new();
    let settings = Settings::default();
    for conversion in conversions {
        let version = field(conversion, "code_table_version");
        let table = tables.entry(version.clone()).or_insert_with(|| {
            let number =
                VersionMeta::version_number(&version).expect("store versions start with a number");
            let mut store = Store::connect(&store_settings(url, prefix)).expect("connect");
            let stored = store.load_version(number).expect("the version is kept");
            stored
                .snapshot()
                .expect("decodes")
                .build(&version, "test")
                .expect("builds")
        });
        let order_id = field(conversion, "order_id");
        let record = &orders[&order_id];
        let expected = offline::attribute_captured(record, "test", table, &settings)
            .expect("offline attribute");
        assert_eq!(
            text(conversion),
            text(expected.conversions.trim_ascii_end()),
            "order {order_id} with version {version}"
        );
    }
}

/// The store's version number in a `code_table_version` (`<number>-<fingerprint>`).
pub fn number(table_version: &str) -> &str {
    table_version.split('-').next().unwrap_or_default()
}

/// Imports the sample table into the store at `url`, runs a worker on it, and while orders
/// flow: a single-code edit (applied as a patch), a rollback, and a pointer moved without an
/// announcement (found by the poll). Every conversion matches its version offline, none is
/// repeated.
pub fn worker_follows_new_versions(url: &str, test: &str) {
    let prefix = unique_prefix(test);
    let names = Names::new(test);
    names.create_topics(2);
    import_samples(url, &prefix);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut worker = spawn_worker(
        &names,
        &store_sets(url, &prefix, &[]),
        &dir.path().join("w.log"),
    );

    let mut orders: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let send = |orders: &mut BTreeMap<String, Vec<u8>>, ids: Vec<String>| {
        let records: Vec<Vec<u8>> = ids.iter().map(|id| order(id, "anna10")).collect();
        for (id, record) in ids.iter().zip(&records) {
            orders.insert(id.clone(), record.clone());
        }
        produce(&names, &records);
    };
    let conversions_by_version = |expected: usize| {
        let records = read(&names.conversions, expected, Duration::from_secs(30));
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for record in &records {
            let payload = record.payload.as_deref().unwrap_or_default();
            seen.insert(
                field(payload, "order_id"),
                field(payload, "code_table_version"),
            );
        }
        (records, seen)
    };

    // Version 1: credited.
    send(
        &mut orders,
        (0..20).map(|i| format!("before-{i}")).collect(),
    );
    let (_, seen) = conversions_by_version(20);
    assert_eq!(seen.len(), 20, "log:\n{}", worker.log_tail());
    assert!(seen.values().all(|v| number(v) == "1"), "{seen:?}");

    // Expire the code while orders keep coming.
    let mut sent = 20;
    let producer = std::thread::scope(|scope| {
        let flow = scope.spawn(|| {
            let mut batch = Vec::new();
            for i in 0..30 {
                batch.push(format!("during-{i}"));
                std::thread::sleep(Duration::from_millis(20));
                if batch.len() == 5 {
                    let ids = std::mem::take(&mut batch);
                    let records: Vec<Vec<u8>> = ids.iter().map(|id| order(id, "anna10")).collect();
                    produce(&names, &records);
                }
            }
        });
        let out = ok(&codes(url, &prefix, &["expire", "ANNA10"]));
        flow.join().expect("producer thread");
        out
    });
    assert!(producer.contains("published version 2"), "{producer}");
    for i in 0..30 {
        let id = format!("during-{i}");
        orders.insert(id.clone(), order(&id, "anna10"));
    }
    sent += 30;

    // Once one conversion shows version 2, every order produced afterwards must too.
    assert!(
        wait_until(Duration::from_secs(20), || conversions_by_version(sent)
            .1
            .values()
            .any(|v| number(v) == "2")
            || {
                // Keep orders coming until the new version shows, in case the flow ended first.
                let id = format!("probe-{sent}");
                send(&mut orders, vec![id]);
                sent += 1;
                false
            }),
        "no conversion with version 2; log:\n{}",
        worker.log_tail()
    );
    let log = strip_ansi(&std::fs::read_to_string(&worker.log).unwrap_or_default());
    assert!(
        log.contains(" patched_rows=1") && log.contains("version=2-"),
        "a single-code edit is applied without a reload:\n{log}"
    );
    let after: Vec<String> = (0..20).map(|i| format!("after-{i}")).collect();
    send(&mut orders, after.clone());
    sent += 20;
    let (_, seen) = conversions_by_version(sent);
    assert_eq!(
        seen.len(),
        sent,
        "every order converted once; log:\n{}",
        worker.log_tail()
    );
    for id in &after {
        assert_eq!(
            number(&seen[id]),
            "2",
            "{id} was produced after version 2 was in force"
        );
    }

    // Until `version` is in force, keep sending single orders; true once one was decided with it.
    let mut probes = 0;
    let mut wait_for_version =
        |orders: &mut BTreeMap<String, Vec<u8>>, sent: &mut usize, version: &str| {
            wait_until(Duration::from_secs(10), || {
                let id = format!("probe-{version}-{probes}");
                probes += 1;
                send(orders, vec![id.clone()]);
                *sent += 1;
                std::thread::sleep(Duration::from_millis(100));
                conversions_by_version(*sent)
                    .1
                    .get(&id)
                    .is_some_and(|v| number(v) == version)
            })
        };

    // Rollback: version 3 carries version 1's content, and orders are credited as before.
    let rolled = ok(&codes(url, &prefix, &["rollback", "1"]));
    assert!(rolled.contains("published version 3"), "{rolled}");
    assert!(
        wait_for_version(&mut orders, &mut sent, "3"),
        "the rollback never took effect; log:\n{}",
        worker.log_tail()
    );

    // A lost announcement: the pointer moves to version 2 without a PUBLISH; the poll finds it.
    let pointer = Keys::new(&prefix).current();
    let mut redis = key_connection(url, &pointer);
    let _: () = ::redis::cmd("SET")
        .arg(&pointer)
        .arg("2")
        .query(&mut redis)
        .expect("move the pointer");
    assert!(
        wait_for_version(&mut orders, &mut sent, "2"),
        "the worker never noticed the unannounced version; log:\n{}",
        worker.log_tail()
    );

    let (records, _) = conversions_by_version(sent);
    let payloads: Vec<Vec<u8>> = records.iter().filter_map(|r| r.payload.clone()).collect();
    assert_each_matches_its_version(url, &prefix, &orders, &payloads);
    let settled = read_settled(&names.conversions, sent);
    assert_eq!(settled.len(), sent, "no duplicate conversions");
    assert!(
        worker
            .terminate(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
}
