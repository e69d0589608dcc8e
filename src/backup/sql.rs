//! The per-engine SQL of the images. Every name written into it is checked
//! first: the rule's table and key and the images table are plain
//! identifiers (checked at load), column names read from the catalog are
//! quoted; the run id is a UUID and the rule name matches `[a-z0-9._-]+`,
//! quoted as literals all the same.
//!
//! **PostgreSQL.** An image is `to_json(row)` in a `json` column: `json`, not
//! `jsonb`, so a `json` column's text (spacing, key order, duplicate keys)
//! is kept verbatim. Values render as their text forms (`timestamptz` as
//! ISO 8601 with offset, `numeric` with its scale, `bytea` as `\x` hex,
//! arrays and composites as JSON), under pinned `TimeZone = UTC`,
//! `extra_float_digits = 3`, `IntervalStyle = postgres` and
//! `bytea_output = hex` (restored after each statement), so a value always
//! renders to the same text and two images compare as text. Restores go
//! through `json_populate_record(NULL::table, image)`, which parses each text
//! back with the column type's own input function.
//!
//! **SQLite.** An image is `json_object(column, json_array(typeof(value),
//! encoded))` over the columns of `pragma_table_info`: integers and text as
//! JSON, REAL as `printf('%!.17g')` (17 significant digits: exact for a
//! double), BLOB as `hex()`. Restores decode by the stored type (`unhex`,
//! SQLite ≥ 3.41; the bundled library is 3.51), so a value comes back with
//! its storage class, whatever the column's affinity.
//!
//! **MySQL/MariaDB.** An image is `JSON_OBJECT(column, encoded)` over the
//! columns of `information_schema.columns` (generated columns left out), in a
//! `LONGTEXT` column of a `utf8mb4_bin` table (so images compare byte by
//! byte). Every non-NULL value is a JSON *string*, so SQL NULL (JSON `null`)
//! and a JSON column holding `null` (the string `"null"`) stay apart:
//! binary types (`BINARY`, `VARBINARY`, `BLOB`s, spatial types) as `HEX()`,
//! `BIT` as its unsigned number, everything else as `CAST(value AS CHAR)`:
//! `DECIMAL` with its scale, `DOUBLE`/`FLOAT` in the server's shortest
//! round-trip form (`1e-300`, `0.30000000000000004`), `DATETIME(6)` with its
//! fraction, `JSON` as its text (MariaDB keeps it verbatim), and `TIMESTAMP`
//! under a pinned session `time_zone = '+00:00'` (restored after each
//! statement), so it is the stored UTC instant, free of DST gaps and folds.
//! Restores decode with `JSON_UNQUOTE(JSON_EXTRACT())` (and `UNHEX` for
//! binary types) and assign the text back under the same pinned zone, so the
//! column type's own conversion parses it. Tested on MariaDB 10.11 only.
//!
//! (About 780 lines of code on purpose: each image and restore statement is
//! written for the three dialects side by side, so a change to one dialect's
//! quoting or types is made, and reviewed, next to the other two.)

use crate::db::{DbError, Dialect, Own, Session};

use super::{Backup, Capture, Images};

/// Which images a statement works on.
#[derive(Debug, Clone)]
pub(crate) enum Filter<'a> {
    /// One batch of one run.
    Batch(&'a str, u64),
    /// The images of a run that are to be restored (all but `except`, ids).
    Restore(&'a str, &'a [String]),
}

impl Filter<'_> {
    fn sql(&self) -> String {
        match self {
            Filter::Batch(run, batch) => {
                format!("dbj_i.run_id = {} AND dbj_i.batch = {batch}", lit(run))
            }
            Filter::Restore(run, except) => {
                let mut sql = format!("dbj_i.run_id = {}", lit(run));
                if !except.is_empty() {
                    let ids: Vec<String> = except
                        .iter()
                        .filter(|id| id.chars().all(|c| c.is_ascii_digit()))
                        .cloned()
                        .collect();
                    if !ids.is_empty() {
                        sql.push_str(&format!(" AND dbj_i.id NOT IN ({})", ids.join(", ")));
                    }
                }
                sql
            }
        }
    }
}

/// A string literal.
#[must_use]
pub(crate) fn lit(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A quoted identifier (for column names read from the catalog).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted identifier in `dialect` (MySQL/MariaDB: backticks).
fn qident(dialect: Dialect, name: &str) -> String {
    match dialect {
        Dialect::MySql => format!("`{}`", name.replace('`', "``")),
        _ => ident(name),
    }
}

/// The images table's columns `key` and `before` in a column list (both are
/// reserved words in MySQL/MariaDB; a qualified `dbj_i.key` needs no quotes).
fn key_before(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::MySql => "`key`, `before`",
        _ => "key, before",
    }
}

/// The type to `CAST` a value to for text.
fn text_type(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::MySql => "CHAR",
        _ => "TEXT",
    }
}

/// `a` and `b` (images, or NULL) differ, compared as exact text.
fn differ(dialect: Dialect, a: &str, b: &str) -> String {
    match dialect {
        Dialect::Postgres => format!("{a}::text IS DISTINCT FROM {b}::text"),
        Dialect::MySql => format!("NOT (CAST({a} AS BINARY) <=> CAST({b} AS BINARY))"),
        Dialect::Sqlite => format!("{a} IS NOT {b}"),
    }
}

/// The last part of a possibly qualified name (for index names).
fn base(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// Creates the images table and its indexes if missing; deletes expired images.
#[must_use]
pub(crate) fn prepare(dialect: Dialect, images: &Images) -> String {
    let t = &images.table;
    let b = base(t);
    let secs = images.keep.as_secs();
    match dialect {
        Dialect::Postgres => format!(
            "BEGIN; SELECT pg_advisory_xact_lock({key}); \
             CREATE TABLE IF NOT EXISTS {t} (id bigserial PRIMARY KEY, run_id text NOT NULL, \
             rule text NOT NULL, batch bigint NOT NULL, table_name text NOT NULL, key json NOT NULL, \
             before json, after json, taken_at timestamptz NOT NULL DEFAULT now()); \
             CREATE INDEX IF NOT EXISTS {b}_run_id ON {t} (run_id); \
             CREATE INDEX IF NOT EXISTS {b}_taken_at ON {t} (taken_at); \
             DELETE FROM {t} WHERE taken_at < now() - interval '{secs} seconds'; COMMIT",
            key = crate::db::postgres_lock_key(&format!("images:{t}")),
        ),
        Dialect::MySql => format!(
            "CREATE TABLE IF NOT EXISTS {t} (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
             run_id VARCHAR(64) NOT NULL, rule VARCHAR(255) NOT NULL, batch BIGINT NOT NULL, \
             table_name VARCHAR(255) NOT NULL, `key` LONGTEXT NOT NULL, `before` LONGTEXT, `after` LONGTEXT, \
             taken_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
             INDEX {b}_run_id (run_id), INDEX {b}_taken_at (taken_at)) \
             ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin; \
             DELETE FROM {t} WHERE taken_at < CURRENT_TIMESTAMP(6) - INTERVAL {secs} SECOND"
        ),
        Dialect::Sqlite => format!(
            "CREATE TABLE IF NOT EXISTS {t} (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, \
             rule TEXT NOT NULL, batch INTEGER NOT NULL, table_name TEXT NOT NULL, key TEXT NOT NULL, \
             before TEXT, after TEXT, taken_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))); \
             CREATE INDEX IF NOT EXISTS {b}_run_id ON {t} (run_id); \
             CREATE INDEX IF NOT EXISTS {b}_taken_at ON {t} (taken_at); \
             DELETE FROM {t} WHERE taken_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-{secs} seconds')"
        ),
    }
}

/// Runs `statement` with PostgreSQL's output settings pinned (see the module
/// header) and restores them after; other engines run it as it is.
pub(crate) async fn pinned<S: Session>(
    session: &mut S,
    dialect: Dialect,
    statement: &str,
) -> Result<Own, DbError> {
    match dialect {
        Dialect::Postgres => {}
        Dialect::MySql => return pinned_mysql(session, statement).await,
        Dialect::Sqlite => return session.own(statement).await,
    }
    const SETTINGS: [(&str, &str); 4] = [
        ("TimeZone", "UTC"),
        ("extra_float_digits", "3"),
        ("IntervalStyle", "postgres"),
        ("bytea_output", "hex"),
    ];
    let read: Vec<String> = SETTINGS
        .iter()
        .map(|(name, _)| format!("current_setting({})", lit(name)))
        .collect();
    let saved = session
        .own(&format!("SELECT {}", read.join(", ")))
        .await?
        .rows
        .into_iter()
        .next()
        .unwrap_or_default();
    let set = |values: &[String]| {
        let calls: Vec<String> = SETTINGS
            .iter()
            .zip(values)
            .map(|((name, _), value)| format!("set_config({}, {}, true)", lit(name), lit(value)))
            .collect();
        format!("SELECT {}", calls.join(", "))
    };
    let pin: Vec<String> = SETTINGS.iter().map(|(_, v)| (*v).to_owned()).collect();
    session.own(&set(&pin)).await?;
    let result = session.own(statement).await;
    let restore: Vec<String> = saved.into_iter().map(Option::unwrap_or_default).collect();
    if restore.len() == SETTINGS.len() {
        session.own(&set(&restore)).await?;
    }
    result
}

/// MySQL/MariaDB: `statement` under `time_zone = '+00:00'`, the session's
/// zone restored after (whether the statement succeeded or not).
async fn pinned_mysql<S: Session>(session: &mut S, statement: &str) -> Result<Own, DbError> {
    let saved = session
        .own("SELECT @@session.time_zone")
        .await?
        .rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten());
    session.own("SET time_zone = '+00:00'").await?;
    let result = session.own(statement).await;
    if let Some(zone) = saved {
        session
            .own(&format!(
                "SET time_zone = {}",
                lit(&zone.replace('\\', "\\\\"))
            ))
            .await?;
    }
    result
}

/// A column of the backed-up table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Col {
    /// Its name.
    pub name: String,
    /// PostgreSQL `json`/`jsonb` (the type's name): in `to_json(row)` its
    /// SQL NULL and a JSON `null` look alike (and `json_populate_record`
    /// reads both as SQL NULL), so the image says which columns are SQL NULL
    /// and the value is restored by a cast of its JSON text.
    pub json: Option<String>,
    /// MySQL/MariaDB: the column's `data_type` (how its value is encoded).
    pub mysql: Option<String>,
}

/// The columns of `table`, in order (generated columns left out: they are
/// computed again on restore).
pub(crate) async fn columns<S: Session>(
    session: &mut S,
    dialect: Dialect,
    table: &str,
) -> Result<Vec<Col>, DbError> {
    let sql = match dialect {
        Dialect::Postgres => format!(
            "SELECT attname::text, CASE WHEN atttypid IN ('json'::regtype, 'jsonb'::regtype) \
             THEN format_type(atttypid, atttypmod) END \
             FROM pg_attribute WHERE attrelid = {}::regclass \
             AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            lit(table)
        ),
        Dialect::MySql => {
            let (schema, name) = match table.split_once('.') {
                Some((schema, name)) => (lit(schema), lit(name)),
                None => ("DATABASE()".to_owned(), lit(table)),
            };
            format!(
                "SELECT CAST(column_name AS CHAR), NULL, CAST(lower(data_type) AS CHAR) \
                 FROM information_schema.columns WHERE table_schema = {schema} AND table_name = {name} \
                 AND extra NOT LIKE '%VIRTUAL GENERATED%' AND extra NOT LIKE '%STORED GENERATED%' \
                 AND extra NOT LIKE '%PERSISTENT GENERATED%' ORDER BY ordinal_position"
            )
        }
        Dialect::Sqlite => format!(
            "SELECT CAST(name AS TEXT), NULL FROM pragma_table_xinfo({}) WHERE hidden = 0 ORDER BY cid",
            lit(table)
        ),
    };
    let names: Vec<Col> = session
        .own(&sql)
        .await?
        .rows
        .into_iter()
        .filter_map(|r| {
            let json = r.get(1).cloned().flatten();
            let mysql = r.get(2).cloned().flatten();
            r.into_iter()
                .next()
                .flatten()
                .map(|name| Col { name, json, mysql })
        })
        .collect();
    if names.is_empty() {
        return Err(DbError::Sql(format!("table {table} not found")));
    }
    if names
        .iter()
        .any(|c| c.name.contains(['\'', '"', '`', '\\']))
    {
        return Err(DbError::Sql(format!(
            "table {table} has a column name with a quote or backslash; backup cannot image it"
        )));
    }
    Ok(names)
}

/// The image of row `dbj_t` of `cols`, as an SQL expression.
fn image(dialect: Dialect, cols: &[Col]) -> String {
    match dialect {
        Dialect::Postgres => {
            let nulls: Vec<String> = cols
                .iter()
                .filter(|c| c.json.is_some())
                .map(|c| {
                    format!(
                        "{}, CASE WHEN dbj_t.{} IS NULL THEN true END",
                        lit(&c.name),
                        ident(&c.name)
                    )
                })
                .collect();
            let nulls = if nulls.is_empty() {
                "'{}'::json".to_owned()
            } else {
                format!("json_strip_nulls(json_build_object({}))", nulls.join(", "))
            };
            format!("json_build_object('row', to_json(dbj_t), 'sql_null', {nulls})")
        }
        Dialect::MySql => {
            let parts: Vec<String> = cols
                .iter()
                .map(|c| {
                    let v = format!("dbj_t.{}", qident(dialect, &c.name));
                    let encoded = match mysql_kind(c) {
                        MyKind::Binary => format!("HEX({v})"),
                        MyKind::Bit => format!("CAST(CAST({v} AS UNSIGNED) AS CHAR)"),
                        MyKind::Text => format!("CAST({v} AS CHAR)"),
                    };
                    format!("{}, {encoded}", lit(&c.name))
                })
                .collect();
            format!("JSON_OBJECT({})", parts.join(", "))
        }
        Dialect::Sqlite => {
            let parts: Vec<String> = cols
                .iter()
                .map(|c| &c.name)
                .map(|c| {
                    let v = format!("dbj_t.{}", ident(c));
                    format!(
                        "{}, json_array(typeof({v}), CASE typeof({v}) WHEN 'blob' THEN hex({v}) \
                         WHEN 'real' THEN printf('%!.17g', {v}) ELSE {v} END)",
                        lit(c)
                    )
                })
                .collect();
            format!("json_object({})", parts.join(", "))
        }
    }
}

/// How a MySQL/MariaDB value goes into an image.
enum MyKind {
    /// Bytes: `HEX()` / `UNHEX()`.
    Binary,
    /// `BIT(n)`: its unsigned number (a string would be taken as bytes).
    Bit,
    /// Everything else: its text, parsed back by the column's type.
    Text,
}

fn mysql_kind(col: &Col) -> MyKind {
    match col.mysql.as_deref().unwrap_or("") {
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry"
        | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" => MyKind::Binary,
        "bit" => MyKind::Bit,
        _ => MyKind::Text,
    }
}

/// Column `c` of the image `json` decoded back to its value.
fn decode(dialect: Dialect, json: &str, col: &Col) -> String {
    let c = &col.name;
    match dialect {
        Dialect::Postgres if col.json.is_some() => format!(
            "CASE WHEN ({json} -> 'sql_null' ->> {name}) IS NOT NULL THEN NULL \
             ELSE CAST({json} -> 'row' -> {name} AS {ty}) END",
            name = lit(c),
            ty = col.json.as_deref().unwrap_or("json")
        ),
        Dialect::Postgres => format!("dbj_r.{}", ident(c)),
        Dialect::MySql => {
            let path = lit(&format!("$.\"{c}\""));
            // JSON_UNQUOTE(JSON_EXTRACT()): MySQL's JSON_VALUE returns at most
            // 512 characters by default, and MariaDB's has no RETURNING clause.
            let value = format!("JSON_UNQUOTE(JSON_EXTRACT({json}, {path}))");
            let value = match mysql_kind(col) {
                MyKind::Binary => format!("UNHEX({value})"),
                MyKind::Bit => format!("CAST({value} AS UNSIGNED)"),
                MyKind::Text => value,
            };
            format!(
                "CASE WHEN JSON_TYPE(JSON_EXTRACT({json}, {path})) = 'NULL' THEN NULL ELSE {value} END"
            )
        }
        Dialect::Sqlite => {
            let path = |i: u8| format!("json_extract({json}, '$.\"{c}\"[{i}]')");
            format!(
                "CASE {ty} WHEN 'blob' THEN unhex({v}) WHEN 'real' THEN CAST({v} AS REAL) \
                 WHEN 'text' THEN CAST({v} AS TEXT) ELSE {v} END",
                ty = path(0),
                v = path(1)
            )
        }
    }
}

/// `json_object('k', dbj_t.k, ...)`: the key of row `dbj_t`.
fn key_object(dialect: Dialect, backup: &Backup) -> String {
    let parts: Vec<String> = backup
        .key
        .iter()
        .map(|k| format!("{}, dbj_t.{k}", lit(k)))
        .collect();
    match dialect {
        Dialect::Postgres => format!("json_build_object({})", parts.join(", ")),
        Dialect::MySql => format!("JSON_OBJECT({})", parts.join(", ")),
        Dialect::Sqlite => format!("json_object({})", parts.join(", ")),
    }
}

/// `(dbj_t.k1, ...) IN (SELECT <k1 of image dbj_i's key>, ...)`.
fn key_match(dialect: Dialect, backup: &Backup) -> String {
    if dialect == Dialect::MySql {
        // Each key column equal to the key's value (which an index can
        // serve), and the row's key image byte for byte the stored one (so a
        // case-insensitive collation or a numeric conversion cannot match a
        // neighbour).
        let mut parts: Vec<String> = backup.key.iter().map(|k| mysql_key_part(k)).collect();
        parts.push(format!(
            "CAST({} AS BINARY) = CAST(dbj_i.key AS BINARY)",
            key_object(dialect, backup)
        ));
        return format!("({})", parts.join(" AND "));
    }
    let left: Vec<String> = backup.key.iter().map(|k| format!("dbj_t.{k}")).collect();
    let right = match dialect {
        Dialect::Postgres => {
            let cols: Vec<String> = backup.key.iter().map(|k| format!("dbj_k.{k}")).collect();
            format!(
                "SELECT {} FROM json_populate_record(NULL::{}, dbj_i.key) dbj_k",
                cols.join(", "),
                backup.table
            )
        }
        _ => {
            let cols: Vec<String> = backup
                .key
                .iter()
                .map(|k| format!("json_extract(dbj_i.key, '$.\"{k}\"')"))
                .collect();
            format!("SELECT {}", cols.join(", "))
        }
    };
    format!("({}) IN ({right})", left.join(", "))
}

/// MySQL/MariaDB: key column `k` of row `dbj_t` equals image `dbj_i`'s.
fn mysql_key_part(k: &str) -> String {
    format!(
        "dbj_t.{k} = JSON_UNQUOTE(JSON_EXTRACT(dbj_i.key, {}))",
        lit(&format!("$.\"{k}\""))
    )
}

/// The current image of the row with image `dbj_i`'s key, or NULL.
fn current(dialect: Dialect, backup: &Backup, cols: &[Col]) -> String {
    format!(
        "(SELECT {} FROM {} dbj_t WHERE {})",
        text(dialect, &image(dialect, cols)),
        backup.table,
        key_match(dialect, backup)
    )
}

/// An image expression as text, for comparisons.
fn text(dialect: Dialect, expr: &str) -> String {
    match dialect {
        Dialect::Postgres => format!("{expr}::text"),
        _ => expr.to_owned(),
    }
}

/// Before the fix: images of the rows detect returns, locked where the engine can.
#[must_use]
pub(crate) fn before(capture: &Capture<'_>, cols: &[Col]) -> String {
    let d = capture.dialect;
    let b = capture.backup;
    let detect = crate::sql::split_statements(capture.detect, d)
        .first()
        .copied()
        .unwrap_or(capture.detect);
    let d_keys: Vec<String> = b.key.iter().map(|k| format!("dbj_d.{k}")).collect();
    let t_keys: Vec<String> = b.key.iter().map(|k| format!("dbj_t.{k}")).collect();
    let within = capture.window.map_or_else(String::new, |w| {
        format!(
            " WHERE dbj_d.{c} >= {first} AND dbj_d.{c} <= {last}",
            c = w.column,
            first = w.keys.first,
            last = w.keys.last
        )
    });
    let lock = match d {
        Dialect::Postgres => " FOR UPDATE OF dbj_t",
        Dialect::MySql => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    format!(
        "INSERT INTO {img} (run_id, rule, batch, table_name, {kb}) \
         SELECT {run}, {rule}, {batch}, {table_lit}, {key}, {image} FROM {table} dbj_t \
         WHERE ({t_keys}) IN (SELECT {d_keys} FROM (\n{detect}\n) dbj_d{within}){lock}",
        img = b.images.table,
        kb = key_before(d),
        run = lit(capture.run_id),
        rule = lit(capture.rule),
        batch = capture.batch,
        table_lit = lit(&b.table),
        key = key_object(d, b),
        image = image(d, cols),
        table = b.table,
        t_keys = t_keys.join(", "),
        d_keys = d_keys.join(", "),
    )
}

/// After the fix (or a restore): the after-images of the filtered images' keys.
#[must_use]
pub(crate) fn after(
    dialect: Dialect,
    backup: &Backup,
    cols: &[Col],
    filter: &Filter<'_>,
) -> String {
    format!(
        "UPDATE {img} AS dbj_i SET {after} = (SELECT {image} FROM {table} dbj_t WHERE {matching}) WHERE {filter}",
        after = if dialect == Dialect::MySql {
            "dbj_i.after"
        } else {
            "after"
        },
        img = backup.images.table,
        image = image(dialect, cols),
        table = backup.table,
        matching = key_match(dialect, backup),
        filter = filter.sql(),
    )
}

/// Images taken and images that differ, of one batch.
#[must_use]
pub(crate) fn counts(dialect: Dialect, backup: &Backup, run: &str, batch: u64) -> String {
    let differ = differ(dialect, "dbj_i.before", "dbj_i.after");
    format!(
        "SELECT CAST(count(*) AS {ty}), CAST(coalesce(sum(CASE WHEN {differ} THEN 1 ELSE 0 END), 0) AS {ty}) \
         FROM {img} dbj_i WHERE {filter}",
        ty = text_type(dialect),
        img = backup.images.table,
        filter = Filter::Batch(run, batch).sql()
    )
}

/// Deletes the images of rows the fix did not change.
#[must_use]
pub(crate) fn drop_unchanged(dialect: Dialect, backup: &Backup, run: &str, batch: u64) -> String {
    let same = format!("NOT ({})", differ(dialect, "dbj_i.before", "dbj_i.after"));
    let delete = match dialect {
        // MariaDB has no `DELETE FROM t AS alias`; the multi-table form has.
        Dialect::MySql => "DELETE dbj_i FROM",
        _ => "DELETE FROM",
    };
    format!(
        "{delete} {img} AS dbj_i WHERE {filter} AND {same}",
        img = backup.images.table,
        filter = Filter::Batch(run, batch).sql()
    )
}

/// Where a run's images are: `rule`, `table_name`, count. (`locate` and
/// `list` run before the engine is known to them, so they are written in SQL
/// all three engines take: `concat`, which is text in each.)
#[must_use]
pub(crate) fn locate(images: &Images, run: &str) -> String {
    format!(
        "SELECT rule, table_name, concat(count(*), '') FROM {} WHERE run_id = {} GROUP BY rule, table_name",
        images.table,
        lit(run)
    )
}

/// Every image of a run: id, key, before, after (as text), in order.
#[must_use]
pub(crate) fn list(images: &Images, run: &str) -> String {
    format!(
        "SELECT concat(dbj_i.id, ''), concat(dbj_i.key, ''), \
         CASE WHEN dbj_i.before IS NULL THEN NULL ELSE concat(dbj_i.before, '') END, \
         CASE WHEN dbj_i.after IS NULL THEN NULL ELSE concat(dbj_i.after, '') END \
         FROM {} dbj_i WHERE dbj_i.run_id = {} ORDER BY dbj_i.id",
        images.table,
        lit(run)
    )
}

/// Locks the rows of a run's keys (PostgreSQL, MySQL; SQLite holds the write lock).
#[must_use]
pub(crate) fn lock_rows(dialect: Dialect, backup: &Backup, run: &str) -> Option<String> {
    let keys: Vec<String> = backup.key.iter().map(|k| format!("dbj_t.{k}")).collect();
    match dialect {
        Dialect::Postgres => {
            let k: Vec<String> = backup.key.iter().map(|k| format!("dbj_k.{k}")).collect();
            Some(format!(
                "SELECT 1 FROM {table} dbj_t WHERE ({keys}) IN (SELECT {k} FROM {img} dbj_i, \
                 json_populate_record(NULL::{table}, dbj_i.key) dbj_k WHERE dbj_i.run_id = {run}) FOR UPDATE OF dbj_t",
                table = backup.table,
                keys = keys.join(", "),
                k = k.join(", "),
                img = backup.images.table,
                run = lit(run)
            ))
        }
        Dialect::MySql => {
            let parts: Vec<String> = backup.key.iter().map(|k| mysql_key_part(k)).collect();
            Some(format!(
                "SELECT 1 FROM {img} dbj_i JOIN {table} dbj_t ON {on} WHERE dbj_i.run_id = {run} FOR UPDATE",
                img = backup.images.table,
                table = backup.table,
                on = parts.join(" AND "),
                run = lit(run)
            ))
        }
        Dialect::Sqlite => None,
    }
}

/// Images of a run whose row is no longer its after-image: id and key.
#[must_use]
pub(crate) fn conflicts(dialect: Dialect, backup: &Backup, cols: &[Col], run: &str) -> String {
    let differ = differ(dialect, &current(dialect, backup, cols), "dbj_i.after");
    format!(
        "SELECT CAST(dbj_i.id AS {ty}), CAST(dbj_i.key AS {ty}) FROM {img} dbj_i \
         WHERE dbj_i.run_id = {run} AND {differ} ORDER BY dbj_i.id",
        ty = text_type(dialect),
        img = backup.images.table,
        run = lit(run),
    )
}

/// The undo run's before-images: the current rows of the images to restore.
#[must_use]
pub(crate) fn undo_before(
    dialect: Dialect,
    backup: &Backup,
    cols: &[Col],
    undo_run: &str,
    filter: &Filter<'_>,
) -> String {
    let current = format!(
        "(SELECT {} FROM {} dbj_t WHERE {})",
        image(dialect, cols),
        backup.table,
        key_match(dialect, backup)
    );
    format!(
        "INSERT INTO {img} (run_id, rule, batch, table_name, {kb}) \
         SELECT {run}, dbj_i.rule, 0, dbj_i.table_name, dbj_i.key, {current} FROM {img} dbj_i \
         WHERE {filter} ORDER BY dbj_i.id",
        img = backup.images.table,
        kb = key_before(dialect),
        run = lit(undo_run),
        filter = filter.sql(),
    )
}

/// Restore, step 1: rows the run inserted (an undo that re-inserted) are deleted.
#[must_use]
pub(crate) fn restore_delete(dialect: Dialect, backup: &Backup, filter: &Filter<'_>) -> String {
    format!(
        "{delete} {table} AS dbj_t WHERE EXISTS (SELECT 1 FROM {img} dbj_i WHERE {filter} \
         AND dbj_i.before IS NULL AND dbj_i.after IS NOT NULL AND {matching})",
        delete = if dialect == Dialect::MySql {
            "DELETE dbj_t FROM"
        } else {
            "DELETE FROM"
        },
        table = backup.table,
        img = backup.images.table,
        filter = filter.sql(),
        matching = key_match(dialect, backup),
    )
}

/// The restore's column list, the before-image's decoded values, and the
/// FROM list that provides them.
fn restore_source(dialect: Dialect, backup: &Backup, cols: &[Col]) -> (String, String, String) {
    let quoted: Vec<String> = cols.iter().map(|c| qident(dialect, &c.name)).collect();
    let values: Vec<String> = cols
        .iter()
        .map(|c| decode(dialect, "dbj_i.before", c))
        .collect();
    let from = match dialect {
        Dialect::Postgres => format!(
            "{img} dbj_i, json_populate_record(NULL::{table}, dbj_i.before -> 'row') dbj_r",
            img = backup.images.table,
            table = backup.table
        ),
        _ => format!("{} dbj_i", backup.images.table),
    };
    (quoted.join(", "), values.join(", "), from)
}

/// Restore, step 2: rows the run updated get their before-image back.
#[must_use]
pub(crate) fn restore_update(
    dialect: Dialect,
    backup: &Backup,
    cols: &[Col],
    filter: &Filter<'_>,
) -> String {
    if dialect == Dialect::MySql {
        let sets: Vec<String> = cols
            .iter()
            .map(|c| {
                format!(
                    "dbj_t.{} = {}",
                    qident(dialect, &c.name),
                    decode(dialect, "dbj_i.before", c)
                )
            })
            .collect();
        return format!(
            "UPDATE {table} dbj_t JOIN {img} dbj_i ON {matching} SET {sets} \
             WHERE {filter} AND dbj_i.before IS NOT NULL AND dbj_i.after IS NOT NULL",
            table = backup.table,
            img = backup.images.table,
            matching = key_match(dialect, backup),
            sets = sets.join(", "),
            filter = filter.sql(),
        );
    }
    let (cols, values, from) = restore_source(dialect, backup, cols);
    format!(
        "UPDATE {table} AS dbj_t SET ({cols}) = (SELECT {values}) FROM {from} \
         WHERE {filter} AND dbj_i.before IS NOT NULL AND dbj_i.after IS NOT NULL AND {matching}",
        table = backup.table,
        filter = filter.sql(),
        matching = key_match(dialect, backup),
    )
}

/// Restore, step 3: rows the run deleted are inserted again (PostgreSQL:
/// `OVERRIDING SYSTEM VALUE`, so identity columns get their old values).
#[must_use]
pub(crate) fn restore_insert(
    dialect: Dialect,
    backup: &Backup,
    cols: &[Col],
    filter: &Filter<'_>,
) -> String {
    let (cols, values, from) = restore_source(dialect, backup, cols);
    let overriding = match dialect {
        Dialect::Postgres => " OVERRIDING SYSTEM VALUE",
        _ => "",
    };
    format!(
        "INSERT INTO {table} ({cols}){overriding} SELECT {values} FROM {from} \
         WHERE {filter} AND dbj_i.before IS NOT NULL AND dbj_i.after IS NULL ORDER BY dbj_i.id",
        table = backup.table,
        filter = filter.sql(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> Col {
        Col {
            name: name.to_owned(),
            json: None,
            mysql: Some(ty.to_owned()),
        }
    }

    #[test]
    fn mysql_images_keep_bytes_as_hex_and_reserved_names_quoted() {
        let cols = [
            col("id", "bigint"),
            col("payload", "blob"),
            col("flags", "bit"),
        ];
        let image = image(Dialect::MySql, &cols);
        assert!(image.contains("HEX(dbj_t.`payload`)"), "{image}");
        assert!(
            image.contains("CAST(CAST(dbj_t.`flags` AS UNSIGNED) AS CHAR)"),
            "{image}"
        );
        assert!(image.contains("CAST(dbj_t.`id` AS CHAR)"), "{image}");
        let back = decode(Dialect::MySql, "dbj_i.before", &cols[1]);
        assert!(back.contains("UNHEX(JSON_UNQUOTE(JSON_EXTRACT("), "{back}");
        assert!(back.contains("= 'NULL' THEN NULL"), "{back}");
        let create = prepare(Dialect::MySql, &Images::default());
        assert!(create.contains("`key` LONGTEXT NOT NULL"), "{create}");
        assert!(create.contains("utf8mb4_bin"), "{create}");
    }
}
