use std::path::{Path, PathBuf};

use dispatch_dag::*;

/// A param default: `p(Some("A"), "1")` for `A=1`, `p(None, "x")` for a positional `x`.
fn p(name: Option<&str>, value: &str) -> ParamDefault {
    ParamDefault {
        name: name.map(str::to_owned),
        value: value.to_owned(),
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dags")
}

#[test]
fn fixture_dir_loads_valid_files_and_reports_each_invalid_one_precisely() {
    let store = FileDagStore::new(fixtures());
    let listed = store.list().unwrap();
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for r in listed {
        match r {
            Ok(dag) => ok.push(dag.name),
            Err(StoreError::Dag(e)) => errors.push(e),
            Err(other) => panic!("unexpected store error: {other}"),
        }
    }
    ok.sort();
    assert_eq!(ok, ["build", "chain-depends", "deploy-prod", "graph"]);

    // (file, line, fragments the message must hold)
    let expected: &[(&str, usize, &[&str])] = &[
        (
            "bad-continue-on.yaml",
            6,
            &["unknown key `sometimes`", "`steps[0].continue_on`"],
        ),
        ("bad-cycle.yaml", 5, &["dependency cycle: a -> c -> b -> a"]),
        (
            "bad-duplicate.yaml",
            4,
            &["`steps[1].name`", "duplicate step name `a`"],
        ),
        (
            "bad-name.yaml",
            1,
            &["key `name`", "invalid DAG name `../escape`"],
        ),
        (
            "bad-no-command.yaml",
            4,
            &["`steps[1]`", "step `empty` needs `run`"],
        ),
        (
            "bad-step-key.yaml",
            5,
            &["unknown key `comand` in `steps[1]`"],
        ),
        ("bad-syntax.yaml", 4, &["invalid YAML"]),
        (
            "bad-type.yaml",
            4,
            &["`steps[0].timeout_sec`", "non-negative integer", "`soon`"],
        ),
        (
            "bad-unknown-dep.yaml",
            7,
            &["`steps[1].depends`", "unknown step `missing`"],
        ),
        ("bad-unknown-key.yaml", 2, &["unknown key `stpes`"]),
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (file, line, fragments) in expected {
        let e = errors
            .iter()
            .find(|e| e.path.file_name().unwrap() == *file)
            .unwrap_or_else(|| panic!("no error for {file}"));
        let text = e.to_string();
        assert_eq!(e.line, Some(*line), "{text}");
        let prefix = format!("{}:{line}: ", fixtures().join(file).display());
        assert!(text.starts_with(&prefix), "{text}");
        for f in *fragments {
            assert!(text.contains(f), "{text} lacks {f}");
        }
        // The same error comes back when the DAG is loaded by its (file) name.
        let stem = file.trim_end_matches(".yaml");
        if *file != "bad-name.yaml" {
            let by_name = store.load(stem).unwrap_err();
            assert_eq!(by_name.to_string(), text);
        }
    }
}

#[test]
fn build_fixture_has_every_key() {
    let dag = load_dag_file(&fixtures().join("build.yaml")).unwrap();
    let dir = fixtures();
    assert_eq!(dag.name, "build");
    assert_eq!(dag.description, "build and test");
    assert_eq!(dag.dag_type, DagType::Chain);
    assert_eq!(
        dag.params,
        vec![
            p(Some("TARGET"), "debug"),
            p(Some("VERBOSE"), "yes please"),
            p(None, "extra"),
        ]
    );
    assert_eq!(
        dag.env,
        vec![
            ("CARGO_TERM_COLOR".into(), "always".into()),
            ("JOBS".into(), "2".into())
        ]
    );
    assert_eq!(dag.timeout_sec, Some(600));
    assert_eq!(dag.max_clean_up_time_sec, 10);
    assert_eq!(dag.queue, "builds");
    assert_eq!(dag.location, dir.join("build.yaml"));

    let names: Vec<_> = dag.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["fetch", "compile", "lint", "step4"]);
    let deps: Vec<_> = dag.steps.iter().map(|s| s.depends.clone()).collect();
    assert_eq!(
        deps,
        [
            vec![],
            vec!["fetch".to_owned()],
            vec!["compile".to_owned()],
            vec!["lint".to_owned()]
        ]
    );
    assert_eq!(dag.steps[0].command.as_deref(), Some("git fetch --all"));
    assert_eq!(
        dag.steps[1].env,
        vec![
            ("RUSTFLAGS".into(), "-D warnings".into()),
            ("CC".into(), "clang".into())
        ]
    );
    assert_eq!(dag.steps[1].timeout_sec, Some(300));
    assert!(dag.steps[2].continue_on.failure);
    assert!(!dag.steps[1].continue_on.failure);
    assert_eq!(dag.steps[3].script.as_deref(), Some("echo one\necho two\n"));
    assert_eq!(dag.steps[3].command, None);
    assert_eq!(dag.steps[3].shell.as_deref(), Some("bash"));
    assert_eq!(dag.steps[3].working_dir, Some(dir.join("work")));

    let h = &dag.handler_on;
    assert_eq!(h.success.as_ref().unwrap().name, "on_success");
    assert_eq!(h.failure.as_ref().unwrap().name, "notify");
    assert_eq!(h.abort, None);
    assert_eq!(
        h.exit.as_ref().unwrap().command.as_deref(),
        Some("echo bye")
    );
    assert_eq!(
        HandlerKind::Exit.step(h).unwrap().command.as_deref(),
        Some("echo bye")
    );
}

#[test]
fn graph_fixture_and_defaults() {
    let dag = load_dag_file(&fixtures().join("graph.yml")).unwrap();
    assert_eq!(dag.name, "graph");
    assert_eq!(dag.dag_type, DagType::Graph);
    assert_eq!(dag.queue, "graph");
    assert_eq!(dag.max_clean_up_time_sec, 5);
    assert_eq!(dag.timeout_sec, None);
    let deps: Vec<_> = dag.steps.iter().map(|s| s.depends.join(",")).collect();
    assert_eq!(deps, ["", "a", "a,b", ""]);
    assert_eq!(
        dag.env,
        vec![("A".into(), "1".into()), ("B".into(), "two".into())]
    );
    assert_eq!(
        dag.params,
        vec![
            p(Some("BRANCH"), "main"),
            p(Some("COUNT"), "3"),
            p(None, "positional"),
        ]
    );

    let named = FileDagStore::new(fixtures()).load("deploy-prod").unwrap();
    assert_eq!(named.location, fixtures().join("named-in-file.yaml"));
    assert_eq!(named.queue, "deploy-prod");
}

#[test]
fn resolve_params_on_a_loaded_dag() {
    let dag = load_dag_file(&fixtures().join("named-in-file.yaml")).unwrap();
    let runtime = dispatch_webhook_params::parse_runtime_params(
        r#"WEBHOOK_PAYLOAD="{\"ref\":\"x\"}" GITHUB_REF="refs/heads/main" REPLICAS="5""#,
    )
    .unwrap();
    let resolved = resolve_params(&dag, &runtime).unwrap();
    assert_eq!(
        resolved.resolved_params,
        vec![
            ("REGION".to_owned(), "eu-west-1".to_owned()),
            ("REPLICAS".to_owned(), "5".to_owned()),
            ("WEBHOOK_PAYLOAD".to_owned(), r#"{"ref":"x"}"#.to_owned()),
            ("GITHUB_REF".to_owned(), "refs/heads/main".to_owned()),
        ]
    );
    assert_eq!(resolved.steps, dag.steps);
    assert!(dag.resolved_params.is_empty());
}

/// Writes `text` as `<dir>/t.yaml` and loads it.
fn load_text(text: &str) -> (Result<Dag, DagError>, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    std::fs::write(&path, text).unwrap();
    (load_dag_file(&path), path)
}

#[test]
fn error_table() {
    // (yaml, line, fragments)
    let table: &[(&str, Option<usize>, &[&str])] = &[
        ("", None, &["empty file", "`steps`"]),
        (
            "steps: []\n",
            Some(1),
            &["key `steps`", "at least one step"],
        ),
        ("name: x\n", None, &["`steps`", "at least one step"]),
        (
            "- a\n- b\n",
            Some(1),
            &["expected a map of DAG keys, found a list"],
        ),
        (
            "steps:\n  - command: x\n    bogus: 1\n",
            Some(3),
            &["unknown key `bogus` in `steps[0]`"],
        ),
        (
            "steps: x\n",
            Some(1),
            &["key `steps`", "expected a list of steps, found a scalar"],
        ),
        (
            "steps:\n  - [x, [y]]\n",
            Some(2),
            &["key `steps[0][1]`", "expected a map, found a list"],
        ),
        (
            "type: dag\nsteps:\n  - command: x\n",
            Some(1),
            &["key `type`", "`chain` or `graph`", "`dag`"],
        ),
        (
            "timeout_sec: -1\nsteps:\n  - command: x\n",
            Some(1),
            &["key `timeout_sec`", "`-1`"],
        ),
        (
            "timeout_sec: '5'\nsteps:\n  - command: x\n",
            Some(1),
            &["key `timeout_sec`", "found a scalar"],
        ),
        (
            "description: [a]\nsteps:\n  - command: x\n",
            Some(1),
            &["key `description`", "expected a string, found a list"],
        ),
        (
            "env: x\nsteps:\n  - command: x\n",
            Some(1),
            &["key `env`", "a map or a list"],
        ),
        (
            "env: [NOEQUALS]\nsteps:\n  - command: x\n",
            Some(1),
            &["key `env[0]`", "`KEY=VALUE`", "`NOEQUALS`"],
        ),
        (
            "env:\n  - {A: 1, B: 2}\nsteps:\n  - command: x\n",
            Some(2),
            &["key `env[0]`", "one-key map"],
        ),
        (
            "env:\n  A: [1]\nsteps:\n  - command: x\n",
            Some(2),
            &["key `env.A`", "a scalar value"],
        ),
        (
            "env: ['=x']\nsteps:\n  - command: x\n",
            Some(1),
            &["invalid variable name ``"],
        ),
        (
            "params:\n  - 1BAD: x\nsteps:\n  - command: x\n",
            Some(2),
            &["key `params[0]`", "invalid param name `1BAD`"],
        ),
        (
            "params: 'A=\"unterminated'\nsteps:\n  - command: x\n",
            Some(1),
            &["key `params`", "unterminated"],
        ),
        (
            "params:\n  - [a]\nsteps:\n  - command: x\n",
            Some(2),
            &["key `params[0]`"],
        ),
        (
            "steps:\n  - command: x\n    continue_on:\n      failure: maybe\n",
            Some(4),
            &["`steps[0].continue_on.failure`", "true or false", "`maybe`"],
        ),
        (
            "steps:\n  - command: [a, [b]]\n",
            Some(2),
            &["`steps[0].command`", "a list of strings"],
        ),
        (
            "steps:\n  - command: x\n    depends: {a: 1}\n",
            Some(3),
            &["`steps[0].depends`"],
        ),
        (
            "steps:\n  - name: a/b\n    command: x\n",
            Some(2),
            &["`steps[0].name`", "must not"],
        ),
        (
            "steps:\n  - command: x\nname: a\nname: b\n",
            Some(4),
            &["duplicate key `name`"],
        ),
        (
            "type: graph\nsteps:\n  - name: a\n    command: x\n    depends: a\n",
            Some(5),
            &["dependency cycle: a -> a"],
        ),
        (
            "steps:\n  - command: x\nhandler_on:\n  done:\n    command: y\n",
            Some(4),
            &["unknown key `done` in `handler_on`"],
        ),
        (
            "steps:\n  - command: x\nhandler_on:\n  exit:\n    shell: sh\n",
            Some(5),
            &["`handler_on.exit`", "needs `run`"],
        ),
        (
            "steps:\n  - command: x\nhandler_on:\n  exit:\n    command: y\n    depends: a\n",
            Some(6),
            &["`handler_on.exit.depends`", "not allowed in a handler"],
        ),
        (
            "queue: ../q\nsteps:\n  - command: x\n",
            Some(1),
            &["key `queue`", "invalid queue name"],
        ),
        (
            "steps:\n  - command: x\n  bad indent\n",
            Some(3),
            &["invalid YAML"],
        ),
        (
            "steps:\n  - command: \"unterminated\n",
            Some(2),
            &["invalid YAML"],
        ),
    ];
    for (yaml, line, fragments) in table {
        let (got, path) = load_text(yaml);
        let e = got.expect_err(yaml);
        let text = e.to_string();
        assert_eq!(e.line, *line, "{yaml:?}: {text}");
        assert_eq!(e.path, path);
        assert!(text.starts_with(&path.display().to_string()), "{text}");
        for f in *fragments {
            assert!(text.contains(f), "{yaml:?}: `{text}` lacks {f}");
        }
    }
}

#[test]
fn params_and_env_shapes() {
    let table: Vec<(&str, Vec<ParamDefault>)> = vec![
        (
            "params: A=1 B=x",
            vec![p(Some("A"), "1"), p(Some("B"), "x")],
        ),
        (
            "params: 'one \"two words\"'",
            vec![p(None, "one"), p(None, "two words")],
        ),
        (
            "params: {A: 1, B: 1.50, C: true, D: ~}",
            vec![
                p(Some("A"), "1"),
                p(Some("B"), "1.50"),
                p(Some("C"), "true"),
                p(Some("D"), ""),
            ],
        ),
        (
            "params: [A=1, {B: 2}, pos]",
            vec![p(Some("A"), "1"), p(Some("B"), "2"), p(None, "pos")],
        ),
        ("params:", vec![]),
    ];
    for (yaml, want) in table {
        let (got, _) = load_text(&format!("{yaml}\nsteps:\n  - command: x\n"));
        assert_eq!(got.unwrap().params, want, "{yaml}");
    }

    let kv = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    let table: Vec<(&str, Vec<(String, String)>)> = vec![
        ("env: {B: 2, A: x}", kv(&[("B", "2"), ("A", "x")])),
        (
            "env: [A=1=2, {B: 0x10}, C=]",
            kv(&[("A", "1=2"), ("B", "0x10"), ("C", "")]),
        ),
        (
            "env:\n  - PATH_EXTRA: /opt/bin",
            kv(&[("PATH_EXTRA", "/opt/bin")]),
        ),
        ("env: {}", vec![]),
    ];
    for (yaml, want) in table {
        let (got, _) = load_text(&format!("{yaml}\nsteps:\n  - command: x\n    env: [S=1]\n"));
        let dag = got.unwrap();
        assert_eq!(dag.env, want, "{yaml}");
        assert_eq!(dag.steps[0].env, kv(&[("S", "1")]));
    }
}

#[test]
fn anchors_and_null_values() {
    let (got, _) =
        load_text("x-common: &c\n  command: echo\nsteps:\n  - name: a\n    command: echo a\n");
    // Extra top-level keys are errors even when used only as anchors.
    assert!(got
        .unwrap_err()
        .to_string()
        .contains("unknown key `x-common`"));

    let (got, _) = load_text(
        "env: &e {A: 1}\nsteps:\n  - name: a\n    command: echo a\n    env: *e\n    timeout_sec: ~\n    depends:\n",
    );
    let dag = got.unwrap();
    assert_eq!(dag.steps[0].env, vec![("A".to_owned(), "1".to_owned())]);
    assert_eq!(dag.steps[0].timeout_sec, None);
}
