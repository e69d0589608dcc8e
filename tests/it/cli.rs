//! The command line as an operator meets it: exit statuses, selection,
//! `check`, `list`, `demo`, usage errors and the text report.

use crate::util::{Case, Engine, TestDb};

fn case_for(db: &TestDb) -> Case {
    Case::new().database("main", db.url())
}

async fn jobs(engine: Engine) -> TestDb {
    TestDb::with_sql(
        engine,
        "CREATE TABLE job (id integer PRIMARY KEY, state varchar(16) NOT NULL); \
         INSERT INTO job VALUES (1, 'stuck'), (2, 'stuck'), (3, 'done');",
    )
    .await
}

const GOOD: &str = "name: jobs.stuck\ndatabase: main\ntags: [nightly]\nschedule: \"0 3 * * *\"\ntimezone: Europe/Berlin\ndetect: SELECT id FROM job WHERE state = 'stuck'\nfix: UPDATE job SET state = 'failed' WHERE state = 'stuck'\nmax_rows: 5\n";

#[tokio::test]
async fn exit_status_is_0_1_2_or_3() {
    let db = jobs(Engine::Sqlite).await;
    let ok = case_for(&db).rule(GOOD).run(&["run", "--dry-run"]);
    ok.assert_code(0);
    let guard = case_for(&db)
        .rule(&GOOD.replace("max_rows: 5", "max_rows: 1"))
        .run(&["run"]);
    guard.assert_code(3);
    let failed = case_for(&db)
        .rule(&GOOD.replace("SET state", "SET nope"))
        .rule(
            &GOOD
                .replace("jobs.stuck", "jobs.guarded")
                .replace("max_rows: 5", "max_rows: 1"),
        )
        .run(&["run"]);
    failed.assert_code(1);
    let usage = case_for(&db).rule(GOOD).run(&["run", "--jobs", "0"]);
    usage.assert_code(2);
    let unknown = case_for(&db).rule(GOOD).run(&["run", "no.such.rule"]);
    unknown.assert_code(2);
    assert!(
        unknown.stderr.contains("no rule named \"no.such.rule\""),
        "{}",
        unknown.stderr
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
            .await,
        2,
        "nothing was fixed"
    );
}

/// Every usage error says `error: ` once (issue 13.5: `AppError::Usage`
/// renders the prefix, and call sites that wrote it too printed
/// `error: error: ...`), exits 2 and changes nothing.
#[tokio::test]
async fn usage_errors_say_error_once() {
    let db = jobs(Engine::Sqlite).await;
    let case = case_for(&db).rule(GOOD);
    let commands: [&[&str]; 6] = [
        &["show", "no.such.rule"],
        &["list", "no.such.rule"],
        &["check", "no.such.rule"],
        &["undo", "not-a-run-id"],
        &["changes", "not-a-run-id"],
        &["history"],
    ];
    for args in commands {
        let out = case.run(args);
        out.assert_code(2);
        let errors: Vec<&str> = out.stderr.lines().filter(|l| l.contains("error")).collect();
        assert!(
            errors.len() == 1
                && errors[0].starts_with("error: ")
                && errors[0].matches("error:").count() == 1,
            "{args:?}:\n{}",
            out.stderr
        );
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
            .await,
        2,
        "nothing was fixed"
    );
}

#[tokio::test]
async fn selection_by_name_tag_and_database() {
    let a = jobs(Engine::Sqlite).await;
    let b = jobs(Engine::Sqlite).await;
    let case = Case::new()
        .database("a", a.url())
        .database("b", b.url())
        .rule(&GOOD.replace("database: main", "database: [a, b]"))
        .rule("name: other\ndatabase: a\ntags: [weekly]\ndetect: SELECT 1\n")
        .rule("name: off\ndatabase: a\nenabled: false\ndetect: SELECT 1\n");
    let tagged = case.run(&[
        "run",
        "--tag",
        "nightly",
        "--database",
        "b",
        "--output",
        "json",
    ]);
    tagged.assert_code(0);
    let rules = tagged.json()["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rules.len(), 1, "{}", tagged.stdout);
    assert_eq!(tagged.outcome("jobs.stuck", "b"), "fixed");
    assert_eq!(
        a.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
            .await,
        2,
        "database a untouched"
    );
    assert_eq!(
        b.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
            .await,
        0
    );
    let all = case.run(&["run", "--output", "json"]);
    let names: Vec<String> = all.json()["rules"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|x| {
                    format!(
                        "{}@{}",
                        x["rule"].as_str().unwrap_or(""),
                        x["database"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        names,
        ["jobs.stuck@a", "jobs.stuck@b", "other@a"],
        "disabled rules are left out"
    );
    let named = case.run(&["run", "off", "--output", "json"]);
    assert_eq!(
        named.outcome("off", "a"),
        "found",
        "a disabled rule runs when named"
    );
    case.run(&["run", "--tag", "nope"]).assert_code(2);
    case.run(&["run", "--database", "nope"]).assert_code(2);
}

#[tokio::test]
async fn text_report_shows_outcome_counts_and_sample() {
    let db = jobs(Engine::Sqlite).await;
    let out = case_for(&db).rule(GOOD).run(&["run", "--dry-run"]);
    out.assert_code(0);
    let header = out.stdout.lines().next().unwrap_or_default();
    for column in ["RULE", "DATABASE", "OUTCOME", "DETECTED", "CHANGED"] {
        assert!(header.contains(column), "{header}");
    }
    let row = out
        .stdout
        .lines()
        .find(|l| l.contains("jobs.stuck"))
        .unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..5],
        ["jobs.stuck", "main", "would_fix", "2", "2"],
        "{row}"
    );
    assert!(
        out.stdout.contains("sample (2 of 2 rows)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("1 rule run (dry run, nothing changed): 1 would_fix"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("rule finished"),
        "logs go to stderr: {}",
        out.stderr
    );
}

#[tokio::test]
async fn check_connect_prepares_sql_without_running_it() {
    for engine in [Engine::Postgres, Engine::MySql, Engine::Sqlite] {
        let db = jobs(engine).await;
        let before = db.table("job").await;
        let good = case_for(&db).rule(GOOD);
        let out = good.run(&["check", "--connect"]);
        out.assert_code(0);
        assert!(
            out.stdout.contains("ok (2 statements prepared)"),
            "{engine:?}: {}",
            out.stdout
        );
        assert_eq!(
            db.table("job").await,
            before,
            "{engine:?}: check must not execute the fix"
        );
        let bad = case_for(&db).rule(&GOOD.replace("SET state", "SET no_such_column"));
        let out = bad.run(&["check", "--connect"]);
        out.assert_code(2);
        assert!(
            out.stdout.contains("fix statement 1 does not prepare"),
            "{engine:?}: {}",
            out.stdout
        );
        assert!(
            out.stdout.contains("no_such_column"),
            "{engine:?}: {}",
            out.stdout
        );
    }
    let unreachable = Case::new()
        .database("main", "postgres://postgres@127.0.0.1:1/none")
        .rule(GOOD)
        .run(&["check", "--connect"]);
    unreachable.assert_code(1);
    assert!(
        unreachable.stdout.contains("unreachable"),
        "{}",
        unreachable.stdout
    );
    let offline = Case::new()
        .database("main", "postgres://postgres@127.0.0.1:1/none")
        .rule(GOOD)
        .run(&["check"]);
    offline.assert_code(0);
    assert!(
        offline.stdout.contains("ok: 1 rule, 1 database"),
        "{}",
        offline.stdout
    );
}

#[test]
fn list_shows_schedule_timezone_and_next_run() {
    let out = Case::new()
        .database("main", "mysql://app:hunter2@db.example:3306/app")
        .rule(GOOD)
        .rule("name: manual\ndatabase: main\ndetect: SELECT 1\n")
        .run(&["list"]);
    out.assert_code(0);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("jobs.stuck"))
        .unwrap_or_default();
    assert!(
        line.contains("0 3 * * *") && line.contains("Europe/Berlin"),
        "{line}"
    );
    // 03:00 in Berlin is 01:00 or 02:00 UTC.
    assert!(
        line.contains(" 01:00:00") || line.contains(" 02:00:00"),
        "{line}"
    );
    let manual = out
        .stdout
        .lines()
        .find(|l| l.contains("manual"))
        .unwrap_or_default();
    assert!(manual.contains("report only"), "{manual}");
    assert!(
        out.stdout.contains("mysql://app:***@db.example:3306/app"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("hunter2"));
}

#[tokio::test]
async fn demo_runs_dry_run_fix_and_clean_rerun() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbjanitor"))
        .args(["demo", "--path"])
        .arg(dir.path())
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("2 rule runs (dry run, nothing changed): 2 would_fix"),
        "{stdout}"
    );
    assert!(stdout.contains("2 rule runs: 2 fixed"), "{stdout}");
    assert!(stdout.contains("2 rule runs: 2 clean"), "{stdout}");
    let db = TestDb::existing_sqlite(&dir.path().join("dragonfly.db"));
    let active = db
        .rows("SELECT id FROM scheduler WHERE state = 'active' ORDER BY id")
        .await;
    assert_eq!(
        active,
        vec![
            vec![Some("3".to_owned())],
            vec![Some("4".to_owned())],
            vec![Some("5".to_owned())]
        ]
    );
    let ha = TestDb::existing_sqlite(&dir.path().join("cloudstack.db"));
    let cancelled = ha
        .rows("SELECT id FROM op_ha_work WHERE step = 'Cancelled' ORDER BY id")
        .await;
    assert_eq!(
        cancelled,
        vec![vec![Some("1".to_owned())], vec![Some("2".to_owned())]]
    );
    // A second demo in the same folder refuses instead of mixing data.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_dbjanitor"))
        .args(["demo", "--path"])
        .arg(dir.path())
        .output()
        .expect("run demo");
    assert_eq!(again.status.code(), Some(2));
}

/// Starts `dbjanitor args` in `dir`, closes the read end of its stdout after
/// reading `keep` bytes (0: before it writes anything), and returns the exit
/// status and stderr.
fn with_closed_stdout(dir: &std::path::Path, args: &[&str], keep: usize) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dbjanitor"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn dbjanitor");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = vec![0u8; keep];
    stdout.read_exact(&mut first).expect("the first bytes");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 9.10: `dbjanitor demo | head -1`, `list | head -1` and
/// `run --output json | head -c 10` end quietly: no panic, no error line,
/// and the exit status is that of the work (the rules ran all the same).
#[tokio::test]
async fn a_closed_stdout_ends_every_command_quietly() {
    let demo = tempfile::tempdir().expect("dir");
    let demo_path = demo.path().join("demo");
    let demo_text = demo_path.display().to_string();
    let (code, stderr) = with_closed_stdout(demo.path(), &["demo", "--path", &demo_text], 10);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("error"),
        "{stderr}"
    );
    // The demo went on after the reader left: the fix was committed (one
    // active row per host is left, as in `demo_runs_dry_run_fix_and_clean_rerun`).
    let dragonfly = TestDb::existing_sqlite(&demo_path.join("dragonfly.db"));
    assert_eq!(
        dragonfly
            .scalar("SELECT count(*) FROM scheduler WHERE state = 'active'")
            .await,
        3
    );

    let db = jobs(Engine::Sqlite).await;
    let case = case_for(&db).rule(GOOD);
    let config = case.write_config().display().to_string();
    for (args, keep) in [
        (vec!["--config", &config, "list"], 0),
        (vec!["--config", &config, "check"], 0),
        (vec!["--config", &config, "run", "--output", "json"], 0),
    ] {
        let (code, stderr) = with_closed_stdout(case.dir(), &args, keep);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("error"), "{args:?}: {stderr}");
    }
    // `run` did its work although nobody read the report.
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        2
    );
}

/// Issue 9.11: the README states how long MySQL lock names are cut; the
/// number is the code's (a compatibility promise: the code is not changed).
#[test]
fn readme_states_the_mysql_lock_name_derivation() {
    let long = "x".repeat(100);
    let name = dbjanitor::db::mysql_lock_name("app", &long);
    let kept = name.split('~').next().unwrap_or_default().chars().count();
    let readme = std::fs::read_to_string(crate::util::repo("README.md")).expect("README");
    assert!(
        readme.contains(&format!(
            "names longer than 64 characters keep {kept} characters"
        )),
        "README disagrees with mysql_lock_name, which keeps {kept} characters"
    );
}

/// Issue 9.8: a full disk under `--log-dir` is said once on stderr and makes
/// a one-shot run exit 1; the rules still ran. Needs root to mount a tiny
/// tmpfs (as on this machine and in CI); skipped with a message otherwise.
#[tokio::test]
async fn a_full_log_disk_is_said_once_and_exits_1() {
    let mount = tempfile::tempdir().expect("dir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(mount.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "SKIPPED a_full_log_disk_is_said_once_and_exits_1: cannot mount a tmpfs (needs root)"
        );
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.path().to_path_buf());
    // Fill it to the last byte.
    let mut filler = std::fs::File::create(mount.path().join("filler")).expect("filler");
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    drop(filler);
    let db = jobs(Engine::Sqlite).await;
    let logs = mount.path().display().to_string();
    let out = case_for(&db).rule(GOOD).run(&["--log-dir", &logs, "run"]);
    out.assert_code(1);
    let said = out
        .stderr
        .lines()
        .filter(|l| l.contains("cannot write the log file"))
        .count();
    assert_eq!(said, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("No space left on device"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("fixed"), "{}", out.stdout);
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'failed'")
            .await,
        2
    );
    // With room on the disk the same run exits 0.
    std::fs::remove_file(mount.path().join("filler")).expect("rm filler");
    let db = jobs(Engine::Sqlite).await;
    let out = case_for(&db).rule(GOOD).run(&["--log-dir", &logs, "run"]);
    out.assert_code(0);
    assert!(
        !out.stderr.contains("cannot write the log file"),
        "{}",
        out.stderr
    );
}

/// Issue 9.11: a connection that stalls while `check --connect` prepares is
/// "unreachable" (exit 1: retry later), not "does not prepare" (exit 2: fix
/// the SQL). The stall comes from the fault proxy, after the connection is
/// made, on the very statement being prepared.
#[tokio::test(flavor = "multi_thread")]
async fn a_stall_while_preparing_is_unreachable_not_invalid() {
    use crate::faults::{FaultProxy, When};
    let db = jobs(Engine::Postgres).await;
    let proxy = FaultProxy::in_front_of(db.url());
    let url = proxy.url_for(db.url());
    proxy.stall_when(b"dbj_stall_probe", When::Before);
    let out = Case::new()
        .database("main", &url)
        .rule(
            "name: jobs.stalled\ndatabase: main\ntimeout: 2s\n\
             detect: SELECT id AS dbj_stall_probe FROM job WHERE state = 'stuck'\n",
        )
        .run(&["check", "--connect"]);
    out.assert_code(1);
    assert!(
        out.stdout
            .contains("unreachable: no answer while preparing detect within 2s"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("0 invalid, 1 unreachable"),
        "{}",
        out.stdout
    );
    assert!(proxy.is_stalled());
    // Nothing ran: the stuck jobs are still stuck.
    assert_eq!(
        db.scalar("SELECT count(*) FROM job WHERE state = 'stuck'")
            .await,
        2
    );
}

/// Issue 12.6: with an audit table on PostgreSQL and on MariaDB, a second
/// run (the table exists: `CREATE ... IF NOT EXISTS` makes the server send a
/// NOTICE) logs no server notice and no slow-statement warning by default,
/// while the INFO run lines are still there when stderr is not a terminal.
/// (With `RUST_LOG=info` the PostgreSQL notice shows: the default filter is
/// what keeps it out.)
#[tokio::test(flavor = "multi_thread")]
async fn server_notices_are_not_logged_by_default() {
    for engine in [Engine::Postgres, Engine::MySql] {
        let db = TestDb::with_sql(
            engine,
            "CREATE TABLE t (id int PRIMARY KEY, state varchar(10)); INSERT INTO t VALUES (1, 'bad');",
        )
        .await;
        let case = Case::new()
            .database("main", db.url())
            .rule("name: fix.bad\ndatabase: main\ndetect: SELECT id FROM t WHERE state = 'bad'\nfix: UPDATE t SET state = 'ok' WHERE state = 'bad'\nmax_rows: 5\n")
            .config("audit:\n  database: main\n");
        case.run(&["run"]).assert_code(0);
        let second = case.run(&["run"]);
        second.assert_code(0);
        assert!(
            !second.stderr.contains("already exists"),
            "{engine:?}: {}",
            second.stderr
        );
        assert!(
            !second.stderr.contains("slow statement"),
            "{engine:?}: {}",
            second.stderr
        );
        assert!(
            second.stderr.contains("INFO") && second.stderr.contains("rule=fix.bad"),
            "{engine:?}: the run lines stay: {}",
            second.stderr
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM t WHERE state = 'bad'")
                .await,
            0
        );
    }
}
