//! Test harness: throwaway databases on the real servers, and a builder that
//! writes a config and rules into a temporary folder and runs the binary.
//!
//! Server addresses come from `DBJ_TEST_PG` and `DBJ_TEST_MYSQL` (defaults:
//! the machine's PostgreSQL and MariaDB with trust/empty-password root).
//! Each [`TestDb`] is a fresh database named `dbj_t_<pid>_<n>`, dropped when
//! the value is dropped; `.ci/run` also drops leftovers of killed runs.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use dbjanitor::db::{mysql_row_text, mysql_session_options};
use futures_util::TryStreamExt;
use serde_json::Value;
use sqlx::mysql::MySqlConnection;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqliteConnection, SqliteRow};
use sqlx::{AssertSqlSafe, Connection, Database, Decode, Executor, Row, TypeInfo, ValueRef};

/// Declares a module per test function with one `#[tokio::test]` per engine
/// (`name::postgres`, `name::mysql`, `name::sqlite`), each calling `name(engine)`.
macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::util::Engine;
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() { super::$name(Engine::Postgres).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn mysql() { super::$name(Engine::MySql).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() { super::$name(Engine::Sqlite).await }
        }
    )*};
}

/// The three engines dbjanitor supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    MySql,
    Sqlite,
}

impl Engine {
    pub const ALL: [Engine; 3] = [Engine::Postgres, Engine::MySql, Engine::Sqlite];

    /// The key of this engine in a rule's `detect:`/`fix:` map and in fixture paths.
    pub fn key(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::MySql => "mysql",
            Engine::Sqlite => "sqlite",
        }
    }
}

pub fn pg_server() -> String {
    std::env::var("DBJ_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

pub fn mysql_server() -> String {
    std::env::var("DBJ_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A throwaway database on one engine.
pub struct TestDb {
    pub engine: Engine,
    pub name: String,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// Creates an empty database.
    pub async fn new(engine: Engine) -> TestDb {
        let name = format!(
            "dbj_t_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let (url, dir) = match engine {
            Engine::Postgres | Engine::MySql => {
                admin(engine, &format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap_or_else(|e| {
                        panic!("create test database ({engine:?} must be running for the tests, see .ci/run): {e}")
                    });
                (format!("{}/{name}", server(engine)), None)
            }
            Engine::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join(format!("{name}.db"));
                let url = format!("sqlite://{}", path.display());
                let options = SqliteConnectOptions::from_str(&url)
                    .expect("sqlite url")
                    .create_if_missing(true);
                let conn = SqliteConnection::connect_with(&options)
                    .await
                    .expect("create sqlite db");
                let _ = conn.close().await;
                (url, Some(dir))
            }
        };
        TestDb {
            engine,
            name,
            url,
            _dir: dir,
        }
    }

    /// Wraps an SQLite file made by someone else (the demo); never deleted.
    pub fn existing_sqlite(path: &Path) -> TestDb {
        TestDb {
            engine: Engine::Sqlite,
            name: "existing".to_owned(),
            url: format!("sqlite://{}", path.display()),
            _dir: None,
        }
    }

    /// Creates a database and loads `schema` then `data` SQL into it.
    pub async fn with_sql(engine: Engine, sql: &str) -> TestDb {
        let db = TestDb::new(engine).await;
        db.exec(sql).await;
        db
    }

    /// The URL dbjanitor should use for this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The SQLite file, for SQLite databases.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.url.strip_prefix("sqlite://").map(PathBuf::from)
    }

    /// Runs SQL (several statements allowed) on a fresh connection and panics on error.
    pub async fn exec(&self, sql: &str) {
        if let Err(e) = self.try_exec(sql).await {
            panic!("SQL failed on {:?}: {e}\n{sql}", self.engine);
        }
    }

    /// Runs SQL and returns the error text, if any.
    pub async fn try_exec(&self, sql: &str) -> Result<(), String> {
        let result = match self.engine {
            Engine::Postgres => fetch_text(self.pg().await, sql, |_| Vec::new()).await,
            Engine::MySql => fetch_text(self.mysql().await, sql, |_| Vec::new()).await,
            Engine::Sqlite => fetch_text(self.sqlite().await, sql, |_| Vec::new()).await,
        };
        result.map(drop).map_err(|e| e.to_string())
    }

    /// Loads a fixture file from `tests/fixtures/`.
    pub async fn load_fixture(&self, relative: &str) {
        let path = fixture(relative);
        let sql =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self.exec(&sql).await;
    }

    /// Every row of a query, each value as text (`None` for NULL); MariaDB's
    /// values read as dbjanitor reads its own SQL's results ([`mysql_row_text`]).
    pub async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let rows = match self.engine {
            Engine::Postgres => fetch_text(self.pg().await, sql, pg_row_text).await,
            Engine::MySql => fetch_text(self.mysql().await, sql, mysql_row_text).await,
            Engine::Sqlite => fetch_text(self.sqlite().await, sql, sqlite_row_text).await,
        };
        rows.unwrap_or_else(|e| panic!("query failed: {e}"))
    }

    /// The first column of every row of `sql`, NULL as "".
    pub async fn strings(&self, sql: &str) -> Vec<String> {
        self.rows(sql)
            .await
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect()
    }

    /// The first column of the first row, as an integer.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let rows = self.rows(sql).await;
        rows.first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_else(|| panic!("no value from {sql}"))
            .parse()
            .unwrap_or_else(|e| panic!("not an integer from {sql}: {e}"))
    }

    /// The whole table ordered by its first column: compare before and after.
    pub async fn table(&self, table: &str) -> Vec<Vec<Option<String>>> {
        self.rows(&format!("SELECT * FROM {table} ORDER BY 1"))
            .await
    }

    pub async fn pg(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .expect("connect to test PostgreSQL database")
    }

    pub async fn mysql(&self) -> MySqlConnection {
        // Same session settings as dbjanitor: the server's own sql_mode and time zone.
        let options = mysql_session_options(&self.url).expect("mysql url");
        MySqlConnection::connect_with(&options)
            .await
            .expect("connect to test MariaDB database")
    }

    pub async fn sqlite(&self) -> SqliteConnection {
        SqliteConnection::connect(&self.url)
            .await
            .expect("open test SQLite database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (engine, name) = (self.engine, self.name.clone());
        if engine == Engine::Sqlite {
            return;
        }
        // Drop runs outside async code: use a short-lived runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let sql = match engine {
                    Engine::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    _ => format!("DROP DATABASE IF EXISTS {name}"),
                };
                let _ = admin(engine, &sql).await;
            });
        })
        .join();
    }
}

/// The server's URL without a database: PostgreSQL's or MariaDB's.
fn server(engine: Engine) -> String {
    match engine {
        Engine::MySql => mysql_server(),
        _ => pg_server(),
    }
}

/// Runs `sql` as the server's administrator (PostgreSQL: in the `postgres`
/// database): creating and dropping test databases.
async fn admin(engine: Engine, sql: &str) -> Result<(), String> {
    let result = match engine {
        Engine::MySql => match MySqlConnection::connect(&mysql_server()).await {
            Ok(c) => fetch_text(c, sql, |_| Vec::new()).await,
            Err(e) => Err(e),
        },
        _ => match PgConnection::connect(&format!("{}/postgres", pg_server())).await {
            Ok(c) => fetch_text(c, sql, |_| Vec::new()).await,
            Err(e) => Err(e),
        },
    };
    result.map(drop).map_err(|e| e.to_string())
}

/// Runs `sql` (several statements allowed) as text on `conn`, renders every
/// row with `row_text`, and closes the connection.
async fn fetch_text<C>(
    mut conn: C,
    sql: &str,
    row_text: fn(&<C::Database as Database>::Row) -> Vec<Option<String>>,
) -> Result<Vec<Vec<Option<String>>>, sqlx::Error>
where
    C: Connection,
    for<'c> &'c mut C: Executor<'c, Database = C::Database>,
{
    let rows = conn
        .fetch(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())))
        .map_ok(|row| row_text(&row))
        .try_collect()
        .await;
    let _ = conn.close().await;
    rows
}

/// A PostgreSQL row of the simple query protocol: every value arrives as text.
fn pg_row_text(row: &PgRow) -> Vec<Option<String>> {
    (0..row.len())
        .map(|i| {
            let v = row.try_get_raw(i).expect("value");
            (!v.is_null()).then(|| v.as_str().expect("text value").to_owned())
        })
        .collect()
}

/// An SQLite row by storage class: integers and reals as Rust prints them,
/// blobs as a byte list, text as is.
fn sqlite_row_text(row: &SqliteRow) -> Vec<Option<String>> {
    (0..row.len())
        .map(|i| {
            let v = row.try_get_raw(i).expect("value");
            if v.is_null() {
                return None;
            }
            Some(match v.type_info().name() {
                "INTEGER" => <i64 as Decode<Sqlite>>::decode(v).expect("int").to_string(),
                "REAL" => <f64 as Decode<Sqlite>>::decode(v)
                    .expect("real")
                    .to_string(),
                "BLOB" => format!("{:?}", <&[u8] as Decode<Sqlite>>::decode(v).expect("blob")),
                _ => <&str as Decode<Sqlite>>::decode(v)
                    .expect("text")
                    .to_owned(),
            })
        })
        .collect()
}

/// Absolute path of a file under `tests/fixtures/`.
pub fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative)
}

/// Absolute path of a file in the repository.
pub fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A config folder and the binary run against it.
pub struct Case {
    dir: tempfile::TempDir,
    databases: Vec<(String, String, String)>,
    rule_paths: Vec<String>,
    extra: String,
    env: Vec<(String, String)>,
    rule_count: usize,
}

impl Default for Case {
    fn default() -> Self {
        Self::new()
    }
}

impl Case {
    pub fn new() -> Case {
        Case {
            dir: tempfile::tempdir().expect("temp dir"),
            databases: Vec::new(),
            rule_paths: Vec::new(),
            extra: String::new(),
            env: Vec::new(),
            rule_count: 0,
        }
    }

    /// Adds `name: { url: ... }` to `databases:`.
    pub fn database(mut self, name: &str, url: &str) -> Case {
        self.databases
            .push((name.to_owned(), url.to_owned(), String::new()));
        self
    }

    /// Adds a database with more keys, e.g. `lock: { kind: lease }`.
    pub fn database_with(mut self, name: &str, url: &str, extra: &str) -> Case {
        self.databases
            .push((name.to_owned(), url.to_owned(), extra.to_owned()));
        self
    }

    /// Adds a rule file with this YAML.
    pub fn rule(mut self, yaml: &str) -> Case {
        self.rule_count += 1;
        let relative = format!("rules/rule{:02}.yaml", self.rule_count);
        let path = self.dir.path().join(&relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir rules");
        std::fs::write(&path, yaml).expect("write rule");
        if !self.rule_paths.contains(&"rules".to_owned()) {
            self.rule_paths.push("rules".to_owned());
        }
        self
    }

    /// Adds a rule file or folder of the repository (e.g. `rules/dragonfly`) by absolute path.
    pub fn repo_rules(mut self, relative: &str) -> Case {
        self.rule_paths.push(repo(relative).display().to_string());
        self
    }

    /// Appends YAML to the config (notifiers:, defaults:, audit:, ...).
    pub fn config(mut self, yaml: &str) -> Case {
        self.extra.push_str(yaml);
        self.extra.push('\n');
        self
    }

    /// Sets an environment variable for the binary.
    pub fn env(mut self, key: &str, value: &str) -> Case {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The folder holding the config.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `dbjanitor.yaml` and returns its path.
    pub fn write_config(&self) -> PathBuf {
        let mut yaml = String::from("databases:\n");
        for (name, url, extra) in &self.databases {
            yaml.push_str(&format!("  {name}:\n    url: \"{url}\"\n"));
            if !extra.is_empty() {
                yaml.push_str(&format!("    {extra}\n"));
            }
        }
        let rules: Vec<String> = self.rule_paths.iter().map(|p| format!("\"{p}\"")).collect();
        yaml.push_str(&format!("rules: [{}]\n", rules.join(", ")));
        yaml.push_str(&self.extra);
        let path = self.dir.path().join("dbjanitor.yaml");
        // Written atomically: racing processes may read it while another run rewrites it.
        let mut tmp = tempfile::NamedTempFile::new_in(self.dir.path()).expect("temp config");
        std::io::Write::write_all(&mut tmp, yaml.as_bytes()).expect("write config");
        tmp.persist(&path).expect("rename config");
        path
    }

    fn command(&self, args: &[&str]) -> Command {
        let config = self.write_config();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbjanitor"));
        cmd.arg("--config")
            .arg(config)
            .args(args)
            .current_dir(self.dir.path());
        cmd.env_remove("RUST_LOG").env_remove("DBJANITOR_CONFIG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs the binary to completion.
    pub fn run(&self, args: &[&str]) -> RunOutput {
        let output = self.command(args).output().expect("run dbjanitor");
        RunOutput::from(output)
    }

    /// Starts the binary without waiting (stdout and stderr captured).
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dbjanitor")
    }

    /// `n` processes of the binary started at once (a race between
    /// replicas or timers), waited for; their outputs in start order.
    pub fn run_at_once(&self, n: usize, args: &[&str]) -> Vec<RunOutput> {
        let children: Vec<Child> = (0..n).map(|_| self.spawn(args)).collect();
        children
            .into_iter()
            .map(|c| RunOutput::from(c.wait_with_output().expect("wait")))
            .collect()
    }
}

/// What one run of the binary produced.
#[derive(Debug)]
pub struct RunOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for RunOutput {
    fn from(output: Output) -> Self {
        RunOutput {
            // A signal-killed process has no code; -1 never matches an expected status.
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl RunOutput {
    /// The JSON report (`--output json`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// The record of one (rule, database) pair in the JSON report.
    pub fn record(&self, rule: &str, database: &str) -> Value {
        let json = self.json();
        json["rules"]
            .as_array()
            .and_then(|rules| {
                rules
                    .iter()
                    .find(|r| r["rule"] == rule && r["database"] == database)
                    .cloned()
            })
            .unwrap_or_else(|| panic!("no record for {rule} @ {database} in:\n{}", self.stdout))
    }

    /// The outcome of one pair.
    pub fn outcome(&self, rule: &str, database: &str) -> String {
        self.record(rule, database)["outcome"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Panics with the whole output unless the exit status is `expected`.
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code, expected,
            "unexpected exit status\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}
