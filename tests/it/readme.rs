//! The README's "first rule, end to end" works as written, on PostgreSQL and
//! on MariaDB: the table, the rule and the config are taken from README.md.

use crate::util::{Case, Engine, TestDb, repo};

/// The lines of the first fenced block of `lang` after `marker`, de-indented.
fn block_after(readme: &str, marker: &str, lang: &str) -> String {
    let start = readme
        .find(marker)
        .unwrap_or_else(|| panic!("README lacks {marker:?}"));
    let rest = &readme[start..];
    let fence = format!("```{lang}");
    let open = rest
        .find(&fence)
        .unwrap_or_else(|| panic!("no ```{lang} after {marker:?}"));
    let body_start = open + rest[open..].find('\n').expect("fence line") + 1;
    let close = rest[body_start..].find("```").expect("closing fence");
    let body = &rest[body_start..body_start + close];
    let indent = rest[..open].rsplit('\n').next().map_or(0, str::len);
    body.lines()
        .map(|l| {
            if l.len() >= indent {
                &l[indent..]
            } else {
                l.trim_start()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn first_rule_on(engine: Engine) {
    let readme = std::fs::read_to_string(repo("README.md")).expect("README.md");
    let table = block_after(&readme, "## Your first rule, end to end", "sql");
    let rule = block_after(&readme, "Put both in", "yaml");
    assert!(rule.contains("name: myapp.stuck-jobs"), "{rule}");
    let db = TestDb::with_sql(engine, &table).await;
    let (old, fresh) = match engine {
        Engine::Postgres => ("now() - interval '2 hours'", "now() - interval '1 minute'"),
        _ => ("NOW() - INTERVAL 2 HOUR", "NOW() - INTERVAL 1 MINUTE"),
    };
    db.exec(&format!(
        "INSERT INTO job (id, state, worker, heartbeat_at) VALUES \
         (1, 'running', 'w-dead', {old}), (2, 'running', 'w-dead', {old}), \
         (3, 'running', 'w-alive', {fresh}), (4, 'done', 'w-dead', {old})"
    ))
    .await;
    let case = Case::new()
        .database("myapp", db.url())
        .rule(&rule)
        .config("defaults: { timezone: UTC }");
    case.run(&["check", "--connect"]).assert_code(0);
    let dry = case.run(&["run", "--dry-run", "--output", "json"]);
    dry.assert_code(0);
    let r = dry.record("myapp.stuck-jobs", "myapp");
    assert_eq!(
        (
            r["outcome"].as_str(),
            r["detected"].as_u64(),
            r["changed"].as_u64()
        ),
        (Some("would_fix"), Some(2), Some(2))
    );
    let real = case.run(&["run", "--output", "json"]);
    real.assert_code(0);
    assert_eq!(real.outcome("myapp.stuck-jobs", "myapp"), "fixed");
    let states = db.rows("SELECT id, state FROM job ORDER BY id").await;
    let states: Vec<(String, String)> = states
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect();
    let expected = [
        ("1", "failed"),
        ("2", "failed"),
        ("3", "running"),
        ("4", "done"),
    ];
    assert_eq!(
        states,
        expected
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_first_rule_works_on_postgres() {
    first_rule_on(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_first_rule_works_on_mariadb() {
    first_rule_on(Engine::MySql).await;
}
