//! Helpers for tests that run `dbjanitor daemon` processes (`daemon`,
//! `history`, `monitoring`, `replica`, `tell_order`): free ports, a plain
//! HTTP GET against the probes, polling with a deadline, SIGTERM and a
//! bounded wait for the exit, the flipping rule two replicas tell about, and
//! the wait for a slow fix to be under way. They live here so that no test
//! module borrows another's helpers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::util::{Engine, RunOutput, TestDb};

/// How long `eventually` and `exited` wait: generous, since tests poll for a
/// state rather than assert timing.
pub(crate) const DEADLINE: Duration = Duration::from_secs(90);

/// A loopback port nobody listens on, for a daemon's `--listen`.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `(status, headers and body)` of `GET path`, or `None` while nobody listens.
pub(crate) fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response))
}

/// The body of an HTTP response read by `http_get` (after the headers).
pub(crate) fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Polls `check` until it returns `Some`, panicking with `what` after the deadline.
pub(crate) async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends SIGTERM to a daemon, as a supervisor stops it.
pub(crate) fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits for the daemon to exit on its own (it must, after SIGTERM).
pub(crate) async fn exited(mut child: Child) -> RunOutput {
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = RunOutput::from(child.wait_with_output().expect("wait"));
            panic!(
                "the daemon did not exit after SIGTERM\nstderr:\n{}",
                out.stderr
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    RunOutput::from(child.wait_with_output().expect("wait"))
}

/// SIGTERM, then waits (bounded) for the exit.
pub(crate) async fn stop(child: Child) -> RunOutput {
    sigterm(&child);
    exited(child).await
}

/// A report-only rule whose state flips every 3 s (found, clean, found, ...).
pub(crate) const FLIP: &str = "name: flip\ndatabase: main\nschedule: \"@every 1s\"\nnotify: [ops]\n\
    detect: SELECT 1 AS x WHERE floor(extract(epoch FROM clock_timestamp()) / 3)::bigint % 2 = 0\n";

/// (outcome, change) of each message in arrival order: `found` (new) and
/// `clean` (recovered) alternate, never the same state twice in a row.
pub(crate) fn alternate(told: &[(String, String)]) {
    for pair in told.windows(2) {
        assert_ne!(
            pair[0].0, pair[1].0,
            "the same state told twice in a row: {told:?}"
        );
    }
    for (outcome, change) in told {
        let expected = if outcome == "found" {
            "new"
        } else {
            "recovered"
        };
        assert_eq!(change, expected, "{told:?}");
    }
}

/// Polls until the fix's UPDATE has run and the slow statement is executing.
pub(crate) async fn wait_until_update_ran(db: &TestDb) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sleeping = match db.engine {
            Engine::Postgres => Some(format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND state = 'active' AND query LIKE 'SELECT pg_sleep(5)%'",
                db.name
            )),
            Engine::MySql => Some(format!(
                "SELECT count(*) FROM information_schema.processlist WHERE db = '{}' AND info LIKE 'DO SLEEP(5)%'",
                db.name
            )),
            Engine::Sqlite => None,
        };
        let running = match sleeping {
            Some(sql) => db.scalar(&sql).await > 0,
            None => {
                // The rollback journal exists while a write transaction is open.
                let path = db.sqlite_path().expect("sqlite path");
                std::path::Path::new(&format!("{}-journal", path.display())).exists()
            }
        };
        if running {
            // Give the slow statement a moment to be well under way.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}: the fix never reached its slow statement",
            db.engine
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
