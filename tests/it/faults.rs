//! Test harness: a fault-injection TCP proxy between the binary under test and
//! a real database server.
//!
//! Why: the defects that matter most in a janitor happen when the network or
//! a server misbehaves mid-run — a stalled audit database, a COMMIT whose
//! reply never arrives, a connection cut in the middle of a fix. Real
//! servers do not misbehave on demand, so the tests put a [`FaultProxy`] in
//! front of them and make the *wire* misbehave, while the binary and the
//! server stay real.
//!
//! How:
//!
//! ```ignore
//! let db = TestDb::new(Engine::Postgres).await;
//! let proxy = FaultProxy::in_front_of(db.url());      // listens on 127.0.0.1:<random>
//! let url = proxy.url_for(db.url());                  // same URL, proxy port, TLS off
//! proxy.drop_replies_after(b"COMMIT");                // the next COMMIT's reply is lost
//! let out = case.database("app", &url).run(&["run"]); // the binary talks through the proxy
//! assert!(proxy.connections() > 0);
//! ```
//!
//! - [`FaultProxy::stall`] / [`FaultProxy::release`]: hold every byte in both
//!   directions, for current and future connections (sockets stay open).
//!   [`FaultProxy::stall_when`] starts stalling when a pattern is seen in
//!   client→server bytes, [`When::Before`] or [`When::After`] the server gets
//!   the chunk that holds it.
//! - [`FaultProxy::drop_replies_after`]: once the pattern has passed to the
//!   server, that connection never hears from the server again (it stays
//!   open and silent): a lost COMMIT reply.
//! - [`FaultProxy::cut`] / [`FaultProxy::cut_when`]: close every connection
//!   abruptly: RST to the client; the server gets a FIN, so what it already
//!   received is still processed (as when a network path dies after a send).
//! - Counters: [`FaultProxy::connections`], [`FaultProxy::bytes_up`] (client to
//!   server), [`FaultProxy::bytes_down`].
//!
//! Triggers (`*_when`, `drop_replies_after`) fire once, on the first
//! connection that sends the pattern, then disarm. Patterns are matched in
//! plaintext (hence `sslmode=disable` / `ssl-mode=DISABLED` in
//! [`FaultProxy::url_for`]) and may straddle TCP reads: each connection keeps
//! the last [`MAX_PATTERN`] bytes it forwarded.
//!
//! The proxy runs on its own thread and runtime, so a test may block its own
//! thread (e.g. `Case::run`) without starving it, and controls are plain
//! synchronous calls. Dropping the proxy shuts that runtime down: every
//! connection closes and nothing is left running; nothing in it waits
//! without an end once it is dropped.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Longest pattern a trigger may hold (the tail each connection keeps, plus one).
pub const MAX_PATTERN: usize = 256;

/// Whether a triggered fault applies before or after the server gets the
/// chunk that completed the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// The chunk is held (stall) or never sent (cut).
    Before,
    /// The chunk reaches the server, then the fault applies.
    After,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Stall(When),
    Cut(When),
    DropReplies,
}

struct Trigger {
    pattern: Vec<u8>,
    action: Action,
}

/// State shared by the controls and every connection task.
struct Shared {
    upstream: SocketAddr,
    stalled: watch::Sender<bool>,
    cuts: watch::Sender<u64>,
    triggers: Mutex<Vec<Trigger>>,
    connections: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// A TCP proxy on 127.0.0.1 that forwards to one upstream server and
/// injects faults on command. See the module documentation.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy forwarding every accepted connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("fault proxy runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("fault proxy bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("fault proxy address");
        let shared = Arc::new(Shared {
            upstream,
            stalled: watch::Sender::new(false),
            cuts: watch::Sender::new(0),
            triggers: Mutex::new(Vec::new()),
            connections: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        });
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(listener).expect("tokio listener")
        };
        runtime.spawn(accept_loop(listener, shared.clone()));
        FaultProxy {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// Starts a proxy in front of the server of a `postgres://` or `mysql://` URL.
    pub fn in_front_of(url: &str) -> FaultProxy {
        let parsed = url::Url::parse(url).expect("database URL");
        let host = parsed.host_str().expect("host in database URL");
        let port = parsed
            .port_or_known_default()
            .unwrap_or(match parsed.scheme() {
                "postgres" | "postgresql" => 5432,
                _ => 3306,
            });
        let upstream = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .expect("resolve database host")
            .next()
            .expect("an address for the database host");
        FaultProxy::start(upstream)
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` with host and port replaced by the proxy's, and TLS turned off
    /// (PostgreSQL `sslmode=disable`, MySQL `ssl-mode=DISABLED`) so that
    /// patterns can be matched in the bytes.
    pub fn url_for(&self, url: &str) -> String {
        let mut parsed = url::Url::parse(url).expect("database URL");
        parsed.set_host(Some("127.0.0.1")).expect("set host");
        parsed.set_port(Some(self.addr.port())).expect("set port");
        let (key, value) = match parsed.scheme() {
            "postgres" | "postgresql" => ("sslmode", "disable"),
            _ => ("ssl-mode", "DISABLED"),
        };
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, _)| k != key)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        parsed
            .query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .append_pair(key, value);
        parsed.to_string()
    }

    /// Holds every byte in both directions, on current and future connections.
    pub fn stall(&self) {
        self.shared.stalled.send_replace(true);
    }

    /// Forwards again, held bytes first.
    pub fn release(&self) {
        self.shared.stalled.send_replace(false);
    }

    /// Whether the proxy is stalled now (e.g. after a `stall_when` fired).
    pub fn is_stalled(&self) -> bool {
        *self.shared.stalled.borrow()
    }

    /// Stalls as soon as `pattern` is seen in client→server bytes.
    pub fn stall_when(&self, pattern: &[u8], when: When) {
        self.arm(pattern, Action::Stall(when));
    }

    /// Once `pattern` has been forwarded to the server, that connection's
    /// server→client bytes are discarded from then on: a lost reply.
    pub fn drop_replies_after(&self, pattern: &[u8]) {
        self.arm(pattern, Action::DropReplies);
    }

    /// Closes every open connection abruptly (RST to the client, FIN to the server).
    pub fn cut(&self) {
        self.shared.cuts.send_modify(|n| *n += 1);
    }

    /// Cuts every connection as soon as `pattern` is seen in client→server bytes.
    pub fn cut_when(&self, pattern: &[u8], when: When) {
        self.arm(pattern, Action::Cut(when));
    }

    /// Disarms every trigger that has not fired yet.
    pub fn disarm(&self) {
        self.shared.triggers.lock().expect("triggers").clear();
    }

    /// Whether no trigger is left armed (they all fired, or none was set).
    pub fn triggers_fired(&self) -> bool {
        self.shared.triggers.lock().expect("triggers").is_empty()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Bytes forwarded from clients to the server.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::SeqCst)
    }

    /// Bytes forwarded from the server to clients.
    pub fn bytes_down(&self) -> u64 {
        self.shared.bytes_down.load(Ordering::SeqCst)
    }

    fn arm(&self, pattern: &[u8], action: Action) {
        assert!(
            !pattern.is_empty() && pattern.len() <= MAX_PATTERN,
            "a pattern holds 1 to {MAX_PATTERN} bytes"
        );
        self.shared
            .triggers
            .lock()
            .expect("triggers")
            .push(Trigger {
                pattern: pattern.to_vec(),
                action,
            });
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Drops every task, and with them every socket; does not wait for anything.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(serve(client, shared.clone()));
    }
}

/// One proxied connection: both directions until EOF on both, or a cut.
async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    let mut cuts = shared.cuts.subscribe();
    let Ok(mut server) = TcpStream::connect(shared.upstream).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let silenced = AtomicBool::new(false);
    let cut = {
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let up = pump_up(&mut client_read, &mut server_write, &shared, &silenced);
        let down = pump_down(&mut server_read, &mut client_write, &shared, &silenced);
        tokio::select! {
            _ = async { tokio::join!(up, down) } => false,
            _ = cuts.changed() => true,
        }
    };
    if cut {
        // RST: the client sees "connection reset", not an orderly end.
        let _ = client.set_zero_linger();
        drop(client);
        let _ = server.shutdown().await;
    }
}

/// Waits while the proxy is stalled.
async fn unstalled(shared: &Shared) {
    let mut stalled = shared.stalled.subscribe();
    let _ = stalled.wait_for(|s| !*s).await;
}

/// Client to server: counts, matches triggers, holds while stalled.
async fn pump_up(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    to: &mut tokio::net::tcp::WriteHalf<'_>,
    shared: &Shared,
    silenced: &AtomicBool,
) {
    let mut tail = Tail::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let actions = fired(shared, &tail, chunk);
        tail.push(chunk);
        let mut after = Vec::new();
        let mut send = true;
        for action in actions {
            match action {
                Action::DropReplies => silenced.store(true, Ordering::SeqCst),
                Action::Stall(When::Before) => {
                    shared.stalled.send_replace(true);
                }
                Action::Cut(When::Before) => {
                    shared.cuts.send_modify(|c| *c += 1);
                    send = false;
                }
                other => after.push(other),
            }
        }
        if send {
            unstalled(shared).await;
            if to.write_all(chunk).await.is_err() {
                break;
            }
            shared.bytes_up.fetch_add(n as u64, Ordering::SeqCst);
        }
        for action in after {
            if let Action::Stall(_) = action {
                shared.stalled.send_replace(true);
            } else {
                shared.cuts.send_modify(|c| *c += 1);
            }
        }
        if !send {
            // Cut before: the chunk never reaches the server; wait for the cut.
            std::future::pending::<()>().await;
        }
    }
    let _ = to.shutdown().await;
}

/// Server to client: counts, holds while stalled, discards once silenced.
async fn pump_down(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    to: &mut tokio::net::tcp::WriteHalf<'_>,
    shared: &Shared,
    silenced: &AtomicBool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        unstalled(shared).await;
        if silenced.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        shared.bytes_down.fetch_add(n as u64, Ordering::SeqCst);
    }
    if !silenced.load(Ordering::SeqCst) {
        let _ = to.shutdown().await;
    }
}

/// Removes and returns the triggers whose pattern ends inside `chunk`.
fn fired(shared: &Shared, tail: &Tail, chunk: &[u8]) -> Vec<Action> {
    let mut triggers = shared.triggers.lock().expect("triggers");
    let mut actions = Vec::new();
    triggers.retain(|t| {
        let hit = tail.completes(&t.pattern, chunk);
        if hit {
            actions.push(t.action);
        }
        !hit
    });
    actions
}

/// The last bytes of a stream, so that a pattern split across reads is found.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
}

impl Tail {
    /// Whether `pattern` occurs in the stream so far plus `chunk`, ending inside `chunk`.
    fn completes(&self, pattern: &[u8], chunk: &[u8]) -> bool {
        let mut window = self.bytes.clone();
        window.extend_from_slice(chunk);
        let tail_len = self.bytes.len();
        window
            .windows(pattern.len())
            .enumerate()
            .any(|(start, w)| w == pattern && start + pattern.len() > tail_len)
    }

    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        let excess = self.bytes.len().saturating_sub(MAX_PATTERN - 1);
        self.bytes.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::{Connection, Executor};

    use super::*;
    use crate::util::{Engine, TestDb};

    const BOUND: Duration = Duration::from_secs(3);
    const GENEROUS: Duration = Duration::from_secs(30);

    #[test]
    fn a_pattern_split_across_reads_is_found_once() {
        let mut tail = Tail::default();
        assert!(!tail.completes(b"COMMIT", b"SELECT 1; COM"));
        tail.push(b"SELECT 1; COM");
        assert!(tail.completes(b"COMMIT", b"MIT"));
        tail.push(b"MIT");
        // Already seen: a trigger armed later does not fire on old bytes.
        assert!(!tail.completes(b"COMMIT", b" more"));
        for byte in b"xxCOMMI" {
            assert!(!tail.completes(b"COMMIT", &[*byte]) || *byte == b'T');
            tail.push(&[*byte]);
        }
        assert!(tail.completes(b"COMMIT", b"T"));
    }

    #[test]
    fn url_for_points_at_the_proxy_without_tls() {
        let proxy = FaultProxy::start(([127, 0, 0, 1], 1).into());
        let port = proxy.addr().port();
        assert_eq!(
            proxy.url_for("postgres://postgres@127.0.0.1:5432/db?sslmode=require"),
            format!("postgres://postgres@127.0.0.1:{port}/db?sslmode=disable")
        );
        assert_eq!(
            proxy.url_for("mysql://root:pw@localhost:3306/db"),
            format!("mysql://root:pw@127.0.0.1:{port}/db?ssl-mode=DISABLED")
        );
    }

    /// `SELECT 1` through the proxy; returns the proxy, the database and its proxied URL.
    async fn proxied(engine: Engine) -> (FaultProxy, TestDb, String) {
        let db = TestDb::new(engine).await;
        let proxy = FaultProxy::in_front_of(db.url());
        let url = proxy.url_for(db.url());
        (proxy, db, url)
    }

    async fn query(url: &str, engine: Engine, sql: &'static str) -> Result<(), sqlx::Error> {
        match engine {
            Engine::Postgres => {
                let mut c = sqlx::PgConnection::connect(url).await?;
                c.execute(sql).await.map(|_| ())
            }
            _ => {
                let mut c = sqlx::MySqlConnection::connect(url).await?;
                c.execute(sql).await.map(|_| ())
            }
        }
    }

    async fn a_query_goes_through(engine: Engine) {
        let (proxy, _db, url) = proxied(engine).await;
        query(&url, engine, "SELECT 1")
            .await
            .expect("query through the proxy");
        assert_eq!(proxy.connections(), 1);
        assert!(proxy.bytes_up() > 0 && proxy.bytes_down() > 0);
    }

    async fn stall_holds_a_query_until_release(engine: Engine) {
        let (proxy, _db, url) = proxied(engine).await;
        proxy.stall();
        let mut running = tokio::spawn(async move { query(&url, engine, "SELECT 1").await });
        assert!(
            tokio::time::timeout(BOUND, &mut running).await.is_err(),
            "a stalled proxy let the query finish"
        );
        assert_eq!(proxy.bytes_down(), 0);
        proxy.release();
        let done = tokio::time::timeout(GENEROUS, running)
            .await
            .expect("the query finishes after release")
            .expect("task");
        done.expect("the query succeeds after release");
    }

    async fn stall_when_holds_the_matching_query(engine: Engine) {
        let (proxy, _db, url) = proxied(engine).await;
        proxy.stall_when(b"SELECT 42", When::Before);
        let mut running = tokio::spawn(async move { query(&url, engine, "SELECT 42").await });
        assert!(
            tokio::time::timeout(BOUND, &mut running).await.is_err(),
            "the query ran through a stall"
        );
        assert!(proxy.is_stalled() && proxy.triggers_fired());
        proxy.release();
        let done = tokio::time::timeout(GENEROUS, running)
            .await
            .expect("the query finishes after release")
            .expect("task");
        done.expect("the query succeeds after release");
    }

    async fn a_lost_commit_reply_leaves_the_row_committed(engine: Engine) {
        let (proxy, db, url) = proxied(engine).await;
        db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
        proxy.drop_replies_after(b"COMMIT");
        let client = async {
            match engine {
                Engine::Postgres => {
                    let mut c = sqlx::PgConnection::connect(&url).await?;
                    let mut tx = c.begin().await?;
                    tx.execute("INSERT INTO t VALUES (1)").await?;
                    tx.commit().await
                }
                _ => {
                    let mut c = sqlx::MySqlConnection::connect(&url).await?;
                    let mut tx = c.begin().await?;
                    tx.execute("INSERT INTO t VALUES (1)").await?;
                    tx.commit().await
                }
            }
        };
        let result = tokio::time::timeout(BOUND, client).await;
        assert!(result.is_err(), "the client heard back: {result:?}");
        assert!(proxy.triggers_fired());
        // The server got the COMMIT: the row is there for everyone else.
        assert_eq!(db.scalar("SELECT count(*) FROM t").await, 1);
    }

    async fn cut_gives_the_client_an_error(engine: Engine) {
        let (proxy, _db, url) = proxied(engine).await;
        let result = match engine {
            Engine::Postgres => {
                let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
                proxy.cut();
                tokio::time::timeout(GENEROUS, c.execute("SELECT 1"))
                    .await
                    .map(|r| r.map(|_| ()))
            }
            _ => {
                let mut c = sqlx::MySqlConnection::connect(&url).await.expect("connect");
                proxy.cut();
                tokio::time::timeout(GENEROUS, c.execute("SELECT 1"))
                    .await
                    .map(|r| r.map(|_| ()))
            }
        };
        let result = result.expect("the client notices the cut");
        assert!(result.is_err(), "a query went through a cut connection");
    }

    async fn cut_when_interrupts_a_running_query(engine: Engine) {
        let (proxy, _db, url) = proxied(engine).await;
        let (pattern, sleep): (&[u8], _) = match engine {
            Engine::Postgres => (b"pg_sleep", "SELECT pg_sleep(60)"),
            _ => (b"SLEEP(", "SELECT SLEEP(60)"),
        };
        proxy.cut_when(pattern, When::After);
        let result = tokio::time::timeout(GENEROUS, query(&url, engine, sleep))
            .await
            .expect("the client notices the cut well before the sleep ends");
        assert!(result.is_err(), "the query survived a cut");
        assert!(proxy.triggers_fired());
        // Later connections are not affected.
        query(&url, engine, "SELECT 1")
            .await
            .expect("a new connection after the cut");
        assert_eq!(proxy.connections(), 2);
    }

    macro_rules! on_both_servers {
        ($($name:ident),* $(,)?) => {$(
            mod $name {
                use crate::util::Engine;
                #[tokio::test(flavor = "multi_thread")]
                async fn postgres() { super::$name(Engine::Postgres).await }
                #[tokio::test(flavor = "multi_thread")]
                async fn mysql() { super::$name(Engine::MySql).await }
            }
        )*};
    }

    on_both_servers!(
        a_query_goes_through,
        stall_holds_a_query_until_release,
        stall_when_holds_the_matching_query,
        a_lost_commit_reply_leaves_the_row_committed,
        cut_gives_the_client_an_error,
        cut_when_interrupts_a_running_query,
    );
}
