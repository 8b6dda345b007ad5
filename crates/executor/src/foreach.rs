//! `foreach` (`docs/dag-format.md`, "Sub-DAGs, parallel and foreach"): the step's inline body
//! runs once per item, each time as a child run of the body (recorded like a sub-DAG run), at
//! most `max_concurrent` at once. The item reaches the body only as the params
//! `DAGU_FOREACH_ITEM`, `DAGU_FOREACH_INDEX` and `DAGU_FOREACH_KEY`, which the loader's
//! rewrites of `${foreach.*}` read: never as command text.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};

use dispatch_dag::{
    Dag, Foreach, ParallelItems, RunStatus, StepStatus, FOREACH_INDEX, FOREACH_ITEM, FOREACH_KEY,
};
use dispatch_webhook_params::Param;
use serde_json::Value;

use crate::env::{expand, lookup};
use crate::outputs::{json_path, json_text};
use crate::subdag::{
    check_depth, collected, json_map, run_children, start_run, step_end, CallEnd, Caller, ChildEnd,
    MAX_ITEMS,
};

/// Longest DAG name (the body's name is derived from its parent's).
const MAX_NAME: usize = dispatch_dag::MAX_DAG_NAME_LEN;

/// One item, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    value: Value,
    key: String,
}

/// Runs the step's `foreach`.
pub(crate) async fn run_foreach(caller: &Caller<'_>, foreach: &Foreach) -> CallEnd {
    let Caller {
        run,
        job,
        env,
        stop,
        ..
    } = *caller;
    if let Err(e) = check_depth(run, &job.step.name) {
        return CallEnd::failed(e);
    }
    let items = match items(foreach, env) {
        Ok(items) => items,
        Err(e) => return CallEnd::failed(e),
    };
    let body = body_dag(&run.dag, foreach, &job.stem);
    let what = |i: usize| format!("item {i} (key `{}`)", items[i].key);
    let count = (items.len(), foreach.max_concurrent.max(1) as usize);
    let (ends, sub_runs) = run_children(caller, count, &what, |i| {
        let mut params: Vec<Param> = run
            .facts
            .params
            .iter()
            .map(|(n, v)| Param::named(n.clone(), v.clone()))
            .collect();
        params.extend([
            Param::named(FOREACH_ITEM, json_text(&items[i].value)),
            Param::named(FOREACH_INDEX, i.to_string()),
            Param::named(FOREACH_KEY, items[i].key.clone()),
        ]);
        start_run(caller, body.clone(), true, &params)
    })
    .await;

    // Collect from each body that ended well; a collect that does not resolve fails its item.
    let mut collects: Vec<Result<BTreeMap<String, String>, String>> = Vec::new();
    for (i, end) in ends.iter().enumerate() {
        collects.push(match end.ended_well() {
            true => collect(foreach, &body, &items[i], i, end, env),
            false => Err(String::new()),
        });
    }
    let mut result = step_end(&ends, stop, &what);
    if let Some((i, Err(e))) = collects
        .iter()
        .enumerate()
        .find(|(i, c)| ends[*i].ended_well() && c.is_err())
    {
        if result.error.is_none() {
            result.status = StepStatus::Failed;
            result.error = Some(format!("{}: {e}", what(i)));
        }
    }
    result.sub_runs = sub_runs;
    result.output = Some(aggregate(&items, &ends, &collects).to_string());
    result.collected = collected(collects.iter().filter_map(|c| c.as_ref().ok().cloned()));
    result
}

/// The items, each with its key: a YAML list, or a string that must resolve to a JSON array.
fn items(foreach: &Foreach, env: &[(String, String)]) -> Result<Vec<Item>, String> {
    let var = |name: &str| lookup(env, name).or_else(|| std::env::var(name).ok());
    let values = match &foreach.items {
        ParallelItems::List(values) => values.clone(),
        ParallelItems::Expr(text) => {
            let text = expand(text, &var);
            match serde_json::from_str::<Value>(text.trim()) {
                Ok(Value::Array(values)) => values,
                Ok(_) => return Err("`foreach.items` is JSON but not an array".to_owned()),
                Err(_) => return Err("`foreach.items` did not resolve to a JSON array".to_owned()),
            }
        }
    };
    if values.len() > MAX_ITEMS {
        return Err(format!(
            "`foreach.items` has {} items, more than {MAX_ITEMS}",
            values.len()
        ));
    }
    let mut keys = HashSet::new();
    let mut items = Vec::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
        let key = match &foreach.key {
            None => i.to_string(),
            Some(text) => expand(text, &|name: &str| {
                item_scope(&foreach.as_name, &value, i, None, name).or_else(|| var(name))
            }),
        };
        if key.is_empty() {
            return Err(format!("`foreach.key` of item {i} is empty"));
        }
        if !keys.insert(key.clone()) {
            return Err(format!("`foreach.key` `{key}` is the key of two items"));
        }
        items.push(Item { value, key });
    }
    Ok(items)
}

/// `foreach.index`, `foreach.key` (when known), `foreach.<as>` and `foreach.<as>.field`.
fn item_scope(
    as_name: &str,
    value: &Value,
    index: usize,
    key: Option<&str>,
    name: &str,
) -> Option<String> {
    let rest = name.strip_prefix("foreach.")?;
    match rest {
        "index" => Some(index.to_string()),
        "key" => key.map(str::to_owned),
        _ if rest == as_name => Some(json_text(value)),
        _ => {
            let field = rest.strip_prefix(as_name)?.strip_prefix('.')?;
            let path: Vec<String> = field.split('.').map(str::to_owned).collect();
            json_path(&value.to_string(), &path)
        }
    }
}

/// The body as a DAG of its own: the parent's environment, dotenv files, secrets, shell and
/// limits, named `<parent>.<step file stem>`.
fn body_dag(parent: &Dag, foreach: &Foreach, stem: &str) -> Dag {
    let mut name = format!("{}.{stem}", parent.name);
    if name.len() > MAX_NAME {
        let mut cut = MAX_NAME;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    Dag {
        name: name.clone(),
        queue: name,
        location: parent.location.clone(),
        env: parent.env.clone(),
        bindings: parent.bindings.clone(),
        dotenv: parent.dotenv.clone(),
        secrets: parent.secrets.clone(),
        shell: parent.shell.clone(),
        consts: parent.consts.clone(),
        max_output_size: parent.max_output_size,
        max_clean_up_time_sec: parent.max_clean_up_time_sec,
        hist_retention_days: parent.hist_retention_days,
        ..(*foreach.body).clone()
    }
}

/// The `collect` map of a body that ended well: each text with the item's references and the
/// body's step outputs (`${steps.ID.outputs.NAME}`, `${ID.outputs.NAME}`) resolved; a reference
/// that does not resolve is an error.
fn collect(
    foreach: &Foreach,
    body: &Dag,
    item: &Item,
    index: usize,
    end: &ChildEnd,
    env: &[(String, String)],
) -> Result<BTreeMap<String, String>, String> {
    let Some(Ok(record)) = &end.record else {
        return Ok(BTreeMap::new());
    };
    let missing = RefCell::new(None::<String>);
    let lookup_name = |name: &str| -> Option<String> {
        if let Some(v) = item_scope(&foreach.as_name, &item.value, index, Some(&item.key), name) {
            return Some(v);
        }
        let segments: Vec<&str> = name.split('.').collect();
        let step_output = match segments.as_slice() {
            ["steps", id, "outputs", output] | [id, "outputs", output] => Some((*id, *output)),
            _ => None,
        };
        if let Some((id, output)) = step_output {
            let value = body
                .steps
                .iter()
                .find(|s| s.id.as_deref() == Some(id))
                .and_then(|s| record.steps.iter().find(|r| r.name == s.name))
                .and_then(|r| r.outputs.get(output).cloned());
            if value.is_none() {
                missing.borrow_mut().get_or_insert_with(|| name.to_owned());
            }
            return value;
        }
        if name.starts_with("foreach.") {
            missing.borrow_mut().get_or_insert_with(|| name.to_owned());
            return None;
        }
        lookup(env, name)
    };
    let mut out = BTreeMap::new();
    for (name, text) in &foreach.collect {
        let value = expand(text, &lookup_name);
        if let Some(reference) = missing.borrow_mut().take() {
            return Err(format!(
                "collect `{name}`: `${{{reference}}}` did not resolve"
            ));
        }
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// The `output:` of a `foreach` step: counts, one entry per item (index, key, status, and its
/// collected outputs or its error) and the collected outputs of the bodies that succeeded.
fn aggregate(
    items: &[Item],
    ends: &[ChildEnd],
    collects: &[Result<BTreeMap<String, String>, String>],
) -> Value {
    let mut entries = Vec::with_capacity(items.len());
    let mut outputs = Vec::new();
    for (i, ((item, end), collected)) in items.iter().zip(ends).zip(collects).enumerate() {
        let mut entry = serde_json::Map::new();
        entry.insert("index".into(), i.into());
        entry.insert("key".into(), item.key.clone().into());
        let (status, error) = match (&end.record, collected) {
            (Some(Ok(r)), Ok(map)) if end.ended_well() => {
                entry.insert("outputs".into(), json_map(map.clone()));
                outputs.push(json_map(map.clone()));
                (r.status, None)
            }
            (Some(Ok(_)), Err(e)) if end.ended_well() => (RunStatus::Failed, Some(e.clone())),
            (Some(Ok(r)), _) => (r.status, r.error.clone()),
            (Some(Err(e)), _) => (RunStatus::Failed, Some(e.clone())),
            (None, _) => (RunStatus::NotStarted, None),
        };
        entry.insert("status".into(), status.as_str().into());
        if let Some(e) = error {
            entry.insert("error".into(), e.into());
        }
        entries.push(Value::Object(entry));
    }
    let succeeded = outputs.len();
    serde_json::json!({
        "summary": {
            "total": items.len(),
            "succeeded": succeeded,
            "failed": items.len() - succeeded,
        },
        "items": entries,
        "outputs": outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn foreach(items: ParallelItems, key: Option<&str>) -> Foreach {
        Foreach {
            items,
            as_name: "ep".into(),
            key: key.map(str::to_owned),
            max_concurrent: 2,
            body: Box::default(),
            collect: vec![],
        }
    }

    #[test]
    fn items_and_keys() {
        let env = vec![(
            "LIST".to_owned(),
            r#"[{"slug":"a"},{"slug":"b"}]"#.to_owned(),
        )];
        let got = items(
            &foreach(
                ParallelItems::Expr("${LIST}".into()),
                Some("k-${foreach.ep.slug}"),
            ),
            &env,
        )
        .unwrap();
        let keys: Vec<&str> = got.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["k-a", "k-b"]);
        let got = items(
            &foreach(ParallelItems::List(vec![json!("x"), json!(2)]), None),
            &[],
        )
        .unwrap();
        assert_eq!(
            got[1],
            Item {
                value: json!(2),
                key: "1".into()
            }
        );
        assert!(items(&foreach(ParallelItems::List(vec![]), None), &[])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn item_errors() {
        let cases = [
            (
                ParallelItems::Expr("a b".into()),
                None,
                "did not resolve to a JSON array",
            ),
            (
                ParallelItems::Expr(r#"{"a":1}"#.into()),
                None,
                "not an array",
            ),
            (
                ParallelItems::List(vec![json!({"s": ""})]),
                Some("${foreach.ep.s}"),
                "is empty",
            ),
            (
                ParallelItems::List(vec![json!({"s": 1}), json!({"s": 1})]),
                Some("${foreach.ep.s}"),
                "is the key of two items",
            ),
            (
                ParallelItems::List(vec![json!(0); MAX_ITEMS + 1]),
                None,
                "more than 1000",
            ),
        ];
        for (list, key, want) in cases {
            let e = items(&foreach(list, key), &[]).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn item_scope_names() {
        let value = json!({"url": "u", "n": 2});
        let scope = |name: &str| item_scope("ep", &value, 3, Some("k"), name);
        assert_eq!(scope("foreach.index").as_deref(), Some("3"));
        assert_eq!(scope("foreach.key").as_deref(), Some("k"));
        assert_eq!(scope("foreach.ep.url").as_deref(), Some("u"));
        assert_eq!(scope("foreach.ep").as_deref(), Some(r#"{"n":2,"url":"u"}"#));
        assert_eq!(scope("foreach.ep.none"), None);
        assert_eq!(scope("foreach.epx"), None);
        assert_eq!(scope("HOME"), None);
    }

    #[test]
    fn body_is_named_after_its_parent_and_shares_its_environment() {
        let parent = Dag {
            name: "d".repeat(MAX_NAME),
            env: vec![("A".into(), "1".into())],
            shell: Some("bash".into()),
            ..Dag::default()
        };
        let body = body_dag(&parent, &foreach(ParallelItems::List(vec![]), None), "each");
        assert_eq!(body.name.len(), MAX_NAME);
        assert_eq!(body.env, parent.env);
        assert_eq!(body.shell.as_deref(), Some("bash"));
        let short = Dag {
            name: "d".into(),
            ..parent
        };
        assert_eq!(
            body_dag(&short, &foreach(ParallelItems::List(vec![]), None), "each").name,
            "d.each"
        );
    }
}
