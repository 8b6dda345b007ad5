//! The layering rule of `docs/architecture.md`, checked against `cargo metadata`.
//!
//! A workspace crate's normal and build dependencies may only be workspace crates of strictly lower
//! layers. Dev-dependencies may also use crates of the same layer (executor's tests drive enqueue),
//! never a higher one. Every workspace package must appear in [`ROLES`], so a new crate cannot
//! slip past the check unclassified.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::cargo;

/// What a workspace package is, for the layering rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A product crate at this layer (0 is lowest).
    Layer(u8),
    /// Shared test helpers: usable only as a dev-dependency, by any layer.
    TestSupport,
    /// Workspace tooling (xtask): nothing may depend on it; its own dependencies are unchecked.
    Tooling,
}

/// The crate table of `docs/architecture.md`. A crate missing here fails the check.
pub(crate) const ROLES: &[(&str, Role)] = &[
    ("dispatch-util", Role::Layer(0)),
    ("dispatch-protocol", Role::Layer(1)),
    ("dispatch-webhook-params", Role::Layer(1)),
    ("dispatch-tracker", Role::Layer(1)),
    ("dispatch-license", Role::Layer(2)),
    ("dispatch-dag", Role::Layer(2)),
    ("dispatch-enqueue", Role::Layer(3)),
    ("dispatch-executor", Role::Layer(3)),
    ("dispatch-worker", Role::Layer(4)),
    ("dispatch-hub", Role::Layer(4)),
    ("dispatch-scheduler", Role::Layer(5)),
    // End-to-end tests of the real binaries: above everything, never depended on.
    ("dispatch-e2e", Role::Layer(6)),
    ("dispatch-test-support", Role::TestSupport),
    ("xtask", Role::Tooling),
];

/// Dependency kind as cargo metadata reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DepKind {
    Normal,
    Dev,
    Build,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Dependency {
    pub(crate) name: String,
    /// `null` in cargo metadata means a normal dependency.
    #[serde(default)]
    pub(crate) kind: Option<DepKind>,
}

impl fmt::Display for DepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DepKind::Normal => "normal",
            DepKind::Dev => "dev",
            DepKind::Build => "build",
        })
    }
}

impl Dependency {
    fn kind(&self) -> DepKind {
        self.kind.unwrap_or(DepKind::Normal)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Package {
    pub(crate) name: String,
    pub(crate) dependencies: Vec<Dependency>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    workspace_members: Vec<String>,
}

/// One broken rule, phrased for a human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
    Unclassified {
        package: String,
    },
    Upward {
        package: String,
        package_layer: u8,
        dependency: String,
        dependency_layer: u8,
        kind: DepKind,
    },
    TestSupportAsNormal {
        package: String,
        dependency: String,
        kind: DepKind,
    },
    DependsOnTooling {
        package: String,
        dependency: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Unclassified { package } => write!(
                f,
                "workspace package `{package}` has no layer: add it to ROLES in xtask/src/layering.rs \
                 and to the table in docs/architecture.md"
            ),
            Violation::Upward {
                package,
                package_layer,
                dependency,
                dependency_layer,
                kind,
            } => {
                let allowed = if *kind == DepKind::Dev {
                    "the same or a lower layer"
                } else {
                    "a lower layer"
                };
                write!(
                    f,
                    "`{package}` (layer {package_layer}) has a {kind} dependency on `{dependency}` \
                     (layer {dependency_layer}); it may only use {allowed}"
                )
            }
            Violation::TestSupportAsNormal {
                package,
                dependency,
                kind,
            } => write!(
                f,
                "`{package}` has a {kind} dependency on test-support crate `{dependency}`; \
                 only dev-dependencies may use it"
            ),
            Violation::DependsOnTooling {
                package,
                dependency,
            } => write!(f, "`{package}` depends on tooling crate `{dependency}`"),
        }
    }
}

/// Applies the rule to `packages`, the workspace members. Dependencies on crates outside the
/// workspace are ignored; the result is empty when the workspace is well layered.
pub(crate) fn check(packages: &[Package], roles: &[(&str, Role)]) -> Vec<Violation> {
    let role_of: BTreeMap<&str, Role> = roles.iter().copied().collect();
    let members: BTreeMap<&str, &Package> = packages.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut violations = Vec::new();
    for package in packages {
        let Some(&role) = role_of.get(package.name.as_str()) else {
            violations.push(Violation::Unclassified {
                package: package.name.clone(),
            });
            continue;
        };
        for dep in &package.dependencies {
            if !members.contains_key(dep.name.as_str()) {
                continue;
            }
            // An unclassified dependency is reported once, as its own package.
            let Some(&dep_role) = role_of.get(dep.name.as_str()) else {
                continue;
            };
            if let Some(v) = judge(package, role, dep, dep_role) {
                violations.push(v);
            }
        }
    }
    violations
}

fn judge(package: &Package, role: Role, dep: &Dependency, dep_role: Role) -> Option<Violation> {
    let kind = dep.kind();
    match (role, dep_role) {
        (Role::Tooling, _) => None,
        (_, Role::Tooling) => Some(Violation::DependsOnTooling {
            package: package.name.clone(),
            dependency: dep.name.clone(),
        }),
        (_, Role::TestSupport) if kind != DepKind::Dev => Some(Violation::TestSupportAsNormal {
            package: package.name.clone(),
            dependency: dep.name.clone(),
            kind,
        }),
        (_, Role::TestSupport) => None,
        // Test support sits outside the layers: it may build on any product crate.
        (Role::TestSupport, Role::Layer(_)) => None,
        (Role::Layer(own), Role::Layer(other)) => {
            let allowed = match kind {
                DepKind::Dev => other <= own,
                DepKind::Normal | DepKind::Build => other < own,
            };
            (!allowed).then(|| Violation::Upward {
                package: package.name.clone(),
                package_layer: own,
                dependency: dep.name.clone(),
                dependency_layer: other,
                kind,
            })
        }
    }
}

fn workspace_packages(root: &Path) -> anyhow::Result<Vec<Package>> {
    let output = Command::new(cargo())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .context("failed to run `cargo metadata`")?;
    if !output.status.success() {
        bail!(
            "`cargo metadata` exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let metadata: Metadata = serde_json::from_slice(&output.stdout)
        .context("failed to decode `cargo metadata` output")?;
    // With --no-deps the package list is the workspace, but filter anyway in case that changes.
    let members = metadata.workspace_members;
    let packages = metadata
        .packages
        .into_iter()
        .filter(|p| members.iter().any(|id| id_names(id, &p.name)))
        .collect();
    Ok(packages)
}

/// Package ids look like `path+file:///…/crates/dag#dispatch-dag@0.1.0`, or `…/xtask#0.1.0`
/// when the directory already names the package.
fn id_names(id: &str, name: &str) -> bool {
    let Some((location, fragment)) = id.rsplit_once('#') else {
        return false;
    };
    match fragment.split_once('@') {
        Some((fragment_name, _)) => fragment_name == name,
        None => location.rsplit('/').next() == Some(name),
    }
}

pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    let packages = workspace_packages(root)?;
    let violations = check(&packages, ROLES);
    if violations.is_empty() {
        println!("layering ok: {} workspace packages checked", packages.len());
        return Ok(());
    }
    for v in &violations {
        eprintln!("layering: {v}");
    }
    bail!("{} layering violation(s)", violations.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, deps: &[(&str, DepKind)]) -> Package {
        Package {
            name: name.to_string(),
            dependencies: deps
                .iter()
                .map(|(n, k)| Dependency {
                    name: n.to_string(),
                    kind: (*k != DepKind::Normal).then_some(*k),
                })
                .collect(),
        }
    }

    /// The real workspace's shape, which must pass.
    fn well_layered() -> Vec<Package> {
        use DepKind::*;
        vec![
            pkg("dispatch-util", &[]),
            pkg(
                "dispatch-protocol",
                &[("dispatch-util", Normal), ("serde", Normal)],
            ),
            pkg(
                "dispatch-webhook-params",
                &[("thiserror", Normal), ("proptest", Dev)],
            ),
            pkg("dispatch-tracker", &[("serde", Normal)]),
            pkg(
                "dispatch-license",
                &[
                    ("dispatch-protocol", Normal),
                    ("reqwest", Normal),
                    ("wiremock", Dev),
                ],
            ),
            pkg("dispatch-dag", &[("dispatch-webhook-params", Normal)]),
            pkg("dispatch-enqueue", &[("dispatch-dag", Normal)]),
            pkg(
                "dispatch-executor",
                &[("dispatch-dag", Normal), ("dispatch-enqueue", Dev)],
            ),
            pkg(
                "dispatch-worker",
                &[
                    ("dispatch-tracker", Normal),
                    ("dispatch-license", Normal),
                    ("dispatch-enqueue", Normal),
                    ("dispatch-executor", Dev),
                    ("dispatch-test-support", Dev),
                ],
            ),
            pkg(
                "dispatch-hub",
                &[("dispatch-protocol", Normal), ("dispatch-license", Dev)],
            ),
            pkg(
                "dispatch-scheduler",
                &[
                    ("dispatch-worker", Normal),
                    ("dispatch-hub", Normal),
                    ("dispatch-executor", Build),
                ],
            ),
            pkg("dispatch-test-support", &[("dispatch-license", Normal)]),
            pkg(
                "xtask",
                &[("dispatch-scheduler", Normal), ("anyhow", Normal)],
            ),
        ]
    }

    fn with_dep(name: &str, dep: &str, kind: DepKind) -> Vec<Violation> {
        let mut packages = well_layered();
        let package = packages.iter_mut().find(|p| p.name == name).unwrap();
        package.dependencies.push(Dependency {
            name: dep.to_string(),
            kind: Some(kind),
        });
        check(&packages, ROLES)
    }

    /// The one violation a dependency of `name` on `dep` (as `kind`) adds to the workspace.
    fn sole_violation(name: &str, dep: &str, kind: DepKind) -> Violation {
        let mut violations = with_dep(name, dep, kind);
        assert_eq!(violations.len(), 1, "{violations:?}");
        violations.remove(0)
    }

    #[test]
    fn well_layered_workspace_passes() {
        assert_eq!(check(&well_layered(), ROLES), []);
    }

    #[test]
    fn normal_dependency_on_same_layer_fails() {
        let violations = with_dep("dispatch-executor", "dispatch-enqueue", DepKind::Normal);
        assert_eq!(
            violations,
            [Violation::Upward {
                package: "dispatch-executor".into(),
                package_layer: 3,
                dependency: "dispatch-enqueue".into(),
                dependency_layer: 3,
                kind: DepKind::Normal,
            }]
        );
    }

    #[test]
    fn build_dependency_on_higher_layer_fails() {
        let violations = with_dep("dispatch-tracker", "dispatch-dag", DepKind::Build);
        assert!(
            matches!(
                &violations[..],
                [Violation::Upward {
                    dependency_layer: 2,
                    package_layer: 1,
                    kind: DepKind::Build,
                    ..
                }]
            ),
            "{violations:?}"
        );
    }

    #[test]
    fn dev_dependency_on_same_layer_passes_but_higher_fails() {
        assert_eq!(
            with_dep("dispatch-hub", "dispatch-worker", DepKind::Dev),
            []
        );
        let violations = with_dep("dispatch-dag", "dispatch-executor", DepKind::Dev);
        assert!(
            matches!(
                &violations[..],
                [Violation::Upward {
                    package_layer: 2,
                    dependency_layer: 3,
                    kind: DepKind::Dev,
                    ..
                }]
            ),
            "{violations:?}"
        );
    }

    #[test]
    fn same_layer_crates_may_not_use_each_other() {
        sole_violation("dispatch-protocol", "dispatch-tracker", DepKind::Normal);
    }

    #[test]
    fn unknown_workspace_crate_fails() {
        let mut packages = well_layered();
        packages.push(pkg(
            "dispatch-metrics",
            &[("dispatch-dag", DepKind::Normal)],
        ));
        // A dependency on the unknown crate is not reported twice.
        packages[0].dependencies.push(Dependency {
            name: "dispatch-metrics".into(),
            kind: None,
        });
        assert_eq!(
            check(&packages, ROLES),
            [Violation::Unclassified {
                package: "dispatch-metrics".into()
            }]
        );
    }

    #[test]
    fn test_support_only_as_dev_dependency() {
        let v = sole_violation("dispatch-hub", "dispatch-test-support", DepKind::Normal);
        assert!(matches!(v, Violation::TestSupportAsNormal { .. }), "{v:?}");
    }

    #[test]
    fn nothing_depends_on_xtask() {
        let v = sole_violation("dispatch-scheduler", "xtask", DepKind::Dev);
        assert!(matches!(v, Violation::DependsOnTooling { .. }), "{v:?}");
    }

    #[test]
    fn external_crates_are_ignored() {
        // `tokio` is not a workspace member, so no layer applies to it.
        assert_eq!(
            with_dep("dispatch-webhook-params", "tokio", DepKind::Normal),
            []
        );
    }

    #[test]
    fn metadata_json_decodes() {
        let json = r#"{
            "packages": [
                {"name": "dispatch-dag", "id": "path+file:///w/crates/dag#dispatch-dag@0.1.0",
                 "dependencies": [
                    {"name": "dispatch-webhook-params", "kind": null, "path": "/w/crates/webhook-params"},
                    {"name": "dispatch-enqueue", "kind": "dev"},
                    {"name": "cc", "kind": "build"}
                 ]},
                {"name": "xtask", "id": "path+file:///w/xtask#0.1.0", "dependencies": []}
            ],
            "workspace_members": ["path+file:///w/crates/dag#dispatch-dag@0.1.0", "path+file:///w/xtask#0.1.0"]
        }"#;
        let metadata: Metadata = serde_json::from_str(json).unwrap();
        let kinds: Vec<DepKind> = metadata.packages[0]
            .dependencies
            .iter()
            .map(Dependency::kind)
            .collect();
        assert_eq!(kinds, [DepKind::Normal, DepKind::Dev, DepKind::Build]);
        assert!(id_names(&metadata.workspace_members[0], "dispatch-dag"));
        assert!(id_names(&metadata.workspace_members[1], "xtask"));
        assert!(!id_names(&metadata.workspace_members[1], "dispatch-dag"));
    }
}
