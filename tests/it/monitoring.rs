//! The monitoring files (`monitoring/`) reference only metrics dbjanitor
//! really serves: every metric name in the Grafana dashboard's queries and in
//! the Prometheus alert expressions is looked up in the samples of a real
//! daemon's `/metrics` and of a real `run --metrics-file`. (`promtool check
//! rules` and `promtool test rules` in `.ci/run` check the rules themselves.)

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::audit_util::{STUCK, audited, jobs};
use crate::daemon_util::{body, free_port, http_get};
use crate::util::{Engine, TestDb, repo};

/// Every `dbjanitor_*` metric name in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("dbjanitor_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The sample names of a Prometheus or OpenMetrics text: `name{...} v` or `name v`.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Every `expr` of the Grafana dashboard's targets, nested rows included.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut stack = vec![dashboard];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(expr)) = map.get("expr") {
                    exprs.push(expr.clone());
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    exprs
}

/// Every alert's `expr` in a Prometheus rules file.
fn alert_exprs(rules: &Value) -> Vec<String> {
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .filter_map(|rule| rule["expr"].as_str().map(str::to_owned))
        .collect()
}

/// Names used by `exprs` that `served` does not contain.
fn unknown(exprs: &[String], served: &BTreeSet<String>) -> BTreeSet<String> {
    exprs
        .iter()
        .flat_map(|e| metric_names(e))
        .filter(|name| !served.contains(name))
        .collect()
}

#[test]
fn an_unknown_metric_name_is_found() {
    let served: BTreeSet<String> = ["dbjanitor_runs_total".to_owned()].into();
    let exprs = vec![
        "increase(dbjanitor_runs_total{outcome=\"failed\"}[1h]) > 0".to_owned(),
        "time() - dbjanitor_last_sucess_timestamp_seconds > 60".to_owned(),
    ];
    assert_eq!(
        unknown(&exprs, &served),
        ["dbjanitor_last_sucess_timestamp_seconds".to_owned()].into()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metric_names_exist() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("monitoring/grafana/dbjanitor.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let rules: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo("monitoring/prometheus/dbjanitor-alerts.yaml"))
            .expect("alert rules"),
    )
    .expect("alert rules YAML");
    let mut exprs = dashboard_exprs(&dashboard);
    let panels = exprs.len();
    exprs.extend(alert_exprs(&rules));
    assert!(panels >= 10, "dashboard queries found: {panels}");
    assert!(
        exprs.len() >= panels + 10,
        "alert expressions found: {}",
        exprs.len() - panels
    );

    // What a daemon serves, once a pair has run.
    let app = jobs(Engine::Sqlite).await;
    let audit = TestDb::new(Engine::Sqlite).await;
    let case = audited(&app, &audit).rule(&format!("{STUCK}schedule: \"@every 1s\"\n"));
    let port = free_port();
    let mut child = case.spawn(&["daemon", "--listen", &format!("127.0.0.1:{port}")]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let daemon = loop {
        let served = http_get(port, "/metrics")
            .map(|(_, response)| body(&response).to_owned())
            .filter(|text| {
                text.contains("dbjanitor_runs_total{") && text.contains("outcome=\"fixed\"} 1")
            });
        if let Some(text) = served {
            break text;
        }
        assert!(Instant::now() < deadline, "no fixed run in /metrics");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = child.kill();
    let _ = child.wait();

    // What a timer's --metrics-file holds after a fix (rows changed are
    // written only for runs whose fix ran).
    app.exec("INSERT INTO job VALUES (5, 'stuck')").await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("dbjanitor.prom");
    case.run(&["run", "--metrics-file", &path.display().to_string()])
        .assert_code(0);
    let textfile = std::fs::read_to_string(&path).expect("metrics file");

    let mut served = sample_names(&daemon);
    served.extend(sample_names(&textfile));
    assert!(
        served.contains("dbjanitor_run_duration_seconds_bucket"),
        "{served:?}"
    );
    let missing = unknown(&exprs, &served);
    assert!(
        missing.is_empty(),
        "monitoring/ references metrics dbjanitor does not serve: {missing:?}\nserved: {served:?}"
    );
}
