//! What `parallel` and `foreach` steps leave for the steps after them, how their children's
//! statuses make theirs, and the run context values that have a source here: each test follows
//! Dagu's documented behaviour, on our own DAGs.

use super::dagu::step_of;
use super::*;

#[tokio::test]
async fn parallel_outputs_are_collected_and_a_call_passes_its_childs_outputs() {
    let h = Harness::started();
    let rec = h.run_yaml("collect", r#"
steps:
  - id: fan
    call: child
    params: {R: "${ITEM}"}
    parallel: [eu, us]
    output: FAN
  - id: single
    call: child
    params: R=solo
    output: ONE
    outputs: [{name: region}]
  - id: use
    run: |
      printf '%s\n' "${fan.outputs[1].region}" "${FAN.summary.succeeded}" "${ONE.outputs.RESULT}" "${single.outputs.region}" > used.txt
      printf '%s' "${steps.fan.outputs}" > all.txt
---
name: child
params: R=x
steps:
  - id: emit
    run: |
      echo "result-$R"
      printf 'region=%s\n' "$R" >> "$DAGU_OUTPUT_FILE"
    output: RESULT
    outputs: [{name: region}]
"#).await;
    assert_eq!(rec.status, RunStatus::Succeeded, "{rec:?}");
    assert_eq!(read(h.path("dags/used.txt")), "us\n2\nresult-solo\nsolo\n");
    assert_eq!(
        read(h.path("dags/all.txt")),
        r#"[{"RESULT":"result-eu","region":"eu"},{"RESULT":"result-us","region":"us"}]"#
    );
    let fan: serde_json::Value =
        serde_json::from_str(step_of(&rec, "fan").output.as_deref().unwrap()).unwrap();
    assert_eq!(
        fan["summary"],
        serde_json::json!({"total": 2, "succeeded": 2, "failed": 0})
    );
    assert_eq!(fan["results"][0]["status"], "succeeded");
    assert_eq!(fan["results"][1]["params"], "R=\"us\"");
    assert_eq!(
        fan["outputs"][1],
        serde_json::json!({"RESULT": "result-us"})
    );
    assert_eq!(step_of(&rec, "single").outputs["region"], "solo");

    // A declared output the child did not publish fails the call step.
    let rec = h.run_yaml("missing", "steps:\n  - id: c\n    call: child\n    outputs: [{name: nope}]\n---\nname: child\nsteps:\n  - run: \"true\"\n").await;
    assert_eq!(rec.status, RunStatus::Failed);
    assert_step_error(&rec.steps[0], "published no output `nope`");
}

#[tokio::test]
async fn partial_children_make_the_step_partially_succeeded() {
    let h = Harness::started();
    // Every child ends `partially_succeeded`: so does the step, and the run; the next step runs.
    let rec = h
        .run_yaml(
            "partial",
            r#"
steps:
  - call: child
    parallel: [a, b]
  - run: touch after
---
name: child
steps:
  - run: exit 3
    continue_on: {failure: true}
  - run: "true"
"#,
        )
        .await;
    assert_eq!(
        outcome(&rec),
        "partially_succeeded: step1=partially_succeeded step2=succeeded"
    );

    // One child fails: the step fails; `continue_on` covers it and the run goes on.
    let rec = h
        .run_yaml(
            "covered",
            r#"
steps:
  - call: child
    params: {V: "${ITEM}"}
    parallel: [ok, fail]
    continue_on: failed
  - run: touch after2
---
name: child
params: V=x
steps:
  - run: test "$V" != fail
"#,
        )
        .await;
    assert_eq!(
        outcome(&rec),
        "partially_succeeded: step1=failed step2=succeeded"
    );
    assert!(h.path("dags/after2").exists());
}

#[tokio::test]
async fn foreach_runs_its_body_per_item_and_collects_what_each_left() {
    let h = Harness::started();
    let rec = h.run_yaml("episodes", r#"
env:
  - GREETING: hi
steps:
  - id: list
    run: echo '[{"slug":"a","n":1},{"slug":"b","n":2}]'
    output: EPISODES
  - id: each
    foreach:
      items: ${EPISODES}
      as: ep
      key: ${foreach.ep.slug}
      max_concurrent: 2
      steps:
        - id: fetch
          run: printf 'path=%s-%s-%s\n' "${foreach.ep.slug}" "${foreach.index}" "${foreach.key}" >> "$DAGU_OUTPUT_FILE"
          outputs: [{name: path}]
        - id: summarize
          run: printf 'md=%s:%s\n' "${steps.fetch.outputs.path}" "$GREETING" >> "$DAGU_OUTPUT_FILE"
          outputs: [{name: md}]
      collect:
        markdown: ${steps.summarize.outputs.md}
        slug: ${foreach.ep.slug}
    output: SUMMARIES
  - run: printf '%s\n' "${SUMMARIES.summary.total}" "${each.outputs[1].markdown}" "${each.outputs[0].slug}" > done.txt
"#).await;
    assert_eq!(rec.status, RunStatus::Succeeded, "{rec:?}");
    assert_eq!(read(h.path("dags/done.txt")), "2\nb-1-b:hi\na\n");
    let each = step_of(&rec, "each");
    assert_eq!(each.sub_runs.len(), 2);
    for child in &each.sub_runs {
        let (dag_name, run_id) = child.split_once('/').unwrap();
        assert_eq!(dag_name, "episodes.each");
        assert_eq!(h.record(dag_name, run_id).status, RunStatus::Succeeded);
    }
    let summaries: serde_json::Value =
        serde_json::from_str(each.output.as_deref().unwrap()).unwrap();
    assert_eq!(
        summaries["items"][0],
        serde_json::json!({"index": 0, "key": "a", "status": "succeeded",
            "outputs": {"markdown": "a-0-a:hi", "slug": "a"}})
    );
}

#[tokio::test]
async fn foreach_items_stay_data_and_a_failed_body_fails_the_step() {
    let h = Harness::started();
    let rec = h
        .run_yaml(
            "each_fail",
            r#"
steps:
  - id: empty
    foreach:
      items: []
      steps:
        - run: touch never
    output: NONE
  - id: each
    foreach:
      items: ["$(touch pwned)", fail, ok]
      steps:
        - run: printf '%s\n' "${foreach.item}" > "item-${foreach.index}"
        - run: test "${foreach.item}" != fail
    output: ALL
  - run: touch not-reached
"#,
        )
        .await;
    assert_eq!(
        outcome(&rec),
        "failed: empty=succeeded each=failed step3=skipped"
    );
    assert!(!h.path("dags/never").exists());
    assert!(!h.path("dags/pwned").exists(), "an item was run");
    assert_eq!(read(h.path("dags/item-0")), "$(touch pwned)\n");
    assert_eq!(read(h.path("dags/item-2")), "ok\n");
    let none: serde_json::Value =
        serde_json::from_str(step_of(&rec, "empty").output.as_deref().unwrap()).unwrap();
    assert_eq!(none["summary"]["total"], 0);
    let each = step_of(&rec, "each");
    let error = each.error.as_deref().unwrap();
    assert!(
        error.contains("each_fail.each/sub-") && error.contains("ended `failed`"),
        "{error}"
    );
    let all: serde_json::Value = serde_json::from_str(each.output.as_deref().unwrap()).unwrap();
    assert_eq!(
        all["summary"],
        serde_json::json!({"total": 3, "succeeded": 2, "failed": 1})
    );
    assert_eq!(all["items"][1]["status"], "failed");
}

#[tokio::test]
async fn the_run_has_a_work_directory_and_an_actor() {
    let h = Harness::started();
    let dag = h.load(
        "ctx",
        r#"
steps:
  - id: show
    run: |
      test -d "$DAG_RUN_WORK_DIR" && test "$DAG_RUN_WORK_DIR" = "${paths.work_dir}"
      touch "$DAG_RUN_WORK_DIR/scratch"
      printf '%s\n' "${trigger.actor}" "$DAG_RUN_WORK_DIR"
"#,
    );
    let rec = h.run(&dag, "r1", "GITHUB_ACTOR=octocat").await;
    assert_eq!(rec.status, RunStatus::Succeeded, "{rec:?}");
    let work = rec.log_file.parent().unwrap().join("work");
    assert_eq!(
        read(&step_of(&rec, "show").stdout),
        format!("octocat\n{}\n", work.display())
    );
    assert!(work.join("scratch").exists());
}
