//! Bindings: which GitHub events on which repository start which DAG, and who may start them,
//! loaded from TOML (the format is described in `docs/protocol.md`, the trust rules in
//! `docs/security.md`).

use std::collections::HashMap;
use std::path::Path;

use dispatch_protocol::{is_cancel_command, CANCEL_COMMAND};
use serde::{Deserialize, Serialize};

use crate::error::HubError;
use crate::toml_file;

/// The kind of GitHub activity a binding reacts to; each kind covers a fixed set of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `push`, `pull_request`, `create`, `release`, `check_run`.
    Auto,
    /// `issue_comment`, `pull_request_review_comment` holding `<mention> <alias>` or `<mention> cancel`.
    CommentCommand,
    /// `repository_dispatch`, `workflow_dispatch`.
    ManualDispatch,
}

impl Trigger {
    /// The GitHub events (`X-GitHub-Event`) this trigger kind covers.
    pub fn events(self) -> &'static [&'static str] {
        match self {
            Trigger::Auto => &["push", "pull_request", "create", "release", "check_run"],
            Trigger::CommentCommand => &["issue_comment", "pull_request_review_comment"],
            Trigger::ManualDispatch => &["repository_dispatch", "workflow_dispatch"],
        }
    }

    /// The config word (`auto`, `comment_command`, `manual_dispatch`).
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Auto => "auto",
            Trigger::CommentCommand => "comment_command",
            Trigger::ManualDispatch => "manual_dispatch",
        }
    }
}

/// GitHub's `author_association` words, as a comment payload spells them.
pub const AUTHOR_ASSOCIATIONS: [&str; 8] = [
    "OWNER",
    "MEMBER",
    "COLLABORATOR",
    "CONTRIBUTOR",
    "FIRST_TIME_CONTRIBUTOR",
    "FIRST_TIMER",
    "MANNEQUIN",
    "NONE",
];

/// The associations whose comment commands count when a binding names none: the repository's
/// owner, members of the organization that owns it (any member, even one with no access to this
/// repository) and collaborators invited to it (with any permission, read and triage included).
/// GitHub's `author_association` does not tell write access apart.
pub const DEFAULT_ALLOWED_ASSOCIATIONS: [&str; 3] = ["OWNER", "MEMBER", "COLLABORATOR"];

/// The comment command that lets a held fork pull request run (reserved like `cancel`).
pub const APPROVE_COMMAND: &str = "approve";

/// What a binding does with `pull_request` events whose head is in another repository (a fork),
/// and with `check_run` events on such a head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForkPolicy {
    /// Fork pull requests never start this binding.
    #[default]
    Never,
    /// A fork pull request event is held until an allowed commenter says `<mention> approve`
    /// (or `<mention> approve <sha>`) on the pull request; the approval dispatches the held event
    /// once. Every later event, even on the same SHA, waits for a new approval. Check runs on
    /// fork code never start this binding.
    Approved,
    /// Fork pull requests, and check runs on fork code, start this binding like any other (their
    /// code runs unreviewed).
    Always,
}

impl ForkPolicy {
    /// The config word (`never`, `approved`, `always`).
    pub fn as_str(self) -> &'static str {
        match self {
            ForkPolicy::Never => "never",
            ForkPolicy::Approved => "approved",
            ForkPolicy::Always => "always",
        }
    }
}

fn default_allowed_associations() -> Vec<String> {
    DEFAULT_ALLOWED_ASSOCIATIONS
        .iter()
        .map(|a| (*a).to_owned())
        .collect()
}

/// One binding: repository + event filter → DAG name. Empty strings mean "no filter".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// Stable id, copied into each job's `binding_id`. Default: `<repository>/<dag>/<trigger>`, with
    /// `-2`, `-3`, ... appended to later bindings that would get the same id.
    #[serde(default)]
    pub id: String,
    /// `owner/name`, compared case-insensitively with the payload's `repository.full_name`.
    pub repository: String,
    /// DAG the scheduler runs.
    pub dag: String,
    /// Which events start it.
    pub trigger: Trigger,
    /// Only this event (must be one of the trigger's events).
    #[serde(default)]
    pub event_name: String,
    /// Only this payload `action` (e.g. `opened`, `published`); the `matching` module's docs give
    /// the defaults of `pull_request` and `check_run`.
    #[serde(default)]
    pub action: String,
    /// Glob over the branch name (`main`, `release/*`, `**`); the `matching` module's docs say which
    /// branch each event offers.
    #[serde(default)]
    pub branch_pattern: String,
    /// Glob over the tag name (`v*`).
    #[serde(default)]
    pub tag_pattern: String,
    /// Word after the mention that starts this binding (default: the DAG name).
    #[serde(default)]
    pub command_alias: String,
    /// Only `repository_dispatch` events with this `event_type`.
    #[serde(default)]
    pub dispatch_event_type: String,
    /// Commit status context (default `dispatch/<dag>`).
    #[serde(default)]
    pub check_name: String,
    /// License id whose schedulers may take the jobs (empty: any license).
    #[serde(default)]
    pub license: String,
    /// Comment authors whose commands (run, `cancel`, `approve`) count, by the comment's
    /// `author_association` (compared case-insensitively; default [`DEFAULT_ALLOWED_ASSOCIATIONS`]).
    #[serde(default = "default_allowed_associations")]
    pub allowed_associations: Vec<String>,
    /// GitHub logins whose commands count whatever their association (case-insensitive). A login
    /// can be renamed and then claimed by someone else: keep the list current.
    #[serde(default)]
    pub allowed_users: Vec<String>,
    /// Whether pull requests from forks start this binding (default [`ForkPolicy::Never`]).
    #[serde(default)]
    pub fork_pull_requests: ForkPolicy,
}

impl Binding {
    /// A binding of `dag` to every event of `trigger` on `repository`, with no other filter. The id
    /// is left empty for validation to fill in.
    pub fn new(repository: impl Into<String>, dag: impl Into<String>, trigger: Trigger) -> Binding {
        Binding {
            id: String::new(),
            repository: repository.into(),
            dag: dag.into(),
            trigger,
            event_name: String::new(),
            action: String::new(),
            branch_pattern: String::new(),
            tag_pattern: String::new(),
            command_alias: String::new(),
            dispatch_event_type: String::new(),
            check_name: String::new(),
            license: String::new(),
            allowed_associations: default_allowed_associations(),
            allowed_users: Vec::new(),
            fork_pull_requests: ForkPolicy::Never,
        }
    }

    /// Whether a comment by `login` with GitHub `author_association` `association` counts for
    /// this binding: the login is in `allowed_users`, or the association in
    /// `allowed_associations`.
    pub fn allows_commenter(&self, login: &str, association: &str) -> bool {
        (!login.is_empty()
            && self
                .allowed_users
                .iter()
                .any(|u| u.eq_ignore_ascii_case(login)))
            || (!association.is_empty()
                && self
                    .allowed_associations
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(association)))
    }

    /// The word that starts this binding in a comment command.
    pub fn alias(&self) -> &str {
        if self.command_alias.is_empty() {
            &self.dag
        } else {
            &self.command_alias
        }
    }

    /// The commit status context.
    pub fn status_context(&self) -> String {
        if self.check_name.is_empty() {
            format!("dispatch/{}", self.dag)
        } else {
            self.check_name.clone()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingsFile {
    #[serde(default)]
    binding: Vec<Binding>,
}

/// Reads and validates a bindings file (`[[binding]]` tables). Errors name the file and the field.
pub fn load_bindings(path: &Path) -> Result<Vec<Binding>, HubError> {
    let file: BindingsFile = toml_file::read(path)?;
    validate_bindings(file.binding, &path.display().to_string())
}

/// Validates bindings and fills in default ids. `origin` names the file in errors.
pub fn validate_bindings(
    mut bindings: Vec<Binding>,
    origin: &str,
) -> Result<Vec<Binding>, HubError> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, b) in bindings.iter_mut().enumerate() {
        let field = |name: &str| format!("binding[{i}].{name}");
        let repo = b.repository.trim();
        let valid_repo = repo
            .split_once('/')
            .is_some_and(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'));
        if !valid_repo {
            return Err(HubError::setting(
                origin,
                field("repository"),
                format!("expected `owner/name`, got `{}`", b.repository),
            ));
        }
        if b.dag.trim().is_empty() {
            return Err(HubError::setting(origin, field("dag"), "must not be empty"));
        }
        if !b.event_name.is_empty() && !b.trigger.events().contains(&b.event_name.as_str()) {
            return Err(HubError::setting(
                origin,
                field("event_name"),
                format!(
                    "`{}` is not an event of trigger `{}` (one of: {})",
                    b.event_name,
                    b.trigger.as_str(),
                    b.trigger.events().join(", ")
                ),
            ));
        }
        for (name, pattern) in [
            ("branch_pattern", &b.branch_pattern),
            ("tag_pattern", &b.tag_pattern),
        ] {
            if let Err(e) = glob::Pattern::new(pattern) {
                return Err(HubError::setting(
                    origin,
                    field(name),
                    format!("invalid glob: {e}"),
                ));
            }
        }
        if b.trigger == Trigger::CommentCommand {
            for (name, pattern) in [
                ("branch_pattern", &b.branch_pattern),
                ("tag_pattern", &b.tag_pattern),
            ] {
                if !pattern.is_empty() {
                    return Err(HubError::setting(
                        origin,
                        field(name),
                        "does not apply to `comment_command` bindings (a comment names no branch)",
                    ));
                }
            }
            let alias = b.alias();
            if alias.is_empty() || alias.chars().any(char::is_whitespace) {
                return Err(HubError::setting(
                    origin,
                    field("command_alias"),
                    "must be one word without spaces",
                ));
            }
            if is_cancel_command(alias) {
                return Err(HubError::setting(
                    origin,
                    field("command_alias"),
                    format!("`{CANCEL_COMMAND}` is reserved for cancelling runs"),
                ));
            }
            if alias.eq_ignore_ascii_case(APPROVE_COMMAND) {
                return Err(HubError::setting(
                    origin,
                    field("command_alias"),
                    format!("`{APPROVE_COMMAND}` is reserved for approving fork pull requests"),
                ));
            }
        }
        for association in &mut b.allowed_associations {
            let word = association.trim().to_ascii_uppercase();
            if !AUTHOR_ASSOCIATIONS.contains(&word.as_str()) {
                return Err(HubError::setting(
                    origin,
                    field("allowed_associations"),
                    format!(
                        "`{association}` is not a GitHub author_association (one of: {})",
                        AUTHOR_ASSOCIATIONS.join(", ")
                    ),
                ));
            }
            *association = word;
        }
        for user in &mut b.allowed_users {
            let login = user.trim().trim_start_matches('@');
            if login.is_empty() || login.chars().any(|c| c.is_whitespace() || c == '/') {
                return Err(HubError::setting(
                    origin,
                    field("allowed_users"),
                    format!("`{user}` is not a GitHub login"),
                ));
            }
            *user = login.to_owned();
        }
        if b.fork_pull_requests != ForkPolicy::Never && b.trigger != Trigger::Auto {
            return Err(HubError::setting(
                origin,
                field("fork_pull_requests"),
                "only applies to `auto` bindings (they receive pull_request and check_run)",
            ));
        }
        if !b.dispatch_event_type.is_empty()
            && (b.trigger != Trigger::ManualDispatch || b.event_name == "workflow_dispatch")
        {
            return Err(HubError::setting(
                origin,
                field("dispatch_event_type"),
                "only applies to `manual_dispatch` bindings receiving `repository_dispatch`",
            ));
        }
        if b.id.is_empty() {
            let base = format!("{}/{}/{}", repo, b.dag, b.trigger.as_str());
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            b.id = if *n == 1 { base } else { format!("{base}-{n}") };
        }
        b.repository = repo.to_owned();
    }
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (i, b) in bindings.iter().enumerate() {
        if let Some(first) = ids.insert(&b.id, i) {
            return Err(HubError::setting(
                origin,
                format!("binding[{i}].id"),
                format!("`{}` is already used by binding[{first}]", b.id),
            ));
        }
    }
    Ok(bindings)
}

/// A fully commented example bindings file; the scheduler writes it to `<home>/bindings.toml` on
/// first start. Every binding in it is commented out, so it loads as an empty list.
pub const EXAMPLE_BINDINGS_TOML: &str = r#"# dispatch bindings: which GitHub events start which DAG.
#
# Each [[binding]] table turns a matching webhook delivery into one dispatch job. A scheduler that
# pulls the job runs the DAG named by `dag` with the GitHub event as runtime parameters.
#
# Fields:
#   repository          "owner/name" (required; compared case-insensitively)
#   dag                 DAG name to run (required)
#   trigger             "auto"            push, pull_request, create, release, check_run
#                       "comment_command" issue_comment, pull_request_review_comment
#                                         ("@dispatch <alias>" runs, "@dispatch cancel" cancels;
#                                         only from allowed commenters, see allowed_*)
#                       "manual_dispatch" repository_dispatch, workflow_dispatch
#   id                  stable id (default "<repository>/<dag>/<trigger>")
#   event_name          only this event, e.g. "push" (must belong to the trigger)
#   action              only this payload action, e.g. "opened", "published"
#                       (unset: every action, except pull_request = opened, synchronize,
#                       reopened and check_run = rerequested, requested_action)
#   branch_pattern      glob over the branch: "main", "release/*", "**"
#                       (pull_request: the base branch the PR targets)
#   tag_pattern         glob over the tag: "v*"
#                       (when both patterns are set, either may match)
#   command_alias       word after the mention (default: the DAG name)
#   dispatch_event_type repository_dispatch only: the event_type sent by the caller
#   check_name          commit status context (default "dispatch/<dag>")
#   license             license id whose schedulers may take the jobs (default: any)
#   allowed_associations whose comment commands count, by the comment's author_association:
#                       OWNER, MEMBER, COLLABORATOR, CONTRIBUTOR, FIRST_TIME_CONTRIBUTOR,
#                       FIRST_TIMER, MANNEQUIN, NONE (default ["OWNER", "MEMBER", "COLLABORATOR"])
#                       (MEMBER: any member of the owning organization; COLLABORATOR: any
#                       invited collaborator, read-only ones included)
#   allowed_users       GitHub logins whose comment commands count whatever their association
#                       (logins can be renamed and reused: keep the list current)
#   fork_pull_requests  pull requests from forks: "never" (default), "approved" (the waiting
#                       event runs once an allowed commenter says "@dispatch approve" or
#                       "@dispatch approve <sha>"; each later event needs a new approval),
#                       "always" (also check runs on fork code)

# Build every push to main and every pull request targeting main.
# [[binding]]
# repository = "octo-org/octo-repo"
# dag = "build"
# trigger = "auto"
# event_name = "push"
# branch_pattern = "main"
#
# [[binding]]
# repository = "octo-org/octo-repo"
# dag = "build"
# trigger = "auto"
# event_name = "pull_request"
# branch_pattern = "main"
# check_name = "dispatch/pr-build"

# Release when a tag like v1.2.3 is published.
# [[binding]]
# repository = "octo-org/octo-repo"
# dag = "release"
# trigger = "auto"
# event_name = "release"
# action = "published"
# tag_pattern = "v*"

# "@dispatch deploy" in a PR or issue comment runs the DAG "deploy-staging".
# [[binding]]
# repository = "octo-org/octo-repo"
# dag = "deploy-staging"
# trigger = "comment_command"
# command_alias = "deploy"

# A repository_dispatch with event_type "nightly", or a workflow_dispatch.
# [[binding]]
# repository = "octo-org/octo-repo"
# dag = "nightly"
# trigger = "manual_dispatch"
# dispatch_event_type = "nightly"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Binding>, HubError> {
        let file: BindingsFile = toml::from_str(text)
            .map_err(|e| HubError::parse_config(Path::new("t.toml"), text, &e))?;
        validate_bindings(file.binding, "t.toml")
    }

    #[test]
    fn example_loads_as_empty() {
        assert!(parse(EXAMPLE_BINDINGS_TOML).unwrap().is_empty());
    }

    #[test]
    fn example_bindings_are_valid_when_uncommented() {
        let text: String = EXAMPLE_BINDINGS_TOML
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .filter(|l| !l.starts_with("  "))
            .map(|l| format!("{l}\n"))
            .collect();
        let bindings = parse(&text).unwrap();
        assert_eq!(bindings.len(), 5);
        assert_eq!(bindings[0].id, "octo-org/octo-repo/build/auto");
        assert_eq!(bindings[1].id, "octo-org/octo-repo/build/auto-2");
        assert_eq!(bindings[3].alias(), "deploy");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("repository = \"x\"\ndag = \"d\"\ntrigger = \"auto\"", "binding[0].repository"),
            ("repository = \"o/r\"\ndag = \"\"\ntrigger = \"auto\"", "binding[0].dag"),
            (
                "repository = \"o/r\"\ndag = \"d\"\ntrigger = \"auto\"\nevent_name = \"issue_comment\"",
                "binding[0].event_name",
            ),
            (
                "repository = \"o/r\"\ndag = \"d\"\ntrigger = \"auto\"\nbranch_pattern = \"[\"",
                "binding[0].branch_pattern",
            ),
            (
                "repository = \"o/r\"\ndag = \"d\"\ntrigger = \"comment_command\"\ncommand_alias = \"cancel\"",
                "binding[0].command_alias",
            ),
            (
                "repository = \"o/r\"\ndag = \"d\"\ntrigger = \"auto\"\ndispatch_event_type = \"x\"",
                "binding[0].dispatch_event_type",
            ),
            (
                "repository = \"o/r\"\ndag = \"d\"\ntrigger = \"comment_command\"\ntag_pattern = \"v*\"",
                "binding[0].tag_pattern",
            ),
            (
                "repository = \"o/r\"\ndag = \"d\"\ntrigger = \"comment_command\"\ncommand_alias = \"Approve\"",
                "binding[0].command_alias",
            ),
            (
                "repository = \"o/r\"\ndag = \"d\"\ntrigger = \"comment_command\"\nallowed_associations = [\"MEMBER\", \"ADMIN\"]",
                "binding[0].allowed_associations",
            ),
            (
                "repository = \"o/r\"\ndag = \"d\"\ntrigger = \"comment_command\"\nallowed_users = [\"a b\"]",
                "binding[0].allowed_users",
            ),
            (
                "repository = \"o/r\"\ndag = \"d\"\ntrigger = \"comment_command\"\nfork_pull_requests = \"always\"",
                "binding[0].fork_pull_requests",
            ),
        ];
        for (body, want) in cases {
            let err = parse(&format!("[[binding]]\n{body}\n")).unwrap_err();
            assert!(err.to_string().contains(want), "{err} should name {want}");
            assert!(err.to_string().contains("t.toml"), "{err}");
            assert!(err.is_config());
        }
    }

    #[test]
    fn unknown_field_and_bad_trigger_are_parse_errors() {
        for body in [
            "repository = \"o/r\"\ndag = \"d\"\ntrigger = \"auto\"\nbrnch = \"x\"",
            "repository = \"o/r\"\ndag = \"d\"\ntrigger = \"sometimes\"",
        ] {
            let err = parse(&format!("[[binding]]\n{body}\n")).unwrap_err();
            let HubError::ParseConfig { message: msg, .. } = &err else {
                panic!("expected a parse error, got {err}")
            };
            assert!(msg.contains("brnch") || msg.contains("`trigger`"), "{msg}");
            assert!(!msg.contains("sometimes"), "the value is not quoted: {msg}");
        }
    }

    #[test]
    fn trust_keys_default_and_normalize() {
        let b = &parse("[[binding]]\nrepository = \"o/r\"\ndag = \"d\"\ntrigger = \"auto\"\n")
            .unwrap()[0];
        assert_eq!(b.allowed_associations, DEFAULT_ALLOWED_ASSOCIATIONS);
        assert!(b.allowed_users.is_empty());
        assert_eq!(b.fork_pull_requests, ForkPolicy::Never);
        let b = &parse(
            "[[binding]]\nrepository = \"o/r\"\ndag = \"d\"\ntrigger = \"auto\"\n\
             allowed_associations = [\"member\", \" Contributor \"]\nallowed_users = [\"@Octocat\"]\n\
             fork_pull_requests = \"approved\"\n",
        )
        .unwrap()[0];
        assert_eq!(b.allowed_associations, ["MEMBER", "CONTRIBUTOR"]);
        assert_eq!(b.allowed_users, ["Octocat"]);
        assert_eq!(b.fork_pull_requests, ForkPolicy::Approved);
        let err = parse(
            "[[binding]]\nrepository = \"o/r\"\ndag = \"d\"\ntrigger = \"auto\"\nfork_pull_requests = \"sometimes\"\n",
        )
        .unwrap_err();
        assert!(matches!(err, HubError::ParseConfig { .. }), "{err}");
    }

    #[test]
    fn commenters_table() {
        let mut b = Binding::new("o/r", "d", Trigger::CommentCommand);
        b.allowed_users = vec!["Friend".into()];
        let cases = [
            ("a", "OWNER", true),
            ("a", "member", true),
            ("a", "COLLABORATOR", true),
            ("a", "CONTRIBUTOR", false),
            ("a", "FIRST_TIME_CONTRIBUTOR", false),
            ("a", "NONE", false),
            ("a", "", false),
            ("friend", "NONE", true),
            ("FRIEND", "", true),
            ("", "", false),
        ];
        for (login, association, want) in cases {
            assert_eq!(
                b.allows_commenter(login, association),
                want,
                "{login} {association}"
            );
        }
        b.allowed_associations.clear();
        assert!(
            !b.allows_commenter("a", "OWNER"),
            "an empty list allows only allowed_users"
        );
    }

    #[test]
    fn duplicate_explicit_ids_are_rejected() {
        let text = "[[binding]]\nid = \"a\"\nrepository = \"o/r\"\ndag = \"d\"\ntrigger = \"auto\"\n\
                    [[binding]]\nid = \"a\"\nrepository = \"o/r\"\ndag = \"e\"\ntrigger = \"auto\"\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("binding[1].id"), "{err}");
    }

    #[test]
    fn load_bindings_names_missing_file() {
        let err = load_bindings(Path::new("/nonexistent/bindings.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/bindings.toml"));
    }
}
