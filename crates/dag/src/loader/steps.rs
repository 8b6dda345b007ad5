//! A list of steps: the DAG's `steps`, or the body of a `foreach`. Collects the names, ids and
//! `output:` variables of all of them first (any step's text may refer to any other step), then
//! parses each step and checks the graph.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::step::StepCx;
use super::{key_text, Cx, Entry};
use crate::yaml::{Kind, Node};
use crate::{DagType, Step};

/// What the steps of one list share.
pub(super) struct ListCx<'a> {
    pub(super) consts: &'a [(String, String)],
    pub(super) params: &'a HashSet<String>,
    pub(super) dir_base: Option<&'a Path>,
    pub(super) defaults: &'a [Entry<'a>],
    pub(super) dag_type: DagType,
    /// In a `foreach` body: the item's name, and the ids and names of the top-level steps,
    /// which the body's ids and names must not take.
    pub(super) foreach: Option<(&'a str, &'a HashMap<String, String>)>,
}

/// The steps of a list, and the `output:` variables they declare (handlers read them).
pub(super) struct StepList {
    pub(super) steps: Vec<Step>,
    pub(super) output_vars: HashSet<String>,
}

impl Cx<'_> {
    /// The list `entry` at `key` (`steps`, `steps[2].foreach.steps`): a list (items may be
    /// strings, or nested lists run side by side), or a map of name → step. `line` is where
    /// the list is missing, if it is.
    pub(super) fn step_list(
        &self,
        entry: Option<&Entry<'_>>,
        key: &str,
        line: usize,
        lx: &ListCx<'_>,
    ) -> StepList {
        let mut items: Vec<(&Node, String, usize, Option<String>)> = Vec::new();
        match entry.map(|e| (&e.value.kind, e)) {
            None => {}
            Some((_, e)) if e.value.is_null() => {}
            Some((Kind::Seq(list), _)) => {
                for (i, item) in list.iter().enumerate() {
                    match &item.kind {
                        Kind::Seq(group) => {
                            for (j, member) in group.iter().enumerate() {
                                items.push((member, format!("{key}[{i}][{j}]"), i, None));
                            }
                        }
                        _ => items.push((item, format!("{key}[{i}]"), i, None)),
                    }
                }
            }
            Some((Kind::Map(pairs), _)) => {
                for (i, (k, v)) in pairs.iter().enumerate() {
                    let name = key_text(k).to_owned();
                    items.push((v, format!("{key}.{name}"), i, Some(name)));
                }
            }
            Some((_, e)) => self.push(self.type_err(e.line, key, "a list of steps", e.value)),
        }
        if items.is_empty() {
            // A missing `foreach.steps` is reported at the `foreach`; a missing top-level
            // `steps` at no line (the file has none).
            let line = entry.map(|e| e.line).or_else(|| lx.foreach.map(|_| line));
            self.report(line, format!("key `{key}`: at least one step is required"));
        }

        let mut ids: HashMap<String, String> = HashMap::new();
        let mut output_vars: HashSet<String> = HashSet::new();
        let mut default_names = Vec::with_capacity(items.len());
        for (i, (node, item_key, _, map_name)) in items.iter().enumerate() {
            let field = |k: &str| scalar_field(node, k);
            let default_name = map_name.clone().unwrap_or_else(|| format!("step{}", i + 1));
            let id = field("id").filter(|id| crate::refs::is_identifier(id));
            let name = field("name")
                .filter(|n| !n.is_empty())
                .or_else(|| id.clone())
                .unwrap_or_else(|| default_name.clone());
            if let Some((_, outer)) = lx.foreach {
                for taken in id.iter().chain([&name]) {
                    if outer.contains_key(taken) || outer.values().any(|n| n == taken) {
                        self.report(
                            Some(node.line),
                            format!("key `{item_key}`: `{taken}` is already a top-level step id or name"),
                        );
                    }
                }
            }
            if let Some(id) = id {
                ids.entry(id).or_insert(name);
            }
            if let Some(var) = field("output") {
                output_vars.insert(var.trim_start_matches('$').to_owned());
            }
            default_names.push(default_name);
        }
        let sx = StepCx {
            consts: lx.consts,
            params: lx.params,
            steps: &ids,
            output_vars: &output_vars,
            dir_base: lx.dir_base,
            defaults: lx.defaults,
            foreach: lx.foreach,
        };
        let mut parsed = Vec::with_capacity(items.len());
        for (i, (node, item_key, _, _)) in items.iter().enumerate() {
            parsed.push(self.step(node, item_key, line, &default_names[i], &sx));
        }
        let keys: Vec<String> = items.iter().map(|(_, k, _, _)| k.clone()).collect();
        let groups: Vec<usize> = items.iter().map(|(_, _, g, _)| *g).collect();
        let steps = self.graph(parsed, &keys, &groups, lx.dag_type);
        StepList { steps, output_vars }
    }
}

/// The text of a scalar key `k` of a map node, trimmed.
fn scalar_field(node: &Node, k: &str) -> Option<String> {
    let Kind::Map(pairs) = &node.kind else {
        return None;
    };
    pairs
        .iter()
        .find(|(pk, _)| key_text(pk) == k)
        .and_then(|(_, v)| match &v.kind {
            Kind::Scalar { value, .. } if !v.is_null() => Some(value.trim().to_owned()),
            _ => None,
        })
}
