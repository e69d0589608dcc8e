//! After a COMMIT without a reply, and before choosing a lock: whether the
//! transaction committed (`pg_xact_status` from a fresh connection), and
//! whether the connection goes through a pooler.

use std::time::{Duration, Instant};

use tokio_postgres::types::Type;

use super::PG_13;
use crate::db::CommitOutcome;
use crate::db::pgconn::PgConn;
use crate::secret::SecretUrl;

/// Whether the connection goes through a pooler (or any proxy): the server's
/// own address and port differ from the ones dbjanitor connected to. A
/// pooler on another host with the same port is told apart by the address;
/// a port-forward or a Kubernetes Service in front of the server also counts
/// as "a pooler" (a lease then, which is safe everywhere).
pub(crate) async fn behind_pooler(
    conn: &PgConn,
    server_addr: Option<String>,
    server_port: Option<String>,
    port_setting: Option<String>,
) -> bool {
    let port = conn.port.to_string();
    let Some(host) = conn.host.as_deref() else {
        return true;
    };
    if host.starts_with('/') {
        // Unix socket: the socket file is named after the port.
        return port_setting.as_deref() != Some(port.as_str());
    }
    if server_port.as_deref() != Some(port.as_str()) {
        return true;
    }
    let Some(addr) = server_addr.and_then(|a| a.parse::<std::net::IpAddr>().ok()) else {
        return true;
    };
    match tokio::net::lookup_host((host, conn.port)).await {
        Ok(mut resolved) => !resolved.any(|s| s.ip() == addr),
        Err(_) => true,
    }
}

/// Asks a new connection what became of transaction `xid`.
pub(super) async fn xact_status(
    url: &SecretUrl,
    xid: &str,
    version: u32,
    bound: Duration,
) -> CommitOutcome {
    let conn = match PgConn::connect(url, "dbjanitor", Duration::from_secs(10)).await {
        Ok(conn) => conn,
        Err(e) => {
            return CommitOutcome::Unknown(format!(
                "the COMMIT reply was lost and the server cannot be asked: {e}"
            ));
        }
    };
    let status_sql = if version >= PG_13 {
        "SELECT pg_xact_status($1::text::xid8)"
    } else {
        "SELECT txid_status($1::text::bigint)"
    };
    // The old backend may still hold the transaction open, waiting for a
    // COMMIT that never came: end it, so the answer comes at once.
    let terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
        WHERE backend_xid::text = ($1::text::numeric % 4294967296)::text";
    let _ = conn.query_one_stmt(terminate, &[(&xid, Type::TEXT)]).await;
    let deadline = Instant::now() + bound;
    let outcome = loop {
        let rows = conn.query_one_stmt(status_sql, &[(&xid, Type::TEXT)]).await;
        let status: Option<String> = match rows {
            Ok(rows) => rows.first().and_then(|r| r.try_get(0).ok()),
            Err(e) => break CommitOutcome::Unknown(format!("pg_xact_status failed: {e}")),
        };
        match status.as_deref() {
            Some("committed") => break CommitOutcome::Committed,
            Some("aborted") => break CommitOutcome::RolledBack,
            Some("in progress") if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some("in progress") => {
                break CommitOutcome::Unknown(format!(
                    "transaction {xid} was still in progress after {}s",
                    bound.as_secs()
                ));
            }
            _ => {
                break CommitOutcome::Unknown(format!(
                    "the server no longer knows transaction {xid}"
                ));
            }
        }
    };
    conn.close().await;
    outcome
}
