//! Issue 11, third round: keyset batches (`batch.key`). Each batch is the
//! window of the next `{batch_size}` detected rows after the previous
//! window's last key; the fix deletes by `{batch_first_key}` and
//! `{batch_last_key}`. On every engine: exactly the detected rows go, each
//! once (a trigger logs every deleted row), undetected rows between them
//! stay, `max_batches` continues next run, a guard that trips mid-run counts
//! exactly what is committed, a dry run changes nothing, and the
//! placeholders are refused where they do not belong (file:line:col, exit 2).

use serde_json::Value;

use crate::util::{Case, Engine, TestDb};

/// `event_history` (id, state), `purged` (one row per deleted row, written
/// by a trigger in the deleting transaction).
fn schema(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => {
            "CREATE TABLE event_history (id integer PRIMARY KEY, state varchar(8) NOT NULL);
             CREATE TABLE purged (id integer NOT NULL);
             CREATE FUNCTION log_purge() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO purged VALUES (OLD.id); RETURN OLD; END $$;
             CREATE TRIGGER log_purge AFTER DELETE ON event_history
               FOR EACH ROW EXECUTE FUNCTION log_purge();"
        }
        Engine::MySql => {
            "CREATE TABLE event_history (id integer PRIMARY KEY, state varchar(8) NOT NULL);
             CREATE TABLE purged (id integer NOT NULL);
             CREATE TRIGGER log_purge AFTER DELETE ON event_history
               FOR EACH ROW INSERT INTO purged VALUES (OLD.id);"
        }
        Engine::Sqlite => {
            "CREATE TABLE event_history (id integer PRIMARY KEY, state varchar(8) NOT NULL);
             CREATE TABLE purged (id integer NOT NULL);
             CREATE TRIGGER log_purge AFTER DELETE ON event_history
               BEGIN INSERT INTO purged VALUES (old.id); END;"
        }
    }
}

/// A database whose `old` rows are `old_ids` and `new` rows `new_ids`.
async fn seeded(
    engine: Engine,
    old_ids: impl Iterator<Item = u32>,
    new_ids: impl Iterator<Item = u32>,
) -> TestDb {
    let db = TestDb::with_sql(engine, schema(engine)).await;
    let values: Vec<String> = old_ids
        .map(|id| format!("({id}, 'old')"))
        .chain(new_ids.map(|id| format!("({id}, 'new')")))
        .collect();
    db.exec(&format!(
        "INSERT INTO event_history (id, state) VALUES {}",
        values.join(", ")
    ))
    .await;
    db
}

fn rule(fix_filter: &str, max_rows: u32, extra: &str) -> String {
    format!(
        "name: events.purge\ndatabase: main\n\
         detect: \"SELECT id, state FROM event_history WHERE state = 'old'\"\n\
         fix: \"DELETE FROM event_history WHERE id BETWEEN {{batch_first_key}} AND {{batch_last_key}}{fix_filter}\"\n\
         max_rows: {max_rows}\nbatch: {{ pause: 0s, size: 10, key: id{extra} }}\n"
    )
}

fn num(record: &Value, field: &str) -> Option<u64> {
    record[field].as_u64()
}

async fn ids(db: &TestDb, sql: &str) -> Vec<u32> {
    db.strings(sql)
        .await
        .iter()
        .map(|v| v.parse().expect("id"))
        .collect()
}

on_every_engine!(
    keyset_batches_purge_exactly_the_detected_rows_once,
    keyset_guard_trips_mid_run_with_exact_counts,
    keyset_backup_images_each_window_once,
);

/// 45 old rows (multiples of 3) between 46 new ones, windows of 10.
async fn keyset_batches_purge_exactly_the_detected_rows_once(engine: Engine) {
    let old: Vec<u32> = (1..=45).map(|i| i * 3).collect();
    let db = seeded(engine, old.iter().copied(), (0..=45).map(|i| i * 3 + 1)).await;
    let case = Case::new().database("main", db.url());
    let rule = |extra: &str| rule(" AND state = 'old'", 100, extra);

    // Dry run: the first window only, rolled back.
    let dry = case
        .rule(&rule(""))
        .run(&["run", "--dry-run", "--output", "json"]);
    dry.assert_code(0);
    let r = dry.record("events.purge", "main");
    assert_eq!(r["outcome"], "would_fix", "{r}");
    assert_eq!(
        (num(&r, "detected"), num(&r, "changed"), num(&r, "batches")),
        (Some(45), Some(10), Some(1)),
        "{r}"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM event_history").await, 91);
    assert_eq!(db.scalar("SELECT count(*) FROM purged").await, 0);

    // max_batches: two windows, the next run continues.
    let capped = Case::new()
        .database("main", db.url())
        .rule(&rule(", max_batches: 2"))
        .run(&["run", "--output", "json"]);
    capped.assert_code(0);
    let r = capped.record("events.purge", "main");
    assert_eq!(
        (r["outcome"].as_str(), r["reason"].as_str()),
        (Some("fixed"), Some("max_batches_reached")),
        "{r}"
    );
    assert_eq!(
        (num(&r, "changed"), num(&r, "batches")),
        (Some(20), Some(2)),
        "{r}"
    );
    assert_eq!(
        ids(&db, "SELECT id FROM purged ORDER BY id").await,
        old[..20].to_vec()
    );

    // The rest: windows of 10, 10 and 5; the short one is the last.
    let full = Case::new()
        .database("main", db.url())
        .rule(&rule(""))
        .run(&["run", "--output", "json"]);
    full.assert_code(0);
    let r = full.record("events.purge", "main");
    assert_eq!(r["outcome"], "fixed", "{r}");
    assert_eq!(
        (num(&r, "changed"), num(&r, "batches"), num(&r, "remaining")),
        (Some(25), Some(3), Some(0)),
        "{r}"
    );
    // Each detected row deleted exactly once, nothing else.
    assert_eq!(
        ids(&db, "SELECT id FROM purged ORDER BY id").await,
        old,
        "each old row is purged once"
    );
    assert_eq!(
        ids(&db, "SELECT id FROM event_history ORDER BY id").await,
        (0..=45).map(|i| i * 3 + 1).collect::<Vec<_>>(),
        "the new rows between them stay"
    );
}

/// A fix that also deletes the undetected rows inside each window: 30 old
/// (even) and 30 new (odd) ids, windows of 10 old rows delete 19 rows each;
/// max_rows 45 trips in the third batch, which is rolled back.
async fn keyset_guard_trips_mid_run_with_exact_counts(engine: Engine) {
    let db = seeded(engine, (1..=30).map(|i| i * 2), (0..30).map(|i| i * 2 + 1)).await;
    let out = Case::new()
        .database("main", db.url())
        .rule(&rule("", 45, ""))
        .run(&["run", "--output", "json"]);
    out.assert_code(3);
    let r = out.record("events.purge", "main");
    assert_eq!(
        (r["outcome"].as_str(), r["reason"].as_str()),
        (Some("guard_tripped"), Some("fix_over_max_rows")),
        "{r}"
    );
    assert_eq!(
        (num(&r, "changed"), num(&r, "batches")),
        (Some(38), Some(2)),
        "{r}"
    );
    // Windows 2..=20 and 22..=40 stay committed (21 lies between them),
    // the third (42..=60) is rolled back.
    assert_eq!(
        ids(&db, "SELECT id FROM purged ORDER BY id").await,
        (2..=20).chain(22..=40).collect::<Vec<_>>(),
    );
    assert_eq!(
        ids(&db, "SELECT id FROM event_history ORDER BY id").await,
        [1, 21].into_iter().chain(41..=60).collect::<Vec<_>>()
    );
}

/// A trigger that counts every image written into `dbjanitor_images`
/// (inserts rolled back with their batch are not counted).
fn count_image_inserts(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => {
            "CREATE TABLE image_inserts (n integer NOT NULL);
             CREATE FUNCTION count_image() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO image_inserts VALUES (1); RETURN NEW; END $$;
             CREATE TRIGGER count_image AFTER INSERT ON dbjanitor_images
               FOR EACH ROW EXECUTE FUNCTION count_image();"
        }
        Engine::MySql => {
            "CREATE TABLE image_inserts (n integer NOT NULL);
             CREATE TRIGGER count_image AFTER INSERT ON dbjanitor_images
               FOR EACH ROW INSERT INTO image_inserts VALUES (1);"
        }
        Engine::Sqlite => {
            "CREATE TABLE image_inserts (n integer NOT NULL);
             CREATE TRIGGER count_image AFTER INSERT ON dbjanitor_images
               BEGIN INSERT INTO image_inserts VALUES (1); END;"
        }
    }
}

/// `backup:` with keyset batches: each batch images the rows of its own
/// window only. 25 old rows between 26 new ones, windows of 10, 10 and 5:
/// exactly 25 images are ever written (not 25 + 15 + 5), one per purged row,
/// no key twice, and `undo` puts back exactly the rows that were there.
async fn keyset_backup_images_each_window_once(engine: Engine) {
    let db = seeded(engine, (1..=25).map(|i| i * 3), (0..=25).map(|i| i * 3 + 1)).await;
    let original = db
        .rows("SELECT id, state FROM event_history ORDER BY id")
        .await;
    let backup = "backup:\n  table: event_history\n  key: [id]\n";
    let case = Case::new()
        .database("main", db.url())
        .rule(&format!("{}{backup}", rule(" AND state = 'old'", 100, "")));
    // The dry run creates the images table (and keeps no image).
    case.run(&["run", "--dry-run", "--output", "json"])
        .assert_code(0);
    assert_eq!(db.scalar("SELECT count(*) FROM dbjanitor_images").await, 0);
    db.exec(count_image_inserts(engine)).await;

    let out = case.run(&["run", "--output", "json"]);
    out.assert_code(0);
    let r = out.record("events.purge", "main");
    assert_eq!(r["outcome"], "fixed", "{r}");
    assert_eq!(
        (num(&r, "changed"), num(&r, "batches"), num(&r, "kept")),
        (Some(25), Some(3), Some(25)),
        "{r}"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM image_inserts").await,
        25,
        "one image per purged row, none taken again in a later batch"
    );
    let run = r["run_id"].as_str().expect("run_id");
    let changes = case.run(&["changes", run, "--output", "json"]);
    changes.assert_code(0);
    let changes = changes.json();
    let rows = changes["rows"].as_array().expect("rows");
    let mut keys: Vec<String> = rows.iter().map(|row| row["key"].to_string()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!((rows.len(), keys.len()), (25, 25), "{changes}");
    assert!(rows.iter().all(|row| row["after"].is_null()), "{changes}");

    let undo = case.run(&["undo", run, "--output", "json"]);
    undo.assert_code(0);
    assert_eq!(undo.json()["restored"], 25, "{}", undo.stdout);
    assert_eq!(
        db.rows("SELECT id, state FROM event_history ORDER BY id")
            .await,
        original,
        "undo restores exactly the purged rows"
    );
}

/// The loader refuses the key placeholders in detect, in a fix without
/// `batch.key`, a key without `batch.size`'s window... each with
/// file:line:col and exit 2, and nothing runs.
#[tokio::test(flavor = "multi_thread")]
async fn key_placeholders_are_refused_where_they_do_not_belong() {
    let db = seeded(Engine::Sqlite, 1..=5, 6..=6).await;
    let cases = [
        (
            "name: events.purge\ndatabase: main\n\
             detect: \"SELECT id FROM event_history WHERE id > {batch_last_key}\"\n\
             fix: \"DELETE FROM event_history WHERE id BETWEEN {batch_first_key} AND {batch_last_key}\"\n\
             batch: { size: 10, key: id }\n",
            "rule01.yaml:3:9: {batch_first_key} and {batch_last_key} belong in a batch fix",
        ),
        (
            "name: events.purge\ndatabase: main\n\
             detect: \"SELECT id FROM event_history WHERE state = 'old'\"\n\
             fix: \"DELETE FROM event_history WHERE id BETWEEN {batch_first_key} AND {batch_last_key}\"\n\
             batch: { size: 10 }\n",
            "rule01.yaml:4:6: the sqlite fix uses a key placeholder, which needs batch.key",
        ),
        (
            "name: events.purge\ndatabase: main\n\
             detect: \"SELECT id FROM event_history WHERE state = 'old'\"\n\
             fix: \"DELETE FROM event_history WHERE id <= {batch_last_key}\"\n\
             batch: { size: 10, key: id }\n",
            "rule01.yaml:4:6: batch.key is set, so the sqlite fix must use both",
        ),
        (
            "name: events.purge\ndatabase: main\n\
             detect: \"SELECT id FROM event_history WHERE state = 'old'\"\n\
             fix: \"DELETE FROM event_history WHERE id BETWEEN {batch_first_key} AND {batch_last_key}\"\n\
             batch: { key: id }\n",
            "rule01.yaml:5:15: batch.key needs batch.size",
        ),
        (
            "name: events.purge\ndatabase: main\n\
             detect: \"SELECT id FROM event_history WHERE state = 'old'\"\n\
             fix: \"DELETE FROM event_history WHERE id BETWEEN {batch_first_key} AND {batch_last_key}\"\n\
             batch: { size: 10, key: \"id; DROP TABLE x\" }\n",
            "rule01.yaml:5:25: batch.key must name one column",
        ),
    ];
    for (yaml, expected) in cases {
        for command in [["check"].as_slice(), ["run", "--output", "json"].as_slice()] {
            let out = Case::new()
                .database("main", db.url())
                .rule(yaml)
                .run(command);
            out.assert_code(2);
            assert!(out.stderr.contains(expected), "{expected}\n{}", out.stderr);
        }
    }
    assert_eq!(db.scalar("SELECT count(*) FROM event_history").await, 6);
    assert_eq!(db.scalar("SELECT count(*) FROM purged").await, 0);
}
