//! `foreach` of a step: items, the item's name, its key, the concurrency, the inline body
//! and what is collected from each body (`docs/dag-format.md`, "Sub-DAGs, parallel and
//! foreach").

use super::step::StepCx;
use super::steps::ListCx;
use super::{join, key_text, Cx, Entry, KeySet};
use crate::refs::{is_identifier, Rewriter};
use crate::yaml::{Kind, Node};
use crate::{Dag, DagType, Foreach, ParallelItems};

const FOREACH_KEYS: KeySet<'static> = KeySet {
    known: &["items", "as", "key", "max_concurrent", "steps", "collect"],
    refused: &[],
};

/// Most items of a YAML `items` list.
const MAX_ITEMS: usize = 1000;

/// `[A-Za-z][A-Za-z0-9_]*`: the names of `as` and of collected outputs.
fn is_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic()) && is_identifier(s)
}

impl Cx<'_> {
    /// `foreach` at key `k`; `scope` and `refs` are the owning step's (for `items` and `key`).
    pub(super) fn foreach(
        &self,
        k: &str,
        e: &Entry<'_>,
        rw: &mut Rewriter<'_, '_>,
        sx: &StepCx<'_>,
    ) -> Option<Foreach> {
        let fields = self.entries(e.value, k, e.line, &FOREACH_KEYS)?;
        let get = |name: &str| fields.iter().find(|f| f.key == name);
        let mut ok = true;
        let mut as_name = "item".to_owned();
        if let Some(f) = get("as") {
            let fk = join(k, "as");
            match self.ok(self.string(&fk, f)).flatten() {
                Some(a) if is_name(&a) && a != "index" && a != "key" => as_name = a,
                Some(a) => {
                    ok = false;
                    self.report(Some(f.line), format!("key `{fk}`: invalid item name `{a}` (expected [A-Za-z][A-Za-z0-9_]*, not `index` or `key`)"));
                }
                None => {}
            }
        }
        let items = match get("items") {
            None => {
                self.report(Some(e.line), format!("key `{k}`: needs `items`"));
                None
            }
            Some(f) => self.foreach_items(&join(k, "items"), f, rw),
        };
        let key = get("key").and_then(|f| {
            let fk = join(k, "key");
            let text = self.ok(self.string(&fk, f)).flatten()?;
            self.rewrite_field(&fk, f.line, &text, rw)
        });
        let max_concurrent = self.max_concurrent(k, get("max_concurrent"));
        let steps_key = join(k, "steps");
        let body = self.step_list(
            get("steps"),
            &steps_key,
            e.line,
            &ListCx {
                consts: sx.consts,
                params: sx.params,
                dir_base: sx.dir_base,
                defaults: sx.defaults,
                dag_type: DagType::Chain,
                foreach: Some((&as_name, sx.steps)),
            },
        );
        let collect = get("collect")
            .map(|f| self.collect(&join(k, "collect"), f))
            .unwrap_or_default();
        Some(Foreach {
            items: items.filter(|_| ok)?,
            as_name,
            key,
            max_concurrent,
            body: Box::new(Dag {
                steps: body.steps,
                ..Dag::default()
            }),
            collect,
        })
    }

    /// `foreach.items`: a YAML list of any values, or a string that must resolve to a JSON
    /// array at run time.
    fn foreach_items(
        &self,
        k: &str,
        f: &Entry<'_>,
        rw: &mut Rewriter<'_, '_>,
    ) -> Option<ParallelItems> {
        match &f.value.kind {
            Kind::Scalar { value, .. } if !f.value.is_null() && !value.trim().is_empty() => Some(
                ParallelItems::Expr(self.rewrite_field(k, f.line, value, rw)?),
            ),
            Kind::Seq(list) => {
                if list.len() > MAX_ITEMS {
                    self.report(Some(f.line), format!("key `{k}`: more than 1000 items"));
                }
                Some(ParallelItems::List(list.iter().map(node_json).collect()))
            }
            _ => {
                self.push(self.type_err(f.line, k, "a list or a `${VAR}` string", f.value));
                None
            }
        }
    }

    /// `foreach.collect`: output name → text.
    fn collect(&self, k: &str, f: &Entry<'_>) -> Vec<(String, String)> {
        let Kind::Map(pairs) = &f.value.kind else {
            self.push(self.type_err(f.line, k, "a map of output name → text", f.value));
            return Vec::new();
        };
        let mut out: Vec<(String, String)> = Vec::new();
        for (pk, pv) in pairs {
            let name = key_text(pk);
            let ck = join(k, name);
            if !is_name(name) {
                self.report(
                    Some(pk.line),
                    format!("key `{ck}`: invalid output name (expected [A-Za-z][A-Za-z0-9_]*)"),
                );
                continue;
            }
            match &pv.kind {
                Kind::Scalar { value, .. } if !pv.is_null() => {
                    out.push((name.to_owned(), value.clone()))
                }
                _ => self.push(self.type_err(pk.line, &ck, "a string", pv)),
            }
        }
        out
    }
}

/// A YAML node as JSON: scalars as `scalar_json` types them, lists and maps as such.
fn node_json(node: &Node) -> serde_json::Value {
    match &node.kind {
        _ if node.is_null() => serde_json::Value::Null,
        Kind::Scalar { value, plain } => super::step::scalar_json(value, *plain),
        Kind::Seq(list) => list.iter().map(node_json).collect(),
        Kind::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| (key_text(k).to_owned(), node_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}
