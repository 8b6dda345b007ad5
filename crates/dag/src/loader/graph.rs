//! Step identity and dependency rules: unique names and ids, `depends` by name or id, chain
//! order, dependencies inferred from step references, no cycles.

use std::collections::HashMap;

use super::step::ParsedStep;
use super::Cx;
use crate::{DagType, Step};

impl Cx<'_> {
    /// Checks identities and builds the dependency lists. `keys[i]` is step `i`'s key
    /// (`steps[2]`), `groups[i]` its position in the chain (members of a nested list share one).
    pub(super) fn graph(
        &self,
        parsed: Vec<ParsedStep>,
        keys: &[String],
        groups: &[usize],
        dag_type: DagType,
    ) -> Vec<Step> {
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut by_id: HashMap<String, usize> = HashMap::new();
        for (i, p) in parsed.iter().enumerate() {
            let name = &p.step.name;
            // A name taken from a repeated `id` is reported once, as a duplicate id.
            let name_from_id = p.name_line.is_none() && p.step.id.as_ref() == Some(name);
            match by_name.get(name) {
                Some(_) if name_from_id && by_id.contains_key(name) => {}
                Some(&prev) => self.report(
                    Some(p.name_line.or(p.id_line).unwrap_or(p.line)),
                    format!(
                        "key `{}.name`: duplicate step name `{name}` (also `{}`)",
                        keys[i], keys[prev]
                    ),
                ),
                None => {
                    by_name.insert(name.clone(), i);
                }
            }
            if let Some(id) = &p.step.id {
                match by_id.get(id) {
                    Some(&prev) => self.report(
                        p.id_line,
                        format!(
                            "key `{}.id`: duplicate step id `{id}` (also `{}`)",
                            keys[i], keys[prev]
                        ),
                    ),
                    None => {
                        by_id.insert(id.clone(), i);
                    }
                }
            }
        }
        for (i, p) in parsed.iter().enumerate() {
            if let Some(id) = &p.step.id {
                if let Some(&j) = by_name.get(id).filter(|&&j| j != i) {
                    self.report(
                        p.id_line,
                        format!(
                            "key `{}.id`: step id `{id}` is the name of another step (`{}`)",
                            keys[i], keys[j]
                        ),
                    );
                }
            }
        }

        // Explicit `depends`, by name or id, then the chain order for steps without them.
        let n = parsed.len();
        let mut deps: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut depends_lines: Vec<usize> = parsed.iter().map(|p| p.line).collect();
        for (i, p) in parsed.iter().enumerate() {
            match &p.depends {
                Some((line, list)) => {
                    depends_lines[i] = *line;
                    for d in list {
                        match by_name.get(d).or_else(|| by_id.get(d)) {
                            Some(&j) => {
                                if !deps[i].contains(&j) {
                                    deps[i].push(j)
                                }
                            }
                            None => self.report(
                                Some(*line),
                                format!(
                                    "key `{}.depends`: step `{}` depends on unknown step `{d}`",
                                    keys[i], p.step.name
                                ),
                            ),
                        }
                    }
                }
                None if dag_type == DagType::Chain && groups[i] > 0 => {
                    let prev_group = (0..i).rev().map(|j| groups[j]).find(|&g| g < groups[i]);
                    if let Some(g) = prev_group {
                        deps[i] = (0..i).filter(|&j| groups[j] == g).collect();
                    }
                }
                None => {}
            }
        }

        // Dependencies inferred from step references (`${steps.ID.outputs.NAME}`), unless
        // already implied.
        let mut inferred: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, p) in parsed.iter().enumerate() {
            for id in &p.producers {
                let Some(&j) = by_id.get(id) else { continue };
                if j == i || reaches(&deps, i, j) {
                    continue;
                }
                deps[i].push(j);
                inferred[i].push(j);
            }
        }

        let names: Vec<String> = parsed.iter().map(|p| p.step.name.clone()).collect();
        if let Some(cycle) = find_cycle(&deps) {
            let first = cycle[0];
            let cycle_names: Vec<&str> = cycle.iter().map(|&i| names[i].as_str()).collect();
            let via_reference = cycle
                .iter()
                .zip(cycle.iter().skip(1).chain(cycle.first()))
                .any(|(&a, &b)| inferred[a].contains(&b));
            self.report(
                Some(depends_lines[first]),
                format!(
                    "key `{}.depends`: dependency cycle: {} -> {} (each depends on the next{})",
                    keys[first],
                    cycle_names.join(" -> "),
                    cycle_names[0],
                    if via_reference {
                        "; some edges come from `${steps.ID.outputs.NAME}` references"
                    } else {
                        ""
                    }
                ),
            );
        }

        parsed
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let mut step = p.step;
                step.depends = deps[i].iter().map(|&j| names[j].clone()).collect();
                step.inferred_depends = inferred[i].iter().map(|&j| names[j].clone()).collect();
                step
            })
            .collect()
    }
}

/// True when `from` already waits for `to`, directly or not.
fn reaches(deps: &[Vec<usize>], from: usize, to: usize) -> bool {
    let mut seen = vec![false; deps.len()];
    let mut stack = vec![from];
    while let Some(s) = stack.pop() {
        for &d in &deps[s] {
            if d == to {
                return true;
            }
            if !seen[d] {
                seen[d] = true;
                stack.push(d);
            }
        }
    }
    false
}

/// A dependency cycle as step indices, each depending on the next (the last on the first),
/// starting at the lowest index on it.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut marks = vec![Mark::New; deps.len()];
    for start in 0..deps.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // Iterative DFS over `depends` edges; `path` is the chain of open steps.
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        marks[start] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            if *next < deps[node].len() {
                let dep = deps[node][*next];
                *next += 1;
                match marks[dep] {
                    Mark::New => {
                        marks[dep] = Mark::Open;
                        path.push((dep, 0));
                    }
                    Mark::Open => {
                        let from = path.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let mut cycle: Vec<usize> = path[from..].iter().map(|&(n, _)| n).collect();
                        let min = cycle
                            .iter()
                            .enumerate()
                            .min_by_key(|&(_, &n)| n)
                            .map(|(i, _)| i)
                            .unwrap_or(0);
                        cycle.rotate_left(min);
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
                path.pop();
            }
        }
    }
    None
}
