//! Issue 9, the soak's ordering failure: messages about one (rule, database)
//! pair from two daemon replicas arrive in the order they were decided,
//! although each is delivered outside the pair's claim.
//!
//! Replica A's webhook answers after 4 s, replica B's at once; the rule's
//! state flips every 3 s. Whenever A decides a change and B decides the next
//! one while A is still delivering, B's message used to arrive first (the
//! soak: `new failed` after `recovered`). The receiver here records a
//! message when it answers it (that is when the message is in the channel
//! people read), in that order.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::audit_util::audited;
use crate::daemon_util::eventually;
use crate::daemon_util::{FLIP, alternate, stop};
use crate::util::{Case, Engine, TestDb};

on_every_engine!(two_replicas_messages_arrive_in_decision_order);

/// How long the receiver takes to answer a message posted to `/slow`.
const SLOW: Duration = Duration::from_secs(4);

/// A message as the receiver took it: the path it was posted to, its body.
type Taken = Arc<Mutex<Vec<(String, Value)>>>;

/// A webhook receiver on loopback that answers `/slow` after [`SLOW`] and
/// anything else at once, and records each message when it answers it.
async fn receiver() -> (String, Taken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let taken: Taken = Arc::default();
    let keep = Arc::clone(&taken);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(take_one(socket, Arc::clone(&keep)));
        }
    });
    (base, taken)
}

/// Reads one request (head, then `content-length` bytes), waits if it was
/// posted to `/slow`, records it, answers 200 and closes.
async fn take_one(mut socket: TcpStream, taken: Taken) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (at + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    if path.starts_with("/slow") {
        tokio::time::sleep(SLOW).await;
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
    taken.lock().expect("lock").push((path, body));
    let _ = socket
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await;
}

/// A webhook notifier `ops` at `url`, patient enough for the slow path.
fn webhook(url: &str) -> String {
    format!(
        "notifiers:\n  ops:\n    webhook: {{ url: \"{url}\", timeout: 10s, retries: 0, deadline: 15s }}\n"
    )
}

/// The rule's database (PostgreSQL), the audit database on `audit_engine`,
/// the receiver, and two cases on them with the flipping rule: the first
/// tells through `/slow`, the second through `/fast`.
async fn two_tellers(audit_engine: Engine) -> (TestDb, TestDb, [Case; 2], Taken) {
    let app = TestDb::new(Engine::Postgres).await;
    let audit = TestDb::new(audit_engine).await;
    let (base, taken) = receiver().await;
    let cases = ["slow", "fast"].map(|path| {
        let case = audited(&app, &audit)
            .rule(FLIP)
            .config(&webhook(&format!("{base}/{path}")));
        case.write_config();
        case
    });
    (app, audit, cases, taken)
}

/// Two daemon replicas (A slow to deliver, B fast) on one flipping pair:
/// the messages arrive in decision order ([`arrived_in_decision_order`]).
/// The audit table on each engine; the rule's database is PostgreSQL.
async fn two_replicas_messages_arrive_in_decision_order(audit_engine: Engine) {
    let (_app, audit, [slow, fast], taken) = two_tellers(audit_engine).await;
    let a = slow.spawn(&["daemon"]);
    let b = fast.spawn(&["daemon"]);
    // Until B has taken over from A a few times (or enough messages came).
    eventually("messages from both replicas, B right after A", async || {
        let got = taken.lock().expect("lock").clone();
        let handoffs = got
            .windows(2)
            .filter(|w| w[0].0 == "/slow" && w[1].0 == "/fast")
            .count();
        (handoffs >= 2 || got.len() >= 14).then_some(())
    })
    .await;
    stop(a).await.assert_code(0);
    stop(b).await.assert_code(0);
    arrived_in_decision_order(&audit, &taken).await;
}

/// The receiver took the messages in the order they were decided (the audit
/// table's notified rows in insertion order, each inserted under the pair's
/// claim), each state change once, and at least once the fast teller decided
/// the change right after one of the slow one's (the case that overtook).
async fn arrived_in_decision_order(audit: &TestDb, taken: &Taken) {
    let got = taken.lock().expect("lock").clone();
    let arrived: Vec<String> = got
        .iter()
        .map(|(_, body)| body["runs"][0]["run_id"].as_str().unwrap_or("?").to_owned())
        .collect();
    let decided = audit
        .strings("SELECT run_id FROM dbjanitor_runs WHERE notified ORDER BY id")
        .await;
    let paths: Vec<&str> = got.iter().map(|(path, _)| path.as_str()).collect();
    // A message cut by the daemons' shutdown may be on one side only.
    let arrived_told: Vec<&String> = arrived.iter().filter(|id| decided.contains(id)).collect();
    let decided_arrived: Vec<&String> = decided.iter().filter(|id| arrived.contains(id)).collect();
    assert!(
        arrived_told.len() + 1 >= arrived.len(),
        "{arrived:?} vs {decided:?}"
    );
    assert_eq!(
        arrived_told, decided_arrived,
        "arrival order is not decision order; paths: {paths:?}"
    );
    // Each change once: found (new) and clean (recovered) alternate.
    let told: Vec<(String, String)> = got
        .iter()
        .map(|(_, body)| {
            let run = &body["runs"][0];
            let text = |key: &str| run[key].as_str().unwrap_or("?").to_owned();
            (text("outcome"), text("change"))
        })
        .collect();
    alternate(&told);
    assert!(
        paths.windows(2).any(|w| w == ["/slow", "/fast"]),
        "the fast teller never decided right after the slow one: {paths:?}"
    );
}

/// The one-shot `run` path: a daemon slow to deliver (A) and a timer whose
/// webhook answers at once (B, `run` every 200 ms) on one flipping pair.
/// The timer's digest waits for the daemon's message decided before it;
/// before, it overtook it. PostgreSQL audit table.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_and_a_timer_messages_arrive_in_decision_order() {
    let (_app, audit, [slow, timer], taken) = two_tellers(Engine::Postgres).await;
    let daemon = slow.spawn(&["daemon"]);
    let until = Instant::now() + Duration::from_mins(1);
    while Instant::now() < until {
        timer.run(&["run"]).assert_code(0);
        let got = taken.lock().expect("lock").clone();
        let handoffs = got
            .windows(2)
            .filter(|w| w[0].0 == "/slow" && w[1].0 == "/fast")
            .count();
        if handoffs >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(daemon).await.assert_code(0);
    arrived_in_decision_order(&audit, &taken).await;
}
