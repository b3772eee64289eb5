//! The Redis code store end to end: the `codes` admin CLI against a real Redis, and a worker
//! following the store while orders flow through the real broker. Every test has its own key
//! prefix (and topics), so they run in parallel with each other and with the other suites.

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use promo_attribution::redis::store::{Keys, Store, StoreError};
use support::admin::{admin_address, metric_value};
use support::redis::PrivateRedis;
use support::store::{
    codes, current_version, import_samples, ok, order, produce, redis_connection, spawn_worker,
    store_sets, store_settings,
};
use support::{
    Names, codes_csv, field, partners_csv, read, read_settled, redis_url, text, unique_prefix,
    wait_until,
};

#[test]
fn admin_cli_validates_everything_before_publishing_one_version() {
    let url = redis_url();
    let prefix = unique_prefix("cli");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = |name: &str| dir.path().join(name).display().to_string();

    let codes_path = codes_csv().display().to_string();
    let partners_path = partners_csv().display().to_string();
    let first = ok(&codes(
        url,
        &prefix,
        &["import", &codes_path, "--partners", &partners_path],
    ));
    assert!(first.contains("published version 1: 11 added"), "{first}");

    // An export reads back unchanged: importing it publishes nothing.
    ok(&codes(
        url,
        &prefix,
        &[
            "export",
            "--output",
            &path("v1.csv"),
            "--partners-output",
            &path("v1-partners.csv"),
        ],
    ));
    let again = ok(&codes(
        url,
        &prefix,
        &[
            "import",
            &path("v1.csv"),
            "--partners",
            &path("v1-partners.csv"),
        ],
    ));
    assert!(again.contains("no changes"), "{again}");

    // Every problem of a bad file is reported, with line and column, and nothing is written.
    let bad = "Promo Code,Program Id,Media Id,Type,Credit Rule,Active Start Date,Active End Date\n\
               NEW1,1001,2001,TRACKING,ALWAYS,,\n\
               BAD2,1001,2001,TRAKING,ALWAYS,,\n\
               BAD3,1001,2001,TRACKING,ALWAYS,2026-06-01,2026-05-01\n\
               new1,1001,2002,TRACKING,ALWAYS,,\n";
    std::fs::write(path("bad.csv"), bad).expect("write bad file");
    let refused = codes(url, &prefix, &["import", &path("bad.csv")]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let report = text(&refused.stderr);
    for expected in [
        ":3: column \"Type\"",
        ":4: column \"Active End Date\"",
        ":5: column \"Promo Code\"",
    ] {
        assert!(
            report.contains(expected),
            "missing {expected:?} in:\n{report}"
        );
    }
    assert_eq!(current_version(url, &prefix), Some(1));

    // A dry run reports and writes nothing.
    std::fs::write(
        path("new.csv"),
        "Promo Code,Program Id,Media Id,Type,Credit Rule\nNEW1,1001,2001,TRACKING,ALWAYS\n",
    )
    .expect("write new file");
    let dry = ok(&codes(
        url,
        &prefix,
        &["import", &path("new.csv"), "--dry-run"],
    ));
    assert!(dry.contains("dry run") && dry.contains("1 added"), "{dry}");
    assert_eq!(current_version(url, &prefix), Some(1));

    // Single-code edits, each one version; unknown codes and impossible dates are refused.
    let expired = ok(&codes(url, &prefix, &["expire", "anna10"]));
    assert!(
        expired.contains("published version 2: 0 added, 1 changed"),
        "{expired}"
    );
    let unknown = codes(url, &prefix, &["expire", "NOPE"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown.stderr).contains("no code \"NOPE\""),
        "{}",
        text(&unknown.stderr)
    );
    let far = codes(
        url,
        &prefix,
        &["set-dates", "DEALS20", "--end", "9999-12-31T23:00:00-12:00"],
    );
    assert_eq!(far.status.code(), Some(1), "{}", text(&far.stderr));
    assert!(
        text(&far.stderr).contains("1-9999"),
        "{}",
        text(&far.stderr)
    );
    let usage = codes(url, &prefix, &["list", "--at", "yesterday"]);
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage.stderr));
    let backwards = codes(
        url,
        &prefix,
        &["set-dates", "DEALS20", "--end", "2025-01-01"],
    );
    assert_eq!(
        backwards.status.code(),
        Some(1),
        "{}",
        text(&backwards.stderr)
    );
    ok(&codes(
        url,
        &prefix,
        &["assign", "PODCAST15", "--partner", "2009"],
    ));
    assert_eq!(current_version(url, &prefix), Some(3));

    let list = ok(&codes(
        url,
        &prefix,
        &["list", "--state", "expired", "--at", "2026-05-10T12:00:00Z"],
    ));
    assert!(
        list.contains("ANNA10") && list.contains("OLDCODE"),
        "{list}"
    );
    assert!(!list.contains("PODCAST15"), "{list}");
    // One date reader everywhere: a bare date is the start of that day (UTC on the command
    // line). STORED (the State column) and SCHEDULE (the dates) are separate columns.
    let on_day = ok(&codes(
        url,
        &prefix,
        &["list", "--at", "2026-05-10", "--format", "csv"],
    ));
    assert!(
        on_day.starts_with(
            "PROGRAM,CODE,MODE,TYPE,OWNER,POLICY,START,END,STORED,SCHEDULE,IN_FORCE\n"
        ),
        "{on_day}"
    );
    let anna = on_day
        .lines()
        .find(|l| l.contains(",ANNA10,"))
        .expect("ANNA10 listed");
    assert!(anna.ends_with(",EXPIRED,IN_PERIOD,EXPIRED"), "{anna}");
    let listed: serde_json::Value = serde_json::from_str(&ok(&codes(
        url,
        &prefix,
        &["list", "--at", "2026-05-10T00:00:00Z", "--format", "json"],
    )))
    .expect("list JSON");
    assert_eq!(
        listed.as_array().map(Vec::len),
        on_day.lines().count().checked_sub(1)
    );
    let by_partner = ok(&codes(url, &prefix, &["list", "--partner", "2009"]));
    assert!(
        by_partner.contains("PODCAST15") && by_partner.contains("1 of 11"),
        "{by_partner}"
    );

    let show = ok(&codes(
        url,
        &prefix,
        &["show", " anna10 ", "--at", "2026-05-10T12:00:00Z"],
    ));
    assert!(show.contains("LI:ANNA10 (applies)"), "{show}");
    assert!(
        show.contains("also matches"),
        "the ^(?i)(ANNA).* regex also matches:\n{show}"
    );

    // Rollback publishes the old content as a new version, byte for byte the same table.
    let rolled = ok(&codes(
        url,
        &prefix,
        &[
            "rollback",
            "1",
            "--author",
            "alice",
            "--reason",
            "TICKET-7 wrong dates",
        ],
    ));
    assert!(
        rolled.contains("published version 4: 0 added, 2 changed"),
        "{rolled}"
    );
    ok(&codes(
        url,
        &prefix,
        &["export", "--output", &path("v4.csv")],
    ));
    assert_eq!(
        std::fs::read(path("v4.csv")).expect("v4 export"),
        std::fs::read(path("v1.csv")).expect("v1 export")
    );
    let history = ok(&codes(url, &prefix, &["history"]));
    assert!(history.contains("expire ANNA10"), "{history}");
    assert!(history.contains("rollback to 1"), "{history}");
    let history: serde_json::Value =
        serde_json::from_str(&ok(&codes(url, &prefix, &["history", "--format", "json"])))
            .expect("history JSON");
    assert_eq!(history[0]["version"], "4");
    assert_eq!(history[0]["author"], "alice");
    assert_eq!(history[0]["reason"], "TICKET-7 wrong dates");
    assert_eq!(history[0]["current"], "current");
    assert_eq!(history[1]["reason"], "-");
    let missing = codes(url, &prefix, &["rollback", "99"]);
    assert_eq!(missing.status.code(), Some(1));

    // Per-program settings are validated like the settings file, then published.
    std::fs::write(path("bad-settings.json"), r#"{"velocity_factor": 0}"#).expect("write");
    std::fs::write(path("settings.json"), r#"{"velocity_factor": 3}"#).expect("write");
    let refused = codes(
        url,
        &prefix,
        &[
            "program-settings",
            "set",
            "1001",
            &path("bad-settings.json"),
        ],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let set = codes(
        url,
        &prefix,
        &["program-settings", "set", "1001", &path("settings.json")],
    );
    assert!(ok(&set).contains("1 program settings changed"));
    assert!(
        !text(&set.stderr).contains("warning"),
        "{}",
        text(&set.stderr)
    );
    // Settings for a program without codes are published, with a warning (likely a typo).
    let typo = codes(
        url,
        &prefix,
        &["program-settings", "set", "10001", &path("settings.json")],
    );
    assert_eq!(typo.status.code(), Some(0));
    assert!(
        text(&typo.stderr).contains("warning: program 10001 has no codes in the table"),
        "{}",
        text(&typo.stderr)
    );
    let shown = ok(&codes(url, &prefix, &["program-settings", "show"]));
    assert!(shown.contains("\"velocity_factor\": 3"), "{shown}");

    // No Redis there: a connection error, exit 2.
    let unreachable = codes("redis://127.0.0.1:1", &prefix, &["history"]);
    assert_eq!(
        unreachable.status.code(),
        Some(2),
        "{}",
        text(&unreachable.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// A worker following the store

#[test]
fn worker_applies_new_versions_while_orders_flow() {
    support::follow::worker_follows_new_versions(redis_url(), "follow");
}

/// The same on the Redis Cluster: the store on its slot's primary, announcements by sharded
/// pub/sub, the publish script's keys in one slot.
#[test]
fn worker_applies_new_versions_on_the_cluster() {
    let _cluster = support::cluster_lock(false);
    support::follow::worker_follows_new_versions(support::redis_cluster_url(), "follow-cluster");
}

// ---------------------------------------------------------------------------------------------
// Redis outages

#[test]
fn redis_outage_keeps_the_last_table_then_pauses_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut redis = PrivateRedis::reserve();
    redis.start();
    let url = redis.url();
    let prefix = unique_prefix("outage");
    import_samples(&url, &prefix);
    let names = Names::new("outage");
    names.create_topics(2);
    let sets = store_sets(
        &url,
        &prefix,
        &[
            "store.max_staleness_secs=4",
            "store.io_timeout_ms=1000",
            "store.connect_timeout_ms=500",
        ],
    );
    let mut worker = spawn_worker(&names, &sets, &dir.path().join("w.log"));
    let admin = admin_address(&worker);

    let batch = |tag: &str| -> Vec<Vec<u8>> {
        (0..10)
            .map(|i| order(&format!("{tag}-{i}"), "ANNA10"))
            .collect()
    };
    produce(&names, &batch("up"));
    assert_eq!(
        read(&names.conversions, 10, Duration::from_secs(30)).len(),
        10
    );

    // Redis hung (SIGSTOP: connections stay open, nothing answers): the last good table keeps
    // serving, and the worker says Redis is down.
    redis.pause(true);
    let stopped = Instant::now();
    produce(&names, &batch("down"));
    assert_eq!(
        read(&names.conversions, 20, Duration::from_secs(3)).len(),
        20,
        "orders within max_staleness are attributed with the last good table; log:\n{}",
        worker.log_tail()
    );
    assert!(
        wait_until(Duration::from_secs(5), || metric_value(
            &admin,
            "promo_redis_up"
        ) == 0.0),
        "promo_redis_up stayed 1"
    );

    // Past max_staleness the worker stops crediting (and keeps polling Kafka).
    assert!(
        wait_until(Duration::from_secs(10), || metric_value(
            &admin,
            "promo_code_table_age_seconds"
        ) > 4.0),
        "the table age did not grow"
    );
    produce(&names, &batch("stale"));
    assert!(
        wait_until(Duration::from_secs(10), || metric_value(
            &admin,
            "promo_worker_paused"
        ) == 1.0),
        "the worker did not pause on a stale table; log:\n{}",
        worker.log_tail()
    );
    assert_eq!(
        read(&names.conversions, 21, Duration::from_secs(2)).len(),
        20,
        "nothing is credited from a stale table"
    );
    assert!(stopped.elapsed() >= Duration::from_secs(4));

    // Redis back: the worker confirms its table, resumes, and nothing was lost or repeated.
    redis.pause(false);
    assert_eq!(
        read(&names.conversions, 30, Duration::from_secs(30)).len(),
        30,
        "log:\n{}",
        worker.log_tail()
    );
    let settled = read_settled(&names.conversions, 30);
    let ids: std::collections::BTreeSet<String> = settled
        .iter()
        .map(|r| field(r.payload.as_deref().unwrap_or_default(), "order_id"))
        .collect();
    assert_eq!(
        (settled.len(), ids.len()),
        (30, 30),
        "each order exactly once"
    );
    assert!(wait_until(Duration::from_secs(5), || metric_value(
        &admin,
        "promo_redis_up"
    ) == 1.0));
    assert!(
        worker
            .terminate(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
}

// ---------------------------------------------------------------------------------------------
// Corrupt versions

/// A version whose meta names more chunks than it holds (a corrupt write, or a hostile one) is
/// refused with a reason, by the CLI and by the loader, instead of sizing an allocation from it.
#[test]
fn a_version_claiming_absurd_chunks_is_refused_not_a_panic() {
    let url = redis_url();
    let prefix = unique_prefix("corrupt-chunks");
    import_samples(url, &prefix);
    let key = Keys::new(&prefix).version(1);
    let mut connection = redis_connection(url);
    let meta: String = redis::cmd("HGET")
        .arg(&key)
        .arg("meta")
        .query(&mut connection)
        .expect("read the meta");
    let mut meta: serde_json::Value = serde_json::from_str(&meta).expect("meta is JSON");
    meta["chunks"] = serde_json::json!(u64::MAX / 2);
    let () = redis::cmd("HSET")
        .arg(&key)
        .arg("meta")
        .arg(meta.to_string())
        .query(&mut connection)
        .expect("write the corrupt meta");

    let export = codes(url, &prefix, &["export"]);
    assert_eq!(
        export.status.code(),
        Some(2),
        "export of an unreadable store fails as an I/O error (a panic exits 101):\n{}",
        text(&export.stderr)
    );
    assert!(
        text(&export.stderr).contains("chunks"),
        "the error names the problem: {}",
        text(&export.stderr)
    );
    let loaded = Store::connect(&store_settings(url, &prefix))
        .expect("connect")
        .load_current();
    assert!(
        matches!(loaded, Err(StoreError::Corrupt { version: 1, .. })),
        "the loader refuses the version: {:?}",
        loaded.map(|v| v.map(|v| v.meta.version))
    );
    let () = redis::cmd("UNLINK")
        .arg(&key)
        .query(&mut connection)
        .expect("clean up");
}

/// Issue 13, item 5: a code a spreadsheet would run as a formula never reaches the store, by
/// import or by edit, so `codes export` (verbatim, to round-trip) writes none.
#[test]
fn import_and_edits_refuse_cells_a_spreadsheet_would_run() {
    let url = redis_url();
    let prefix = unique_prefix("csv-injection");
    let dir = tempfile::tempdir().expect("temp dir");
    let hostile = dir.path().join("hostile.csv");
    std::fs::write(
        &hostile,
        "Promo Code,Program Id,Media Id,Type,Credit Rule,Match Mode\n\
         \"=cmd|' /C calc'!A0\",1001,2001,TRACKING,ALWAYS,LI\n\
         @SUM(1+1),1001,2001,TRACKING,ALWAYS,LI\n\
         +1+1,1001,2001,TRACKING,ALWAYS,LI\n",
    )
    .expect("write");
    let out = codes(url, &prefix, &["import", &hostile.display().to_string()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for line in 2..=4 {
        assert!(
            stderr.contains(&format!(
                "hostile.csv:{line}: column \"Promo Code\": starts with =, +, -, @, a tab or a carriage return"
            )),
            "{stderr}"
        );
    }
    assert_eq!(current_version(url, &prefix), None);

    import_samples(url, &prefix);
    let out = codes(url, &prefix, &["assign", "ANNA10", "--partner", "=1+1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("CSV injection"),
        "{}",
        text(&out.stderr)
    );
    let exported = ok(&codes(url, &prefix, &["export"]));
    assert!(
        exported
            .lines()
            .all(|line| !line.starts_with(['=', '+', '-', '@', '\t', '\r'])
                && !line.contains(",=")),
        "{exported}"
    );
}

/// Issue 13 item 6 and issue 16 item 7: one wrong `--program` over many rows prints a bounded
/// report, `--problems FILE` gets every problem, and a partners file passed as the codes is
/// recognised.
#[test]
fn import_problems_are_bounded_on_the_terminal_and_complete_in_a_file() {
    let url = redis_url();
    let prefix = unique_prefix("bounded-problems");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("many.csv");
    let mut csv = String::from("Promo Code,Program Id,Media Id,Type,Credit Rule,Match Mode\n");
    for i in 0..1000 {
        csv.push_str(&format!("CODE{i},1001,2001,TRACKING,ALWAYS,LI\n"));
    }
    std::fs::write(&file, csv).expect("write");
    let file = file.display().to_string();
    let out = codes(url, &prefix, &["import", &file, "--program", "7"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.lines().count() < 30, "{stderr}");
    assert!(
        stderr.contains("... and 980 more problems in column \"Program Id\"")
            && stderr.contains("1000 problems in all; `codes import --problems FILE`"),
        "{stderr}"
    );

    let all = dir.path().join("problems.txt");
    let all_arg = all.display().to_string();
    let out = codes(
        url,
        &prefix,
        &["import", &file, "--program", "7", "--problems", &all_arg],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&format!("all 1000 problems written to {all_arg}")));
    let written = std::fs::read_to_string(&all).expect("problems file");
    assert_eq!(written.lines().count(), 1000);
    assert!(written.lines().all(|l| l.contains("is not 7 (--program)")));

    let partners = partners_csv().display().to_string();
    let out = codes(url, &prefix, &["import", &partners]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("partners.csv:1: this looks like a partners file"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(current_version(url, &prefix), None);

    // Issue 16, item 1: every phase of an import reports its count and rate.
    let out = codes(url, &prefix, &["import", &file]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for phase in ["read", "validated", "checked", "uploaded"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{phase} 1000 rows in ")) && l.contains(" rows/s")),
            "{phase}: {stderr}"
        );
    }
}

/// An announcement after quiet ticks wakes the subscriber. redis-rs counts every read that timed
/// out as a reply still owed and drops the next reply it reads; before the subscription paid
/// that back, the announcement after a quiet tick was the one dropped and workers learnt of new
/// versions only from the pointer poll (change-to-effect 0.6 s p50 instead of a few ms).
#[test]
fn an_announcement_after_quiet_ticks_wakes_the_subscriber() {
    use promo_attribution::redis::connect::{Endpoint, Subscription};
    use promo_attribution::settings::StoreSettings;
    let settings = StoreSettings {
        redis_url: redis_url().into(),
        ..StoreSettings::default()
    };
    let channel = format!("{}announce", unique_prefix("announce"));
    let endpoint = Endpoint::new(&settings).expect("endpoint");
    let mut subscription =
        Subscription::open(&endpoint, &channel, Duration::from_millis(20)).expect("subscribe");
    for _ in 0..5 {
        assert!(
            !subscription.wait().expect("a quiet tick"),
            "nothing was published yet"
        );
    }
    let mut publisher = redis_connection(redis_url());
    let _: i64 = ::redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("7")
        .query(&mut publisher)
        .expect("publish");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut woken = false;
    while !woken && Instant::now() < deadline {
        woken = subscription.wait().expect("wait");
    }
    assert!(woken, "the announcement never reached the subscriber");
}
