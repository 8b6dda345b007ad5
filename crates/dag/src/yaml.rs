//! A YAML document as a tree whose every node knows its line, so that loader errors can name
//! the line of the offending key (serde-based YAML crates drop positions after parsing).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Cap on nodes, so that alias expansion ("billion laughs") cannot exhaust memory.
const MAX_NODES: usize = 100_000;

/// One YAML node with its 1-based line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) line: usize,
    pub(crate) kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// `plain` is false for quoted and block scalars: only plain scalars can be null, numbers or
    /// booleans.
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in file order; keys are nodes so that their lines are known.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A plain `~`, `null` or empty scalar.
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { value, plain: true }
            if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// What the node is, for "expected X, found Y" messages.
    pub(crate) fn describe(&self) -> &'static str {
        match &self.kind {
            _ if self.is_null() => "null",
            Kind::Scalar { .. } => "a scalar",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a map",
        }
    }
}

/// A YAML syntax error.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub(crate) line: Option<usize>,
    pub(crate) message: String,
}

enum Frame {
    Seq {
        line: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        line: usize,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    /// Finished documents, in order; `None` for an empty one.
    docs: Vec<Option<Node>>,
    nodes: usize,
    too_big: bool,
}

fn count(node: &Node) -> usize {
    match &node.kind {
        Kind::Scalar { .. } => 1,
        Kind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Kind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count(k) + count(v))
                .sum::<usize>()
        }
    }
}

impl Builder {
    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.too_big {
            return;
        }
        let line = mark.line();
        match ev {
            Event::Scalar(value, style, anchor, _tag) => {
                self.nodes += 1;
                let plain = style == TScalarStyle::Plain;
                self.finish(
                    Node {
                        line,
                        kind: Kind::Scalar { value, plain },
                    },
                    anchor,
                );
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().unwrap_or(Node {
                    line,
                    kind: Kind::Scalar {
                        value: String::new(),
                        plain: true,
                    },
                });
                self.nodes += count(&node);
                self.finish(node, 0);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                line,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                line,
                anchor,
                entries: Vec::new(),
                key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                self.nodes += 1;
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        line,
                        anchor,
                        items,
                    }) => (
                        Node {
                            line,
                            kind: Kind::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        line,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            line,
                            kind: Kind::Map(entries),
                        },
                        anchor,
                    ),
                    None => return,
                };
                self.finish(node, anchor);
            }
            Event::DocumentStart => self.root = None,
            Event::DocumentEnd => {
                let root = self.root.take();
                self.docs.push(root);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
        }
        if self.nodes > MAX_NODES {
            self.too_big = true;
        }
    }
}

/// Parses the first document of `text`; `Ok(None)` for an empty file.
#[cfg(test)]
pub(crate) fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    Ok(parse_documents(text)?.into_iter().next().flatten())
}

/// Parses every document of `text` (separated by `---`); an empty document is `None`, an empty
/// file gives no document.
pub(crate) fn parse_documents(text: &str) -> Result<Vec<Option<Node>>, SyntaxError> {
    let mut builder = Builder::default();
    Parser::new_from_str(text)
        .load(&mut builder, true)
        .map_err(|e| SyntaxError {
            // Errors found at the end of input point one past the last line; name a real one.
            line: Some(e.marker().line().clamp(1, text.lines().count().max(1))),
            message: format!("invalid YAML: {}", e.info()),
        })?;
    if builder.too_big {
        return Err(SyntaxError {
            line: None,
            message: format!("invalid YAML: more than {MAX_NODES} nodes after alias expansion"),
        });
    }
    Ok(builder.docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based_and_per_key() {
        let root = parse("a: 1\nb:\n  - x\n  - y: 'q'\n").unwrap().unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!("{root:?}")
        };
        assert_eq!(entries[0].0.line, 1);
        assert_eq!(entries[1].0.line, 2);
        let Kind::Seq(items) = &entries[1].1.kind else {
            panic!()
        };
        assert_eq!(items[0].line, 3);
        assert_eq!(items[1].line, 4);
    }

    #[test]
    fn aliases_expand_and_bombs_are_refused() {
        let root = parse("a: &x [1, 2]\nb: *x\n").unwrap().unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!()
        };
        assert_eq!(entries[0].1.kind, entries[1].1.kind);

        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let e = parse(&bomb).unwrap_err();
        assert!(e.message.contains("more than"), "{}", e.message);
    }

    #[test]
    fn syntax_error_has_line() {
        let e = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(e.line.is_some());
        assert!(e.message.starts_with("invalid YAML"), "{}", e.message);
        assert_eq!(parse("").unwrap(), None);
    }

    #[test]
    fn documents_keep_their_lines() {
        let docs = parse_documents("a: 1\n---\nb: 2\n---\n").unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[1].as_ref().unwrap().line, 3);
        assert!(docs[2].as_ref().is_none_or(Node::is_null));
        assert!(parse_documents("").unwrap().is_empty());
    }
}
