//! Passwords never appear in logs (at any level), reports or errors,
//! including failed connections.

use crate::util::{Case, Engine, TestDb, mysql_server, pg_server};

const PASSWORD: &str = "Zq9-s3cr3t-pw";

fn assert_no_password(out: &crate::util::RunOutput, what: &str) {
    for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(
            !text.contains(PASSWORD),
            "{what}: password on {stream}:\n{text}"
        );
        assert!(
            !text.contains("s3cr3t"),
            "{what}: part of the password on {stream}:\n{text}"
        );
    }
}

fn with_password(server: &str, user: &str, db: &str) -> String {
    // Insert a password into a URL of the form scheme://user@host:port.
    server.replacen(&format!("{user}@"), &format!("{user}:{PASSWORD}@"), 1) + "/" + db
}

const RULE: &str = "name: jobs\ndatabase: main\ndetect: SELECT id FROM job WHERE state = 'stuck'\nfix: UPDATE job SET state = 'failed' WHERE state = 'stuck'\nmax_rows: 5\n";

#[tokio::test(flavor = "multi_thread")]
async fn no_password_in_logs_reports_or_errors() {
    // PostgreSQL here trusts local connections, so a URL with a password still connects.
    let db = TestDb::with_sql(
        Engine::Postgres,
        "CREATE TABLE job (id int PRIMARY KEY, state text); INSERT INTO job VALUES (1, 'stuck');",
    )
    .await;
    let url = with_password(&pg_server(), "postgres", &db.name);
    assert!(url.contains(PASSWORD));
    let case = Case::new()
        .database("main", &url)
        .rule(RULE)
        .env("RUST_LOG", "trace");
    for args in [
        &["run", "--output", "json"][..],
        &["run", "--dry-run"][..],
        &["check", "--connect"][..],
        &["list"][..],
    ] {
        let out = case.run(args);
        assert_no_password(&out, &format!("{args:?}"));
        if args[0] == "run" {
            assert!(
                out.stderr.contains("DEBUG"),
                "debug logs were written: {args:?}\n{}",
                out.stderr
            );
        }
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        1
    );
}

#[test]
fn no_password_when_connections_fail() {
    let refused = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/none");
    let denied =
        with_password(&mysql_server(), "root", "test").replace("root:", "dbj_no_such_user:");
    let query_password = format!("postgres://postgres@127.0.0.1:1/none?password={PASSWORD}");
    for url in [refused, denied, query_password] {
        // Each case must carry the password, or it tests nothing.
        assert!(url.contains(PASSWORD), "no password in {url}");
        let out = Case::new()
            .database("main", &url)
            .rule(RULE)
            .env("RUST_LOG", "trace")
            .run(&["run", "--output", "json"]);
        out.assert_code(1);
        let record = out.record("jobs", "main");
        assert_eq!(record["outcome"], "failed");
        assert_eq!(record["reason"], "connect");
        assert_no_password(&out, &url.replace(PASSWORD, "<password>"));
    }
}

#[test]
fn no_password_in_configuration_errors() {
    let out = Case::new()
        .database("main", &format!("oracle://scott:{PASSWORD}@db/orcl"))
        .run(&["check"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("oracle://scott:***@db/orcl"),
        "{}",
        out.stderr
    );
    assert_no_password(&out, "bad scheme");
}
