//! DAGs in Dagu's format, loaded by the real loader and run with real processes: each test
//! follows a behaviour Dagu documents (step outputs, references, preconditions, step policies,
//! run forms, working directories, dotenv, secrets, params, sub-DAGs, the run context), on our
//! own DAGs.

use super::*;

use dispatch_dag::load_dag_file;

impl Harness {
    /// Writes `yaml` as `dags/<name>.yaml` and loads it as `scheduler start` would.
    pub(crate) fn load(&self, name: &str, yaml: &str) -> Dag {
        let dir = self.path("dags");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        load_dag_file(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Loads `yaml` as `dags/<name>.yaml`, runs it as run `r1` without params and returns its
    /// final record.
    pub(crate) async fn run_yaml(&self, name: &str, yaml: &str) -> RunRecord {
        let dag = self.load(name, yaml);
        self.run(&dag, "r1", "").await
    }

    /// Enqueues a loaded DAG as it is and waits for its final record.
    pub(crate) async fn run(&self, dag: &Dag, run_id: &str, params: &str) -> RunRecord {
        let outcome = enqueue_webhook_run(&self.stores, dag, run_id, params, 1).unwrap();
        assert_eq!(outcome, EnqueueOutcome::Enqueued);
        let status = self.finished(run_id).await;
        let rec = self.record(&dag.name, run_id);
        assert_eq!(rec.status, status);
        rec
    }
}

pub(crate) fn step_of<'a>(rec: &'a RunRecord, name: &str) -> &'a dispatch_dag::StepRecord {
    rec.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step `{name}` in {rec:?}"))
}

#[tokio::test]
async fn outputs_and_references_pass_values_between_steps_as_data() {
    let h = Harness::started();
    let dag = h.load(
        "outputs",
        r#"
params:
  - name: greeting
    default: hello
steps:
  - id: produce
    run: |
      printf 'image=api:v1\n' >> "$DAGU_OUTPUT_FILE"
      printf 'notes<<EOF\nline one\nline two\nEOF\n' >> "$DAGU_OUTPUT_FILE"
      echo produced
    outputs:
      - name: image
      - name: notes
  - id: json
    run: echo '{"data":{"id":7,"name":"$(touch pwned)"}}'
    output: RESULT
  - id: consume
    run: |
      printf '%s\n' "${steps.produce.outputs.image}" "${produce.outputs.notes}" "$RESULT" "${RESULT.data.id}" "${RESULT.data.name}" "${params.greeting}" "${produce.exit_code}" > consumed.txt
      cat "${produce.stdout}" >> consumed.txt
"#,
    );
    let params = format!(
        "greeting={}",
        dispatch_webhook_params::quote("$(touch pwned2)")
    );
    let rec = h.run(&dag, "r1", &params).await;
    assert_eq!(rec.status, RunStatus::Succeeded, "{rec:?}");
    assert_eq!(
        read(h.path("dags/consumed.txt")),
        "api:v1\nline one\nline two\n{\"data\":{\"id\":7,\"name\":\"$(touch pwned)\"}}\n7\n\
         $(touch pwned)\n$(touch pwned2)\n0\nproduced\n"
    );
    for pwned in ["pwned", "pwned2"] {
        assert!(!h.path("dags").join(pwned).exists(), "a value was run");
    }
    // Outputs are kept with the run.
    let produce = step_of(&rec, "produce");
    assert_eq!(produce.outputs["image"], "api:v1");
    assert_eq!(produce.outputs["notes"], "line one\nline two");
    assert_eq!(produce.attempts, 1);
    assert_eq!(
        step_of(&rec, "json").output.as_deref(),
        Some("{\"data\":{\"id\":7,\"name\":\"$(touch pwned)\"}}")
    );
}

#[tokio::test]
async fn an_output_file_that_breaks_the_rules_fails_the_step() {
    let h = Harness::started();
    let rec = h
        .run_yaml(
            "badoutputs",
            r#"
type: graph
steps:
  - id: undeclared
    run: printf 'other=1\na=1\n' >> "$DAGU_OUTPUT_FILE"
    outputs: [{name: a}]
  - id: missing
    run: "true"
    outputs: [{name: a}]
  - id: badjson
    run: echo 'a=not json' >> "$DAGU_OUTPUT_FILE"
    outputs: [{name: a, type: json}]
  - id: stdout_is_not_an_output
    run: echo a=1
    outputs: [{name: a}]
  - id: failed_attempt
    run: echo 'a=1' >> "$DAGU_OUTPUT_FILE"; exit 4
    outputs: [{name: a}]
"#,
        )
        .await;
    assert_eq!(rec.status, RunStatus::Failed);
    for (name, want) in [
        ("undeclared", "`other` is not declared"),
        ("missing", "not written to DAGU_OUTPUT_FILE: `a`"),
        ("badjson", "not valid JSON"),
        ("stdout_is_not_an_output", "not written to DAGU_OUTPUT_FILE"),
        ("failed_attempt", "exit status 4"),
    ] {
        let s = step_of(&rec, name);
        assert_eq!(s.status, StepStatus::Failed, "{name}");
        assert!(s.error.as_deref().unwrap().contains(want), "{name}: {s:?}");
        assert!(s.outputs.is_empty(), "{name} published outputs");
    }
}

#[tokio::test]
async fn step_preconditions_skip_and_continue_on_skipped_lets_dependents_run() {
    let h = Harness::started();
    let rec = h
        .run_yaml(
            "gates",
            r#"
env:
  - FEATURE: "off"
steps:
  - id: optional
    preconditions:
      - condition: ${env.FEATURE}
        expected: "on"
    run: touch optional-ran
  - id: after_optional
    run: touch after-ran
  - id: tolerant
    depends: []
    preconditions: test -f missing.flag
    continue_on: skipped
    run: touch tolerant-ran
  - id: after_tolerant
    depends: tolerant
    run: touch after-tolerant-ran
  - id: negated
    depends: []
    preconditions:
      - condition: test -f missing.flag
        negate: true
    run: touch negated-ran
"#,
        )
        .await;
    assert_eq!(outcome(&rec), "succeeded: optional=skipped after_optional=skipped tolerant=skipped after_tolerant=succeeded negated=succeeded");
    assert_eq!(
        step_of(&rec, "optional").error.as_deref(),
        Some("preconditions not met")
    );
    let ran = |f: &str| h.path("dags").join(f).exists();
    assert!(!ran("optional-ran") && !ran("after-ran") && !ran("tolerant-ran"));
    assert!(ran("after-tolerant-ran") && ran("negated-ran"));
}

#[tokio::test]
async fn dag_preconditions_not_met_abort_the_run_before_any_step() {
    let h = Harness::started();
    let dag = h.load(
        "gated",
        r#"
params:
  - name: enabled
    default: "false"
preconditions:
  - condition: ${params.enabled}
    expected: "true"
handler_on:
  abort:
    run: touch abort-handler-ran
steps:
  - run: touch main-ran
"#,
    );
    let rec = h.run(&dag, "off", "").await;
    assert_eq!(rec.status, RunStatus::Aborted);
    assert_eq!(rec.error.as_deref(), Some("DAG preconditions not met"));
    assert_eq!(rec.steps[0].status, StepStatus::Skipped);
    assert!(!h.path("dags/main-ran").exists());
    assert!(h.path("dags/abort-handler-ran").exists(), "{rec:?}");

    let rec = h.run(&dag, "on", "enabled=true").await;
    assert_eq!(rec.status, RunStatus::Succeeded);
    assert!(h.path("dags/main-ran").exists());
}

#[tokio::test]
async fn retry_and_repeat_policies() {
    let h = Harness::started();
    let rec = h
        .run_yaml(
            "policies",
            r#"
type: graph
steps:
  - id: flaky
    run: |
      n=$(cat flaky.count 2>/dev/null || echo 0); n=$((n+1)); echo $n > flaky.count
      [ "$n" -ge 3 ]
    retry_policy: {limit: 3, interval_sec: 0}
  - id: hopeless
    run: exit 1
    retry_policy: {limit: 1, interval_sec: 0}
  - id: wrong_code
    run: exit 2
    retry_policy: {limit: 3, interval_sec: 0, exit_code: [75]}
  - id: until_done
    run: |
      n=$(cat until.count 2>/dev/null || echo 0); echo $((n+1)) > until.count
    repeat_policy:
      repeat: until
      condition: test "$(cat until.count)" -ge 3
      interval_sec: 0
      limit: 10
  - id: while_code
    run: |
      n=$(cat while.count 2>/dev/null || echo 0); n=$((n+1)); echo $n > while.count
      [ "$n" -ge 2 ] || exit 1
    repeat_policy:
      exit_code: [1]
  - id: limited
    run: echo x >> limited.txt
    repeat_policy: {repeat: while, limit: 3}
"#,
        )
        .await;
    assert_eq!(rec.status, RunStatus::Failed, "{rec:?}");
    let summary: Vec<(&str, StepStatus, u32)> = rec
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.status, s.attempts))
        .collect();
    assert_eq!(
        summary,
        [
            ("flaky", StepStatus::Succeeded, 3),
            ("hopeless", StepStatus::Failed, 2),
            ("wrong_code", StepStatus::Failed, 1),
            ("until_done", StepStatus::Succeeded, 3),
            ("while_code", StepStatus::Succeeded, 2),
            ("limited", StepStatus::Succeeded, 3),
        ]
    );
    assert_eq!(read(h.path("dags/limited.txt")), "x\nx\nx\n");
    assert!(read(&rec.log_file).contains("step `flaky` attempt 1 failed (exit status 1); retrying"));
}

#[tokio::test]
async fn continue_on_exit_codes_output_and_mark_success() {
    let h = Harness::started();
    let rec = h
        .run_yaml(
            "goon",
            r#"
steps:
  - id: known_code
    run: exit 3
    continue_on: {exit_code: [3]}
  - id: warned
    run: 'echo "WARN: disk almost full"; exit 1'
    continue_on:
      output: ["re:^WARN"]
  - id: marked
    run: exit 5
    continue_on: {exit_code: [5], mark_success: true}
  - id: last
    run: touch last-ran
"#,
        )
        .await;
    assert_eq!(
        outcome(&rec),
        "partially_succeeded: known_code=failed warned=failed marked=succeeded last=succeeded"
    );
    assert_eq!(step_of(&rec, "marked").exit_code, Some(5));
    assert!(h.path("dags/last-ran").exists());

    let rec = h
        .run_yaml(
            "stop",
            "steps:\n  - run: exit 4\n    continue_on: {exit_code: [3]}\n  - run: touch never\n",
        )
        .await;
    assert_eq!(rec.status, RunStatus::Failed);
    assert_eq!(rec.steps[1].status, StepStatus::Skipped);
}

#[tokio::test]
async fn stream_copies_and_secrets_masked_in_every_log() {
    let h = Harness::started();
    std::fs::create_dir_all(h.path("dags")).unwrap();
    std::fs::write(h.path("dags/db-password"), "s3cr3t-pw\n").unwrap();
    let home = std::env::var("HOME").unwrap();
    let rec = h
        .run_yaml(
            "secrets",
            r#"
secrets:
  - name: DB_PASSWORD
    provider: file
    key: db-password
  - name: API_TOKEN
    provider: env
    key: HOME
steps:
  - id: talk
    run: |
      echo "password is $DB_PASSWORD and token $API_TOKEN"
      echo "err $DB_PASSWORD" >&2
      printf '%s' "$DB_PASSWORD" > plain.txt
    stdout: logs/talk.out
    stderr: logs/talk.err
    output: SAID
"#,
        )
        .await;
    assert_eq!(rec.status, RunStatus::Succeeded, "{rec:?}");
    let said = "password is ******* and token *******\n";
    let talk = step_of(&rec, "talk");
    assert_eq!(read(&talk.stdout), said);
    assert_eq!(read(h.path("dags/logs/talk.out")), said);
    assert_eq!(read(&talk.stderr), "err *******\n");
    assert_eq!(read(h.path("dags/logs/talk.err")), "err *******\n");
    assert_eq!(talk.output.as_deref(), Some(said.trim_end()));
    // The step itself got the real value.
    assert_eq!(read(h.path("dags/plain.txt")), "s3cr3t-pw");
    let stored = read(h.path("data/runs/secrets/r1.jsonl"));
    assert!(!stored.contains("s3cr3t-pw") && !stored.contains(&format!("token {home}")));

    let rec = h.run_yaml("nosecret", "secrets:\n  - name: TOKEN\n    provider: env\n    key: DISPATCH_TEST_CERTAINLY_UNSET\nsteps:\n  - run: touch ran\n").await;
    assert_eq!(rec.status, RunStatus::Failed);
    assert_eq!(
        rec.error.as_deref(),
        Some("secret `TOKEN`: the environment variable `DISPATCH_TEST_CERTAINLY_UNSET` is not set")
    );
    assert_eq!(rec.steps[0].status, StepStatus::Skipped);
    assert!(!h.path("dags/ran").exists());
}

#[tokio::test]
async fn run_lists_scripts_and_shebang_lines() {
    let h = Harness::started();
    let rec = h
        .run_yaml(
            "forms",
            r#"
shell: bash
type: graph
steps:
  - id: list
    run:
      - echo one
      - "false"
      - echo three
  - id: shebang
    run: |
      #!/bin/cat
      not a command
  - id: forced
    shell: sh
    run: |
      #!/bin/cat
      echo "ran by sh"
  - id: dag_shell
    run: test -n "$BASH_VERSION" && echo bash
"#,
        )
        .await;
    assert_eq!(
        outcome(&rec),
        "failed: list=failed shebang=succeeded forced=succeeded dag_shell=succeeded"
    );
    let out = |name: &str| read(&step_of(&rec, name).stdout);
    assert_eq!(out("list"), "one\n", "the first failure ends the list");
    assert_eq!(out("shebang"), "#!/bin/cat\nnot a command\n");
    assert_eq!(out("forced"), "ran by sh\n");
    assert_eq!(out("dag_shell"), "bash\n");
}

#[tokio::test]
async fn depends_as_given_and_max_active_steps() {
    let h = Harness::started();
    let m = |n: &str| h.path(n).display().to_string();
    // `b` says `depends: []`: it must run beside `a`, not after it (each waits for the other).
    let dag = h.load(
        "together",
        &format!(
            "steps:\n  - id: a\n    timeout_sec: 30\n    run: touch {a}; while [ ! -e {b} ]; do sleep 0.05; done\n  - id: b\n    depends: []\n    timeout_sec: 30\n    run: touch {b}; while [ ! -e {a} ]; do sleep 0.05; done\n",
            a = m("a_started"),
            b = m("b_started")
        ),
    );
    let rec = h.run(&dag, "r1", "").await;
    assert_eq!(rec.status, RunStatus::Succeeded, "{rec:?}");

    let body = format!(
        "if [ -e {busy} ]; then touch {overlap}; fi; touch {busy}; sleep 0.2; rm {busy}",
        busy = m("busy"),
        overlap = m("overlap")
    );
    let dag = h.load(
        "one_at_a_time",
        &format!(
            "type: graph\nmax_active_steps: 1\nsteps:\n  - run: {body}\n  - run: {body}\n  - run: {body}\n"
        ),
    );
    let rec = h.run(&dag, "r1", "").await;
    assert_eq!(rec.status, RunStatus::Succeeded);
    assert!(!h.path("overlap").exists(), "steps overlapped");
}

#[tokio::test]
async fn working_directories_are_expanded_resolved_and_created() {
    let h = Harness::started();
    let base = h.path("wd");
    let dag = h.load(
        "dirs",
        &format!(
            r#"
params:
  - name: base
    default: {base}
env:
  - LEAF: deep
working_dir: ${{params.base}}/${{LEAF}}
steps:
  - id: top
    run: pwd
  - id: sub
    working_dir: sub/dir
    run: pwd
  - id: home
    working_dir: "~"
    run: pwd
"#,
            base = base.display()
        ),
    );
    let rec = h.run(&dag, "r1", "").await;
    assert_eq!(rec.status, RunStatus::Succeeded, "{rec:?}");
    let pwd = |name: &str| PathBuf::from(read(&step_of(&rec, name).stdout).trim_end());
    let deep = base.join("deep").canonicalize().unwrap();
    assert_eq!(pwd("top"), deep);
    assert_eq!(pwd("sub"), deep.join("sub/dir"));
    assert_eq!(
        pwd("home"),
        PathBuf::from(std::env::var("HOME").unwrap())
            .canonicalize()
            .unwrap()
    );
}

#[tokio::test]
async fn dotenv_files_param_eval_and_param_checks() {
    let h = Harness::started();
    std::fs::create_dir_all(h.path("dags")).unwrap();
    std::fs::write(h.path("dags/.env.base"), "A=base\nB=base\n").unwrap();
    std::fs::write(h.path("dags/.env.local"), "export B=\"local\"\n").unwrap();
    let dag = h.load(
        "settings",
        r#"
dotenv:
  - .env.base
  - .env.local
  - .env.absent
params:
  - name: count
    type: integer
    default: "2"
  - name: branch
    eval: $(printf 'ma')in
steps:
  - run: printf '%s|%s|%s|%s\n' "$A" "$B" "$count" "$branch"
"#,
    );
    let rec = h.run(&dag, "r1", "").await;
    assert_eq!(rec.status, RunStatus::Succeeded, "{rec:?}");
    assert_eq!(read(&rec.steps[0].stdout), "base|local|2|main\n");
    assert!(read(&rec.log_file).contains("dotenv file `.env.absent` not found"));

    // A caller's value wins over `eval`; a value of the wrong type stops the run.
    let rec = h.run(&dag, "r2", "branch=dev").await;
    assert_eq!(read(&rec.steps[0].stdout), "base|local|2|dev\n");
    let rec = h.run(&dag, "r3", "count=many").await;
    assert_eq!(rec.status, RunStatus::Failed);
    assert_eq!(
        rec.error.as_deref(),
        Some("param `count` must be an integer")
    );
    assert_eq!(rec.steps[0].status, StepStatus::Skipped);
}

#[tokio::test]
async fn the_built_in_run_context_reaches_every_step() {
    let h = Harness::started();
    let rec = h.run_yaml("context", r#"
params: A=1
steps:
  - id: show
    run: printf '%s\n' "$DAG_RUN_STEP_NAME" "$DAG_RUN_STEP_STDOUT_FILE" "$DAG_RUN_STEP_STDERR_FILE" "$DAGU_OUTPUT_FILE" "${run.id}" "${dag.name}" "${step.id}" "$DAGU_PARAMS_JSON" "${trigger.type}"
"#).await;
    let show = step_of(&rec, "show");
    let dir = rec.log_file.parent().unwrap();
    let want = format!(
        "show\n{}\n{}\n{}\nr1\ncontext\nshow\n{{\"A\":\"1\"}}\nwebhook\n",
        show.stdout.display(),
        show.stderr.display(),
        dir.join("show.outputs").display()
    );
    assert_eq!(read(&show.stdout), want);
}

#[tokio::test]
async fn sub_dag_calls_run_children_per_item_in_the_steps_directory() {
    let h = Harness::started();
    std::fs::create_dir_all(h.path("dags")).unwrap();
    std::fs::write(
        h.path("dags/helper.yaml"),
        "params: WHO=nobody\nsteps:\n  - run: echo \"helped $WHO\" > helped.txt\n",
    )
    .unwrap();
    let rec = h
        .run_yaml(
            "fanout",
            r#"
steps:
  - id: prepare
    run: mkdir -p area && echo '["eu","us"]'
    output: REGIONS
  - id: fan
    working_dir: area
    call: deploy
    params:
      REGION: ${ITEM}
    parallel:
      items: ${REGIONS}
      max_concurrent: 2
  - id: single
    call: deploy
    params: REGION=solo
  - id: from_store
    call: helper
    params: WHO=me
---
name: deploy
params:
  - REGION: none
steps:
  - run: test "$REGION" != fail && echo "$REGION" > "deployed-$REGION"
"#,
        )
        .await;
    assert_eq!(rec.status, RunStatus::Succeeded, "{rec:?}");
    assert_eq!(read(h.path("dags/area/deployed-eu")), "eu\n");
    assert_eq!(read(h.path("dags/area/deployed-us")), "us\n");
    assert_eq!(read(h.path("dags/deployed-solo")), "solo\n");
    assert_eq!(read(h.path("dags/helped.txt")), "helped me\n");
    let fan = step_of(&rec, "fan");
    assert_eq!(fan.sub_runs.len(), 2);
    for child in &fan.sub_runs {
        let (dag_name, run_id) = child.split_once('/').unwrap();
        let child = h.record(dag_name, run_id);
        assert_eq!(child.status, RunStatus::Succeeded);
        assert_eq!(child.trigger, "subdag");
        assert!(
            read(&fan.stdout).contains(&format!("sub-DAG run `deploy/{run_id}` ended `succeeded`"))
        );
    }

    let rec = h.run_yaml("fanfail", "steps:\n  - call: deploy\n    parallel: [ok, fail]\n    params: {REGION: \"${ITEM}\"}\n  - run: touch after\n---\nname: deploy\nparams: REGION=x\nsteps:\n  - run: test \"$REGION\" != fail\n").await;
    assert_eq!(outcome(&rec), "failed: step1=failed step2=skipped");
    assert_step_error(&rec.steps[0], "ended `failed`");
}

/// A Dagu user's typical DAG: params with a declaration, env, consts, a working directory,
/// ids and outputs passed between steps, a DAG precondition, a retry, a script step, a step
/// precondition, `continue_on`, a stdout file, a parallel sub-DAG call and a handler.
#[tokio::test]
async fn a_typical_dagu_dag_runs_to_the_documented_result() {
    let h = Harness::started();
    let work = h.path("dags/work");
    std::fs::create_dir_all(&work).unwrap();
    // Fails with 75 (a retryable code) once, then publishes its row count.
    write_script(
        &work.join("fetch.sh"),
        "#!/bin/sh\nif [ ! -e fetched-once ]; then touch fetched-once; exit 75; fi\necho \"fetching $2\"\necho rows=42 >> \"$DAGU_OUTPUT_FILE\"\n",
    );
    write_script(
        &work.join("publish.sh"),
        "#!/bin/sh\necho \"publishing $1\"\nexit 3\n",
    );
    let dag = h.load(
        "nightly",
        r#"
description: nightly report
working_dir: ./work
consts:
  - service: reports
params:
  - name: environment
    type: string
    default: staging
    enum: [staging, production]
  - DAY: today
env:
  - REPORT_DIR: ${consts.service}-out
  - TARGET: ${params.environment}
preconditions:
  - condition: ${params.environment}
    expected: re:^(staging|production)$
steps:
  - id: fetch
    name: Fetch data
    run: ./fetch.sh --day "$DAY"
    retry_policy:
      limit: 3
      interval_sec: 0
      exit_code: [75]
    outputs:
      - name: rows
  - id: build
    run: |
      mkdir -p "$REPORT_DIR"
      echo "building from ${steps.fetch.outputs.rows} rows for $TARGET"
      printf 'file=%s/report.csv\n' "$REPORT_DIR" >> "$DAGU_OUTPUT_FILE"
    outputs:
      - name: file
    preconditions: test -x ./fetch.sh
  - id: publish
    run: ./publish.sh ${build.outputs.file}
    continue_on:
      exit_code: [3]
      mark_success: true
    stdout: publish.log
  - id: notify
    call: notify
    params:
      CHANNEL: ${ITEM}
      ENV: ${params.environment}
    parallel:
      items: [ops, dev]
      max_concurrent: 2
handler_on:
  success:
    run: echo "run ${run.id} done" > done.txt
---
name: notify
params:
  - CHANNEL: general
  - ENV: none
steps:
  - run: echo "notify $CHANNEL in $ENV" > "notified-$CHANNEL.txt"
"#,
    );
    let rec = h.run(&dag, "r1", "environment=production").await;
    assert_eq!(rec.status, RunStatus::Succeeded, "{rec:?}");
    let names: Vec<&str> = rec.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["Fetch data", "build", "publish", "notify", "on_success"]
    );
    let fetch = step_of(&rec, "Fetch data");
    assert_eq!((fetch.attempts, fetch.outputs["rows"].as_str()), (2, "42"));
    assert_eq!(read(&fetch.stdout), "fetching today\n");
    assert_eq!(
        read(&step_of(&rec, "build").stdout),
        "building from 42 rows for production\n"
    );
    assert_eq!(
        step_of(&rec, "build").outputs["file"],
        "reports-out/report.csv"
    );
    let publish = step_of(&rec, "publish");
    assert_eq!(
        (publish.status, publish.exit_code),
        (StepStatus::Succeeded, Some(3))
    );
    assert_eq!(
        read(work.join("publish.log")),
        "publishing reports-out/report.csv\n"
    );
    assert_eq!(step_of(&rec, "notify").sub_runs.len(), 2);
    assert_eq!(
        read(work.join("notified-ops.txt")),
        "notify ops in production\n"
    );
    assert_eq!(
        read(work.join("notified-dev.txt")),
        "notify dev in production\n"
    );
    assert_eq!(read(work.join("done.txt")), "run r1 done\n");

    // A value outside the declared `enum` stops the run before any step.
    let rec = h.run(&dag, "r2", "environment=dev").await;
    assert_eq!(rec.status, RunStatus::Failed);
    assert_eq!(
        rec.error.as_deref(),
        Some("param `environment` must be one of `staging`, `production`")
    );
    assert!(rec.steps.iter().all(|s| s.status == StepStatus::Skipped));
}

fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn stopping_a_run_stops_its_sub_dag_children() {
    let h = Harness::started();
    let handle = h.handle();
    let started = h.path("child_started");
    let dag = h.load(
        "parent",
        &format!(
            "steps:\n  - call: child\n  - run: touch never\n---\nname: child\nsteps:\n  - run: touch {}; sleep 60\n",
            started.display()
        ),
    );
    enqueue_webhook_run(&h.stores, &dag, "r1", "", 1).unwrap();
    wait_for("the child step to start", || started.exists()).await;
    assert!(handle.stop("parent", "r1").unwrap());
    assert_eq!(h.finished("r1").await, RunStatus::Aborted);
    let rec = h.record("parent", "r1");
    assert_eq!(outcome(&rec), "aborted: step1=aborted step2=skipped");
    let (dag_name, run_id) = rec.steps[0].sub_runs[0].split_once('/').unwrap();
    let child = h.record(dag_name, run_id);
    assert_eq!(child.status, RunStatus::Aborted);
    assert_eq!(child.error.as_deref(), Some("run stopped"));
    assert!(!h.path("dags/never").exists());
}

#[tokio::test]
async fn a_stop_during_delay_sec_starts_no_step() {
    let h = Harness::started();
    let handle = h.handle();
    let dag = h.load("delayed", "delay_sec: 600\nsteps:\n  - run: touch ran\n");
    enqueue_webhook_run(&h.stores, &dag, "r1", "", 1).unwrap();
    let log = h.path("logs/delayed/r1");
    wait_for("the delay to begin", || {
        std::fs::read_dir(&log)
            .ok()
            .and_then(|mut attempts| attempts.next())
            .and_then(|a| std::fs::read_to_string(a.ok()?.path().join("run.log")).ok())
            .is_some_and(|text| text.contains("delay_sec"))
    })
    .await;
    assert!(handle.stop("delayed", "r1").unwrap());
    assert_eq!(h.finished("r1").await, RunStatus::Aborted);
    assert_eq!(
        h.record("delayed", "r1").steps[0].status,
        StepStatus::Skipped
    );
    assert!(!h.path("dags/ran").exists());
}

#[tokio::test]
async fn max_output_size_bounds_captured_output_and_handlers_see_the_status() {
    let h = Harness::started();
    let rec = h
        .run_yaml(
            "big",
            r#"
max_output_size: 8
handler_on:
  failure:
    run: echo "$DAG_RUN_STATUS ${run.status}"
steps:
  - run: echo 0123456789
    output: TOO_LONG
"#,
        )
        .await;
    assert_eq!(rec.status, RunStatus::Failed);
    let error = rec.steps[0].error.as_deref().unwrap();
    assert!(
        error.contains("longer than max_output_size (8 bytes)"),
        "{error}"
    );
    assert_eq!(rec.steps[0].output.as_deref(), Some("01234567"));
    // The log still has all of it.
    assert_eq!(read(&rec.steps[0].stdout), "0123456789\n");
    assert_eq!(read(&step_of(&rec, "on_failure").stdout), "failed failed\n");
}

#[tokio::test]
async fn a_step_timeout_stops_the_sub_dag_it_called() {
    let h = Harness::started();
    let rec = h.run_yaml("slowcall", "max_clean_up_time_sec: 1\nsteps:\n  - call: child\n    timeout_sec: 1\n---\nname: child\nsteps:\n  - run: sleep 60\n").await;
    assert_eq!(rec.status, RunStatus::Failed);
    let call = &rec.steps[0];
    assert_eq!(call.exit_code, Some(124));
    assert_eq!(call.error.as_deref(), Some("step timed out after 1s"));
    let (dag_name, run_id) = call.sub_runs[0].split_once('/').unwrap();
    assert_eq!(h.record(dag_name, run_id).status, RunStatus::Aborted);
}

#[tokio::test]
async fn a_secret_passed_to_a_sub_dag_stays_masked_in_its_record_and_logs() {
    let h = Harness::started();
    std::fs::create_dir_all(h.path("dags")).unwrap();
    std::fs::write(h.path("dags/token"), "t0k3n-value").unwrap();
    let dag = h.load("passdown", "secrets:\n  - name: TOKEN\n    provider: file\n    key: token\nsteps:\n  - call: child\n    params:\n      GIVEN: ${TOKEN}\n---\nname: child\nparams: GIVEN=none\nsteps:\n  - run: echo \"got $GIVEN\"; printf '%s' \"$GIVEN\" > given.txt\n");
    let rec = h.run(&dag, "r1", "").await;
    assert_eq!(rec.status, RunStatus::Succeeded, "{rec:?}");
    assert_eq!(read(h.path("dags/given.txt")), "t0k3n-value");
    let (dag_name, run_id) = rec.steps[0].sub_runs[0].split_once('/').unwrap();
    let child = h.record(dag_name, run_id);
    assert_eq!(read(&child.steps[0].stdout), "got *******\n");
    assert_eq!(child.params, "GIVEN=\"*******\"");
    let stored = read(h.path(&format!("data/runs/child/{run_id}.jsonl")));
    assert!(!stored.contains("t0k3n-value"), "{stored}");
}

#[tokio::test]
async fn positional_params_are_the_commands_arguments() {
    let h = Harness::started();
    let dag = h.load("positional", "params: first second\nsteps:\n  - run: echo \"$1 and $2\"\n  - run: |\n      echo \"script got $1\"\n      echo \"and $2\"\n");
    let rec = h.run(&dag, "r1", "").await;
    assert_eq!(read(&rec.steps[0].stdout), "first and second\n");
    let params = format!("one {}", dispatch_webhook_params::quote("$(touch pwned)"));
    let rec = h.run(&dag, "r2", &params).await;
    assert_eq!(read(&rec.steps[0].stdout), "one and $(touch pwned)\n");
    assert_eq!(
        read(&rec.steps[1].stdout),
        "script got one\nand $(touch pwned)\n"
    );
    assert!(!h.path("dags/pwned").exists());
}
