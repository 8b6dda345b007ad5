//! Dagu's DAG format, one table per area of Dagu's published DAG behaviour (YAML schema, consts,
//! params, env, step references and outputs, run as command and script, run context,
//! parallel, preconditions, step policies, secrets), written from its documented examples.
//! Fixtures are our own.

use std::path::{Path, PathBuf};

use dispatch_dag::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dagu")
}

/// Parses `text` as `<fixtures>/t.yaml` (no file is written).
fn parse(text: &str) -> Result<Dag, DagErrors> {
    parse_dag_with(&fixtures().join("t.yaml"), text, &LoadOptions::default())
}

fn ok(text: &str) -> Dag {
    parse(text).unwrap_or_else(|e| panic!("{text}\n{e}"))
}

fn kv(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn bind(var: &str, source: RefSource) -> Binding {
    Binding {
        var: var.into(),
        source,
    }
}

#[test]
fn typical_dagu_dag_loads_into_the_expected_model() {
    let dag = load_dag_file(&fixtures().join("typical.yaml")).unwrap();
    let dir = fixtures();
    assert_eq!(dag.name, "typical");
    assert_eq!(dag.working_dir, Some(dir.join("./work")));
    assert_eq!(
        dag.consts,
        kv(&[("service", "reports"), ("bucket", "s3://archive/reports")])
    );
    assert_eq!(
        dag.params,
        vec![
            ParamDefault {
                name: Some("environment".into()),
                value: "staging".into()
            },
            ParamDefault {
                name: Some("DAY".into()),
                value: "today".into()
            },
        ]
    );
    let spec = &dag.param_specs[0];
    assert_eq!(spec.name, "environment");
    assert_eq!(spec.choices, ["staging", "production"]);
    assert_eq!(spec.description, "where to publish");
    assert!(spec.has_default);
    assert_eq!(
        dag.env,
        kv(&[
            ("REPORT_DIR", "/tmp/reports"),
            ("TARGET", "${DAGU_REF_params_environment}")
        ])
    );
    assert_eq!(
        dag.bindings,
        vec![bind(
            "DAGU_REF_params_environment",
            RefSource::Param("environment".into())
        )]
    );
    assert_eq!(dag.dotenv, [".env.report"]);
    assert_eq!(dag.hist_retention_days, Some(7));
    assert_eq!(
        dag.preconditions,
        vec![Precondition {
            check: ConditionCheck::Match {
                condition: "${DAGU_REF_params_environment}".into(),
                expected: Expected::Regex("^(staging|production)$".into()),
            },
            negate: false,
        }]
    );

    let names: Vec<_> = dag.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["Fetch data", "build", "publish", "fanout"]);
    let deps: Vec<_> = dag.steps.iter().map(|s| s.depends.join(",")).collect();
    assert_eq!(deps, ["", "Fetch data", "build", "publish"]);

    let fetch = &dag.steps[0];
    assert_eq!(fetch.id.as_deref(), Some("fetch"));
    assert_eq!(fetch.command.as_deref(), Some("./fetch.sh --day \"$DAY\""));
    assert_eq!(
        fetch.retry_policy,
        Some(RetryPolicy {
            limit: 3,
            interval_sec: 5,
            backoff: Some(Backoff(2.0)),
            max_interval_sec: None,
            exit_code: vec![75],
        })
    );
    assert_eq!(
        fetch.outputs,
        vec![OutputDecl {
            name: "rows".into(),
            kind: OutputType::String
        }]
    );

    let build = &dag.steps[1];
    assert_eq!(build.command, None);
    assert_eq!(
        build.script.as_deref(),
        Some("echo \"building from ${DAGU_REF_fetch_outputs_rows} rows\"\nprintf 'file=report.csv\\n' >> \"$DAGU_OUTPUT_FILE\"\n")
    );
    assert_eq!(
        build.bindings,
        vec![bind(
            "DAGU_REF_fetch_outputs_rows",
            RefSource::StepOutput {
                step_id: "fetch".into(),
                step_name: "Fetch data".into(),
                output: "rows".into()
            }
        )]
    );
    // The chain already orders `fetch` before `build`: nothing is inferred.
    assert!(build.inferred_depends.is_empty());
    assert_eq!(
        build.preconditions[0].check,
        ConditionCheck::Command("test -d \"$REPORT_DIR\"".into())
    );

    let publish = &dag.steps[2];
    assert_eq!(
        publish.command.as_deref(),
        Some("./publish.sh ${DAGU_REF_build_outputs_file} s3://archive/reports")
    );
    assert_eq!(publish.continue_on.exit_code, [3]);
    assert!(publish.continue_on.mark_success);
    assert_eq!(publish.stdout.as_deref(), Some("publish.log"));

    let call = dag.steps[3].call.as_ref().unwrap();
    assert_eq!(call.dag, "notify");
    assert_eq!(
        call.params,
        vec![
            ParamDefault {
                name: Some("CHANNEL".into()),
                value: "${ITEM}".into()
            },
            ParamDefault {
                name: Some("ENV".into()),
                value: "${DAGU_REF_params_environment}".into()
            },
        ]
    );
    assert_eq!(
        call.parallel,
        Some(Parallel {
            items: ParallelItems::List(vec!["ops".into(), "dev".into()]),
            max_concurrent: 2,
        })
    );

    let failure = dag.handler_on.failure.as_ref().unwrap();
    assert_eq!(
        failure.command.as_deref(),
        Some("echo \"failed in ${DAG_RUN_ID}\"")
    );
    assert_eq!(dag.local_dags.len(), 1);
    assert_eq!(dag.local_dags[0].name, "notify");
    assert_eq!(
        dag.local_dags[0].steps[0].command.as_deref(),
        Some("echo \"notify $CHANNEL\"")
    );
}

#[test]
fn yaml_schema_and_documents() {
    // Minimal workflow; string shorthand steps; steps as a map; nested lists run side by side.
    let dag = ok("steps:\n  - name: hello\n    run: echo hello\n");
    assert_eq!(dag.steps[0].command.as_deref(), Some("echo hello"));
    let dag = ok("steps:\n  - echo one\n  - echo two\n");
    assert_eq!(dag.steps[1].depends, ["step1"]);
    let dag =
        ok("type: graph\nsteps:\n  a:\n    run: echo a\n  b:\n    run: echo b\n    depends: a\n");
    assert_eq!(dag.steps[1].name, "b");
    assert_eq!(dag.steps[1].depends, ["a"]);
    let dag = ok(
        "steps:\n  - run: echo first\n  - - run: echo x\n    - run: echo y\n  - run: echo last\n",
    );
    let deps: Vec<_> = dag.steps.iter().map(|s| s.depends.join(",")).collect();
    assert_eq!(deps, ["", "step1", "step1", "step2,step3"]);
    let e = parse("steps:\n  - run: x\n---\n").unwrap_err();
    assert!(
        e.to_string().contains("empty YAML document after `---`"),
        "{e}"
    );
    // Metadata is kept.
    let dag = ok("group: etl\ntags: [daily, team=data]\nsteps:\n  - run: x\n");
    assert_eq!(dag.group.as_deref(), Some("etl"));
    assert_eq!(dag.labels, ["daily", "team=data"]);
}

#[test]
fn chain_depends_overrides_and_ids_in_depends() {
    // Dagu accepts `depends` in a chain DAG: it replaces the implicit previous step.
    let dag = ok("steps:\n  - id: a\n    run: x\n  - id: b\n    run: x\n  - id: c\n    run: x\n    depends: a\n  - id: d\n    run: x\n    depends: []\n");
    let deps: Vec<_> = dag.steps.iter().map(|s| s.depends.join(",")).collect();
    assert_eq!(deps, ["", "a", "a", ""]);
    // `depends` may name a step by `id`; the model holds runtime names.
    let dag = ok("type: graph\nsteps:\n  - id: build\n    name: Build image\n    run: x\n  - name: Deploy\n    depends: build\n    run: x\n");
    assert_eq!(dag.steps[1].depends, ["Build image"]);
}

#[test]
fn consts_params_env_resolution() {
    let dag = ok("consts:\n  - a: 1\n  - b: ${consts.a}-x\n  - on: true\nsteps:\n  - run: echo ${consts.b} ${consts.on}\n");
    assert_eq!(dag.steps[0].command.as_deref(), Some("echo 1-x true"));
    assert!(dag.steps[0].bindings.is_empty());

    let table: Vec<(&str, Vec<ParamDefault>)> = vec![
        ("params: A=1 B=x", vec![p("A", "1"), p("B", "x")]),
        ("params:\n  - A: 1\n  - B=2", vec![p("A", "1"), p("B", "2")]),
        (
            "params:\n  - name: region\n    default: eu\n    type: string\n  - name: count\n    type: integer\n    required: true",
            vec![p("region", "eu"), p("count", "")],
        ),
    ];
    for (yaml, want) in table {
        assert_eq!(
            ok(&format!("{yaml}\nsteps:\n  - run: x\n")).params,
            want,
            "{yaml}"
        );
    }
    let dag = ok(
        "params:\n  - name: day\n    eval: $(date +%d)\n    default: '01'\nsteps:\n  - run: x\n",
    );
    assert_eq!(dag.param_specs[0].eval.as_deref(), Some("$(date +%d)"));

    // `${env.NAME}` becomes the shell's `${NAME}`; `$NAME` and `${NAME}` are left to the shell.
    let dag = ok("env:\n  - SERVICE=api\n  - HOST=${env.SERVICE}.internal\nsteps:\n  - run: echo \"$SERVICE ${env.SERVICE} ${HOME}\"\n");
    assert_eq!(
        dag.env,
        kv(&[("SERVICE", "api"), ("HOST", "${SERVICE}.internal")])
    );
    assert_eq!(
        dag.steps[0].command.as_deref(),
        Some("echo \"$SERVICE ${SERVICE} ${HOME}\"")
    );
}

fn p(name: &str, value: &str) -> ParamDefault {
    ParamDefault {
        name: Some(name.into()),
        value: value.into(),
    }
}

#[test]
fn params_reach_commands_only_through_the_environment() {
    // Dagu would splice the value into the text; we hand the shell a variable instead.
    let dag = ok("params:\n  - name: version\n    default: '1; rm -rf /'\nsteps:\n  - run: ./build.sh ${params.version}\n");
    let step = &dag.steps[0];
    assert_eq!(
        step.command.as_deref(),
        Some("./build.sh ${DAGU_REF_params_version}")
    );
    assert!(!step.command.as_deref().unwrap().contains("rm -rf"));
    assert_eq!(
        step.bindings,
        vec![bind(
            "DAGU_REF_params_version",
            RefSource::Param("version".into())
        )]
    );
}

#[test]
fn step_references_infer_dependencies() {
    let dag = ok("type: graph\nsteps:\n  - id: build\n    run: x\n    outputs:\n      - name: image\n  - id: deploy\n    run: echo ${steps.build.outputs.image}\n  - id: logs\n    depends: deploy\n    run: cat ${build.stdout}; echo ${deploy.exit_code}\n");
    assert_eq!(dag.steps[1].depends, ["build"]);
    assert_eq!(dag.steps[1].inferred_depends, ["build"]);
    // `logs` already waits for `build` through `deploy`: nothing to add.
    assert_eq!(dag.steps[2].depends, ["deploy"]);
    assert!(dag.steps[2].inferred_depends.is_empty());
    assert_eq!(
        dag.steps[2].command.as_deref(),
        Some("cat ${DAGU_REF_build_stdout}; echo ${DAGU_REF_deploy_exit_code}")
    );

    // `output: VAR` (stdout captured) and JSON paths into it.
    let dag = ok(
        "steps:\n  - run: ./emit-json.sh\n    output: RESULT\n  - run: echo $RESULT ${RESULT.id}\n",
    );
    assert_eq!(dag.steps[0].output.as_deref(), Some("RESULT"));
    assert_eq!(
        dag.steps[1].bindings,
        vec![bind(
            "DAGU_REF_RESULT_id",
            RefSource::OutputPath {
                var: "RESULT".into(),
                path: vec!["id".into()]
            }
        )]
    );
}

#[test]
fn run_forms() {
    let dag = ok("steps:\n  - run: echo one\n  - run: |\n      #!/usr/bin/env python3\n      print('hi')\n  - run:\n      - go test ./a/...\n      - ''\n      - go test ./b/...\n  - command: [echo, hello]\n  - script: |\n      echo s\n    shell: [bash, -e]\n    shell_args: [-o, pipefail]\n  - run: echo shell\n    with:\n      shell: bash\n      shell_args: [-x]\n");
    let s = &dag.steps;
    assert_eq!(s[0].command.as_deref(), Some("echo one"));
    assert_eq!(
        s[1].script.as_deref(),
        Some("#!/usr/bin/env python3\nprint('hi')\n")
    );
    assert_eq!(s[2].commands, ["go test ./a/...", "go test ./b/..."]);
    assert_eq!(s[3].command.as_deref(), Some("echo hello"));
    assert_eq!(s[4].shell.as_deref(), Some("bash -e -o pipefail"));
    assert_eq!(s[5].shell.as_deref(), Some("bash -x"));
}

#[test]
fn run_context_references_use_the_projected_variables() {
    let dag = ok("steps:\n  - id: me\n    run: echo ${dag.name} ${run.id} ${step.name} ${paths.step_output_file} ${step.id}\n");
    let step = &dag.steps[0];
    assert_eq!(
        step.command.as_deref(),
        Some("echo ${DAG_NAME} ${DAG_RUN_ID} ${DAG_RUN_STEP_NAME} ${DAGU_OUTPUT_FILE} ${DAGU_REF_step_id}")
    );
    let vars: Vec<_> = step.bindings.iter().map(|b| b.var.as_str()).collect();
    assert_eq!(
        vars,
        [
            "DAG_NAME",
            "DAG_RUN_ID",
            "DAG_RUN_STEP_NAME",
            "DAGU_OUTPUT_FILE",
            "DAGU_REF_step_id"
        ]
    );
}

#[test]
fn parallel_and_sub_dag_calls() {
    let dag = ok("steps:\n  - call: child\n    params: \"A=1 B=2\"\n  - action: dag.run\n    with:\n      dag: process\n      params:\n        ID: ${ITEM.id}\n    parallel:\n      - id: 1\n        region: eu\n      - id: 2\n        region: us\n  - call: child\n    parallel: ${ITEMS}\n");
    let call = dag.steps[0].call.as_ref().unwrap();
    assert_eq!(call.params, vec![p("A", "1"), p("B", "2")]);
    assert_eq!(call.parallel, None);
    let call = dag.steps[1].call.as_ref().unwrap();
    assert_eq!(call.dag, "process");
    let Some(Parallel {
        items: ParallelItems::List(items),
        max_concurrent: 10,
    }) = &call.parallel
    else {
        panic!("{call:?}")
    };
    assert_eq!(items[0], serde_json::json!({"id": 1, "region": "eu"}));
    assert_eq!(
        dag.steps[2]
            .call
            .as_ref()
            .unwrap()
            .parallel
            .as_ref()
            .unwrap()
            .items,
        ParallelItems::Expr("${ITEMS}".into())
    );
}

#[test]
fn foreach_bodies_and_collected_outputs() {
    let dag = ok(r#"
params:
  - name: region
    default: eu
steps:
  - id: list
    run: echo '[{"slug":"a"}]'
    output: EPISODES
  - id: each
    foreach:
      items: ${EPISODES}
      as: episode
      key: ${foreach.episode.slug}
      max_concurrent: 3
      steps:
        - id: fetch
          run: ./fetch.sh ${foreach.episode.url} ${foreach.index} ${params.region}
          outputs: [{name: path}]
        - id: summarize
          run: ./summarize.sh ${steps.fetch.outputs.path}
      collect:
        markdown: ${steps.summarize.outputs.md}
    output: SUMMARIES
  - run: echo ${each.outputs[0].markdown}
"#);
    let each = &dag.steps[1];
    let foreach = each.foreach.as_ref().unwrap();
    assert_eq!(foreach.items, ParallelItems::Expr("${EPISODES}".into()));
    assert_eq!(foreach.as_name, "episode");
    assert_eq!(foreach.key.as_deref(), Some("${foreach.episode.slug}"));
    assert_eq!(foreach.max_concurrent, 3);
    assert_eq!(
        foreach.collect,
        kv(&[("markdown", "${steps.summarize.outputs.md}")])
    );
    let body = &foreach.body.steps;
    assert_eq!(
        body[0].command.as_deref(),
        Some("./fetch.sh ${DAGU_REF_foreach_episode_url} ${DAGU_FOREACH_INDEX} ${DAGU_REF_params_region}")
    );
    assert_eq!(
        body[0].bindings[0],
        bind(
            "DAGU_REF_foreach_episode_url",
            RefSource::ParamPath {
                param: FOREACH_ITEM.into(),
                path: vec!["url".into()]
            }
        )
    );
    // Body steps depend on each other (chain order, references), never on top-level steps.
    assert_eq!(body[1].depends, ["fetch"]);
    assert_eq!(each.depends, ["list"]);
    assert_eq!(
        dag.steps[2].bindings[0],
        bind(
            "DAGU_REF_each_outputs_0_markdown",
            RefSource::StepCollected {
                step_id: "each".into(),
                step_name: "each".into(),
                path: vec!["0".into(), "markdown".into()]
            }
        )
    );
    // A YAML list of any values; an empty one is valid.
    let dag = ok("steps:\n  - foreach:\n      items: [{a: {b: [1]}}, x]\n      steps: [\"echo ${foreach.item}\"]\n  - foreach:\n      items: []\n      steps: [echo]\n");
    let foreach = dag.steps[0].foreach.as_ref().unwrap();
    assert_eq!(
        foreach.items,
        ParallelItems::List(vec![serde_json::json!({"a": {"b": [1]}}), "x".into()])
    );
    assert_eq!(foreach.as_name, "item");
    assert_eq!(
        foreach.body.steps[0].command.as_deref(),
        Some("echo ${DAGU_FOREACH_ITEM}")
    );
}

#[test]
fn preconditions_forms() {
    let dag = ok("preconditions: test -f ready.flag\nsteps:\n  - run: x\n    preconditions:\n      - condition: \"`date +%d`\"\n        expected: \"01\"\n      - condition: test -f maintenance.lock\n        negate: true\n      - command: test -d /tmp\n      - eval: $(date +%u)\n        expected: re:[1-5]\n");
    assert_eq!(
        dag.preconditions[0].check,
        ConditionCheck::Command("test -f ready.flag".into())
    );
    let pre = &dag.steps[0].preconditions;
    assert_eq!(
        pre[0].check,
        ConditionCheck::Match {
            condition: "`date +%d`".into(),
            expected: Expected::Literal("01".into())
        }
    );
    assert!(pre[1].negate);
    assert_eq!(pre[2].check, ConditionCheck::Command("test -d /tmp".into()));
    assert_eq!(
        pre[3].check,
        ConditionCheck::Eval {
            eval: "$(date +%u)".into(),
            expected: Expected::Regex("[1-5]".into())
        }
    );
}

#[test]
fn step_policies() {
    let dag = ok("defaults:\n  timeout_sec: 60\n  env: [D=1]\nsteps:\n  - run: x\n    continue_on: skipped\n    repeat_policy:\n      repeat: until\n      condition: cat status\n      expected: done\n      interval_sec: 10\n      limit: 5\n  - run: x\n    continue_on:\n      failure: true\n      output: [\"re:WARN.*\", ok]\n    repeat_policy:\n      exit_code: [1]\n    env: [E=2]\n    timeout_sec: 5\n  - run: x\n    continue_on: failed\n    stderr: err.log\n");
    let s = &dag.steps;
    assert!(s[0].continue_on.skipped);
    assert_eq!(
        s[0].repeat_policy,
        Some(RepeatPolicy {
            mode: RepeatMode::Until,
            condition: Some(ConditionCheck::Match {
                condition: "cat status".into(),
                expected: Expected::Literal("done".into())
            }),
            exit_code: vec![],
            interval_sec: 10,
            limit: Some(5),
            backoff: None,
            max_interval_sec: None,
        })
    );
    assert_eq!(s[0].timeout_sec, Some(60));
    assert_eq!(s[0].env, kv(&[("D", "1")]));
    assert_eq!(
        s[1].continue_on.output,
        vec![
            Expected::Regex("WARN.*".into()),
            Expected::Literal("ok".into())
        ]
    );
    assert_eq!(s[1].repeat_policy.as_ref().unwrap().mode, RepeatMode::While);
    assert_eq!(s[1].env, kv(&[("D", "1"), ("E", "2")]));
    assert_eq!(s[1].timeout_sec, Some(5));
    assert!(s[2].continue_on.failure);
    assert_eq!(s[2].stderr.as_deref(), Some("err.log"));
}

#[test]
fn secrets_and_working_dirs() {
    let dag = ok("working_dir: /srv/app\nsecrets:\n  - name: API_TOKEN\n    provider: env\n    key: PROD_API_TOKEN\n  - name: DB_PASSWORD\n    provider: file\n    key: secrets/db\nsteps:\n  - run: x\n    working_dir: sub\n  - run: x\n    working_dir: $HOME/x\n");
    assert_eq!(
        dag.secrets,
        vec![
            SecretRef {
                name: "API_TOKEN".into(),
                provider: SecretProvider::Env,
                key: "PROD_API_TOKEN".into()
            },
            SecretRef {
                name: "DB_PASSWORD".into(),
                provider: SecretProvider::File,
                key: "secrets/db".into()
            },
        ]
    );
    assert_eq!(
        dag.steps[0].working_dir,
        Some(PathBuf::from("/srv/app/sub"))
    );
    assert_eq!(dag.steps[1].working_dir, Some(PathBuf::from("$HOME/x")));

    // A base directory given to the loader (a DAG run by hand) replaces the file's directory.
    let options = LoadOptions {
        base_dir: Some(PathBuf::from("/srv/project")),
    };
    let dag = parse_dag_with(
        Path::new("/elsewhere/t.yaml"),
        "working_dir: sub\nsteps:\n  - run: x\n",
        &options,
    )
    .unwrap();
    assert_eq!(dag.working_dir, Some(PathBuf::from("/srv/project/sub")));
    let dag = parse_dag_with(
        Path::new("/elsewhere/t.yaml"),
        "steps:\n  - run: x\n",
        &options,
    )
    .unwrap();
    assert_eq!(dag.working_dir, Some(PathBuf::from("/srv/project")));
}

#[test]
fn validation_errors_name_line_and_key() {
    // (yaml, line, fragments)
    let table: &[(&str, usize, &[&str])] = &[
        ("consts:\n  service: api\nsteps:\n  - run: x\n", 1, &["key `consts`", "a list of one-key maps"]),
        ("steps:\n  - run: echo ${consts.missing}\n", 2, &["`steps[0].run`", "unknown const `missing`"]),
        ("consts:\n  - a: ${params.x}\nsteps:\n  - run: x\n", 2, &["`consts[0].a`", "earlier consts"]),
        ("params:\n  - name: environment\n    type: string\nsteps:\n  - run: echo ${params.region}\n", 5, &["param `region` is not declared"]),
        ("params:\n  - A: 1\n    B: 2\nsteps:\n  - run: x\n", 2, &["key `params[0]`", "needs `name`"]),
        ("steps:\n  - id: build\n    run: x\n  - id: build\n    run: y\n", 4, &["`steps[1].id`", "duplicate step id `build`"]),
        ("steps:\n  - id: build\n    name: Build\n    run: x\n  - name: build\n    run: y\n", 2, &["`steps[0].id`", "name of another step"]),
        ("steps:\n  - id: 1build\n    run: x\n", 2, &["invalid step id `1build`"]),
        ("steps:\n  - id: outputs\n    run: x\n", 2, &["`outputs` is reserved"]),
        ("steps:\n  - id: a\n    run: echo ${steps.b.outputs.y}\n  - id: b\n    run: echo ${steps.a.outputs.x}\n", 2, &["dependency cycle: a -> b -> a", "references"]),
        ("steps:\n  - run: \"\"\n", 2, &["`steps[0].run`", "must not be empty"]),
        ("steps:\n  - run:\n      command: echo hello\n", 2, &["`steps[0].run`", "a command, a script or a list"]),
        ("steps:\n  - run:\n      - \"a\\nb\"\n", 3, &["`steps[0].run[0]`", "one line"]),
        ("steps:\n  - run: x\n    command: y\n", 2, &["`run` replaces `command`"]),
        ("steps:\n  - run: x\n    outputs:\n      - name: image\n", 2, &["`steps[0].outputs`", "needs an `id`"]),
        ("steps:\n  - id: a\n    run: x\n    outputs:\n      - name: v\n        type: xml\n", 6, &["expected `string` or `json`"]),
        ("steps:\n  - run: x\n    retry_policy:\n      limit: often\n", 4, &["`steps[0].retry_policy.limit`", "non-negative integer", "`often`"]),
        ("steps:\n  - run: x\n    retry_policy:\n      interval_sec: 2\n", 3, &["`steps[0].retry_policy`", "needs `limit`"]),
        ("steps:\n  - run: x\n    retry_policy:\n      limit: 2\n      backoff: 0.5\n", 5, &["backoff", "above 1.0"]),
        ("steps:\n  - run: x\n    repeat_policy:\n      repeat: until\n", 3, &["`repeat: until` needs `condition` or `exit_code`"]),
        ("steps:\n  - run: x\n    continue_on: maybe\n", 3, &["`steps[0].continue_on`", "`skipped`, `failed`"]),
        ("steps:\n  - run: x\n    continue_on:\n      exit_code: [one]\n", 4, &["`steps[0].continue_on.exit_code`", "`one`"]),
        ("steps:\n  - run: x\n    preconditions:\n      - expected: \"1\"\n", 4, &["needs `condition`"]),
        ("steps:\n  - run: x\n    preconditions:\n      - eval: $(date)\n", 4, &[".eval`: needs `expected`"]),
        ("steps:\n  - run: x\n    preconditions:\n      - condition: a\n        expected: b\n        unknown: c\n", 6, &["unknown key `unknown`"]),
        ("steps:\n  - run: x\n    parallel: [a, b]\n", 2, &["`parallel` needs a sub-DAG call"]),
        ("steps:\n  - call: child\n    parallel:\n      items: [a]\n      max_concurrent: 0\n", 5, &["max_concurrent", "1 to 1000"]),
        ("steps:\n  - call: child\n    parallel:\n      - [nested]\n", 4, &["`steps[0].parallel[0]`", "flat map"]),
        ("steps:\n  - run: x\n    params: A=1\n", 2, &["`steps[0].params`", "sub-DAG call"]),
        ("steps:\n  - call: child\n    params:\n      - [x]\n", 4, &["`steps[0].params[0]`", "`NAME=value` or a one-key map", "found a list"]),
        ("steps:\n  - call: child\n    params:\n      A: [1]\n", 4, &["`steps[0].params.A`", "a scalar value"]),
        ("steps:\n  - call: child\n    params:\n      - 1X=y\n", 4, &["`steps[0].params`", "invalid param name `1X`"]),
        ("steps:\n  - call: child\n    params: 'A=\"open'\n", 3, &["`steps[0].params`", "unterminated"]),
        ("secrets:\n  - name: T\n    provider: vault\n    key: k\nsteps:\n  - run: x\n", 3, &["`secrets[0].provider`", "`vault`"]),
        ("secrets:\n  - name: T\n    provider: env\nsteps:\n  - run: x\n", 2, &["`secrets[0]`", "needs `key`"]),
        ("steps:\n  - run: x\n---\nsteps:\n  - run: y\n", 4, &["key `name` is required"]),
        ("steps:\n  - run: x\n    continueOn:\n      failure: true\n", 3, &["unknown key `continueOn`", "write `continue_on`"]),
        // Spec 018: foreach shapes, item names, body identities and references.
        ("steps:\n  - foreach:\n      steps: [echo]\n", 2, &["`steps[0].foreach`", "needs `items`"]),
        ("steps:\n  - foreach:\n      items: [a]\n", 2, &["`steps[0].foreach.steps`", "at least one step"]),
        ("steps:\n  - foreach:\n      items: [a]\n      as: index\n      steps: [echo]\n", 4, &["`steps[0].foreach.as`", "invalid item name `index`"]),
        ("steps:\n  - foreach:\n      items: [a]\n      max_concurrent: 1001\n      steps: [echo]\n", 4, &["max_concurrent", "1 to 1000"]),
        ("steps:\n  - foreach:\n      items: [a]\n      steps: [echo]\n      collect:\n        1x: y\n", 6, &["`steps[0].foreach.collect.1x`", "invalid output name"]),
        ("steps:\n  - foreach:\n      items: [a]\n      steps: [echo]\n      unknown: 1\n", 5, &["unknown key `unknown`"]),
        ("steps:\n  - run: x\n    foreach:\n      items: [a]\n      steps: [echo]\n", 2, &["`steps[0].foreach`", "cannot also have `run`"]),
        ("steps:\n  - id: top\n    run: x\n  - foreach:\n      items: [a]\n      steps:\n        - id: top\n          run: y\n", 7, &["`steps[1].foreach.steps[0]`", "`top` is already a top-level step"]),
        ("steps:\n  - id: top\n    run: x\n  - foreach:\n      items: [a]\n      steps:\n        - run: echo ${top.stdout}\n", 7, &["`${top.stdout}`", "cannot read top-level step `top`"]),
        ("steps:\n  - foreach:\n      items: [a]\n      steps:\n        - id: a\n          run: x\n          depends: nope\n", 7, &["`steps[0].foreach.steps[0].depends`", "unknown step `nope`"]),
        ("steps:\n  - id: f\n    call: c\n    parallel: [a]\n    outputs: [{name: x}]\n", 2, &["`steps[0].outputs`", "`${ID.outputs}`"]),
        // Spec 017: context values that never have a source here.
        ("steps:\n  - run: echo ${run.scheduled_at}\n", 2, &["`steps[0].run`", "not supported", "schedule"]),
        ("steps:\n  - run: echo ${paths.artifacts_dir}\n", 2, &["not supported: artifact storage"]),
    ];
    for (yaml, line, fragments) in table {
        let errors = parse(yaml).expect_err(yaml).0;
        let e = &errors[0];
        let text = e.to_string();
        assert_eq!(e.line, Some(*line), "{yaml:?}: {text}");
        assert!(
            text.starts_with(&format!("{}:{line}: ", fixtures().join("t.yaml").display())),
            "{text}"
        );
        for f in *fragments {
            assert!(text.contains(f), "{yaml:?}: `{text}` lacks {f}");
        }
    }
}

#[test]
fn unsupported_dagu_features_are_refused_by_key_and_line() {
    let errors = validate_dag_file(&fixtures().join("refused.yaml"));
    let got: Vec<(Option<usize>, &str)> = errors
        .iter()
        .map(|e| (e.line, e.message.as_str()))
        .collect();
    let want: &[(usize, &[&str])] = &[
        (1, &["key `schedule`: not supported", "not on a schedule"]),
        (2, &["key `mail_on`: not supported"]),
        (
            6,
            &[
                "key `steps[0].executor`: not supported",
                "docker, ssh, http",
            ],
        ),
        (
            9,
            &["key `steps[1].action`: not supported: action `docker.run`"],
        ),
        (14, &["key `steps[2].signal_on_stop`: not supported"]),
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for ((line, message), (want_line, fragments)) in got.iter().zip(want) {
        assert_eq!(*line, Some(*want_line), "{message}");
        for f in *fragments {
            assert!(message.contains(f), "`{message}` lacks {f}");
        }
    }
    // A refused key is reported once: no follow-up errors about `with` or a missing `run`.
    assert!(
        !errors.iter().any(|e| e.message.contains("needs `run`")),
        "{errors:#?}"
    );
}

#[test]
fn validate_lists_every_error_of_a_file() {
    let errors = validate_dag_file(&fixtures().join("many-errors.yaml"));
    let lines: Vec<_> = errors.iter().map(|e| e.line.unwrap_or(0)).collect();
    let text: Vec<_> = errors.iter().map(|e| e.message.as_str()).collect();
    // In the order found: key checks of a step come before its values, the graph last.
    assert_eq!(lines, [6, 8, 12, 11, 9], "{text:#?}");
    assert!(text[0].contains("`steps[0].retry_policy.limit`"));
    assert!(text[1].contains("param `missing` is not declared"));
    assert!(text[2].contains("unknown key `continueOn`"));
    assert!(text[3].contains("`steps[2].timeout_sec`"));
    assert!(text[4].contains("unknown step `nowhere`"));
    assert!(validate_dag_file(&fixtures().join("typical.yaml")).is_empty());
    // `load_dag_file` returns the first of them.
    let first = load_dag_file(&fixtures().join("many-errors.yaml")).unwrap_err();
    assert_eq!(first.to_string(), errors[0].to_string());
}

#[test]
fn old_run_records_without_the_new_fields_still_load() {
    let json = serde_json::json!({
        "name": "old", "description": "", "dag_type": "chain", "params": [], "env": [],
        "steps": [{"name": "a", "command": "true", "script": null, "shell": null,
                   "working_dir": null, "depends": [], "env": [], "timeout_sec": null,
                   "continue_on": {"failure": true}}],
        "timeout_sec": null, "max_clean_up_time_sec": 5, "queue": "old",
        "handler_on": {"success": null, "failure": null, "abort": null, "exit": null},
        "location": "/x/old.yaml"
    });
    let dag: Dag = serde_json::from_value(json).unwrap();
    assert!(dag.steps[0].continue_on.failure);
    assert!(dag.steps[0].bindings.is_empty());
    assert_eq!(dag.working_dir, None);
}

#[test]
fn the_demo_dags_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scheduler/demo/dags");
    for name in ["build", "lint", "long", "release", "test-pr"] {
        let dag = load_dag_file(&dir.join(format!("{name}.yaml"))).unwrap();
        assert!(
            dag.steps
                .iter()
                .all(|s| s.command.is_some() || s.script.is_some()),
            "{name}"
        );
    }
}
