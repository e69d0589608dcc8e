//! The daemon's HTTP endpoints, served by axum on `--listen`.
//!
//! - `/livez`: 200 while the process serves requests. It says nothing about
//!   the databases, so a liveness probe on it restarts a wedged process, not a
//!   healthy one whose database is down (restarting would not help that).
//! - `/healthz`: readiness. 200 once the config is loaded (always true by the
//!   time the server starts) and every database of the config answered the
//!   last health check; 503 with one line per failing database otherwise, and
//!   while shutting down.
//! - `/metrics`: the Prometheus metrics (OpenMetrics text).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::db::{ConnectSettings, DatabaseConfig, Session};
use crate::metrics::{CONTENT_TYPE, DaemonMetrics};

/// How often every database is checked.
pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_secs(15);

/// How long one database may take to answer a health check.
pub(crate) const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/healthz` reports.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Per database: `None` when it answered, else why not. Empty until the
    /// first round of checks has finished.
    databases: Mutex<BTreeMap<String, Option<String>>>,
    stopping: AtomicBool,
}

impl Health {
    /// Marks the daemon as shutting down: not ready any more.
    pub(crate) fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// `(ready, body)` for `/healthz`.
    fn report(&self) -> (bool, String) {
        if self.stopping.load(Ordering::SeqCst) {
            return (false, "stopping\n".to_owned());
        }
        let Ok(databases) = self.databases.lock() else {
            return (false, "health state unavailable\n".to_owned());
        };
        if databases.is_empty() {
            return (false, "starting: databases not checked yet\n".to_owned());
        }
        let mut ready = true;
        let mut body = String::new();
        for (name, problem) in databases.iter() {
            match problem {
                None => body.push_str(&format!("database {name}: ok\n")),
                Some(e) => {
                    ready = false;
                    body.push_str(&format!("database {name}: {e}\n"));
                }
            }
        }
        (ready, body)
    }
}

/// Opens a session on `db` as a rule run does (`db::open`) and closes it again: does it answer?
async fn ping(db: &DatabaseConfig) -> Result<(), String> {
    let settings = ConnectSettings {
        timeout: HEALTH_TIMEOUT,
        lock_wait: Duration::ZERO,
    };
    let check = async {
        crate::db::open(db, &settings).await?.close().await;
        Ok::<(), crate::db::DbError>(())
    };
    match tokio::time::timeout(HEALTH_TIMEOUT * 2, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer within {}s",
            (HEALTH_TIMEOUT * 2).as_secs()
        )),
    }
}

/// Checks every database every [`HEALTH_INTERVAL`] until `stop`.
pub(super) async fn watch(
    databases: Vec<Arc<DatabaseConfig>>,
    health: Arc<Health>,
    metrics: Arc<DaemonMetrics>,
    stop: CancellationToken,
) {
    loop {
        let results = futures_util::future::join_all(
            databases
                .iter()
                .map(|db| async move { (db.name.clone(), ping(db).await) }),
        )
        .await;
        let mut map = BTreeMap::new();
        for (name, result) in results {
            metrics.set_database_up(&name, result.is_ok());
            if let Err(e) = &result {
                tracing::warn!(database = %name, error = %e, "health check: the database does not answer");
            }
            map.insert(name, result.err());
        }
        if let Ok(mut current) = health.databases.lock() {
            *current = map;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Arc<DaemonMetrics>,
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn healthz(State(state): State<AppState>) -> Response {
    let (ready, body) = state.health.report();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}

/// Serves the endpoints on `listener` until `stop` is cancelled.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics_registry: Arc<DaemonMetrics>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(AppState {
            health,
            metrics: metrics_registry,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}
