//! What a run needs before its first step (`docs/dag-format.md`, "Env, consts, dotenv,
//! secrets" and "Params"): the DAG's working directory, its secrets and dotenv files, the
//! `eval` of params the caller gave no value, and the checks of the param declarations.

use std::path::{Path, PathBuf};

use dispatch_dag::{Dag, SecretProvider, SecretRef};
use tokio_util::sync::CancellationToken;

use crate::conditions::{evaluate, CheckCx};
use crate::context::{binding_values, builtin_vars, RunFacts, StepFacts};
use crate::env::{build_env, expand, lookup, EnvLayers};
use crate::invocation::Shell;
use crate::params::{check_param, given_by_caller};

/// A run, ready to start its steps.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The DAG's working directory: expanded, absolute, created.
    pub(crate) work_dir: PathBuf,
    /// Variables of the dotenv files, in order (later files win).
    pub(crate) dotenv: Vec<(String, String)>,
    /// The secrets, `(variable, value)`; never written anywhere but step environments.
    pub(crate) secrets: Vec<(String, String)>,
    /// The resolved params after `eval`.
    pub(crate) params: Vec<(String, String)>,
    /// What the run log should say (a dotenv file that is not there).
    pub(crate) warnings: Vec<String>,
}

/// Prepares the run of `dag` (whose `resolved_params` are the run's); `runtime` is the
/// run's runtime-param string. The error says what failed, never a secret's value.
pub(crate) async fn prepare(
    dag: &Dag,
    facts: &RunFacts,
    runtime: &str,
    stop: &CancellationToken,
    limit: usize,
) -> Result<Prepared, String> {
    let inherited = |var: &str| std::env::var(var).ok();
    let no_step = StepFacts::none();
    let bindings: Vec<_> = dag.bindings.iter().collect();
    let bound = binding_values(&bindings, facts, &no_step, &[]);
    // `working_dir` and the dotenv paths may use the DAG's `env` (as the params and references
    // it is made of; the dotenv files themselves are not read yet).
    let builtins = builtin_vars(facts, &no_step);
    let literal: [&[(String, String)]; 2] = [&facts.params, &bound];
    let dag_env = build_env(
        &EnvLayers {
            literal: &literal,
            dag_env: &dag.env,
            outputs: &[],
            step_env: &[],
            builtins: &builtins,
        },
        &inherited,
    );
    let base_lookup = |var: &str| lookup(&dag_env, var).or_else(|| inherited(var));

    let work_dir = dag_work_dir(dag, &base_lookup)?;
    std::fs::create_dir_all(&work_dir).map_err(|e| {
        format!(
            "failed to create the working directory `{}`: {e}",
            work_dir.display()
        )
    })?;

    let mut secrets = Vec::new();
    for secret in &dag.secrets {
        let value = resolve_secret(secret, &work_dir, &inherited)?;
        secrets.push((secret.name.clone(), value));
    }

    let mut dotenv = Vec::new();
    let mut warnings = Vec::new();
    let dag_file_dir = dag.location.parent().unwrap_or(Path::new("/"));
    for written in &dag.dotenv {
        let name = expand_home(&expand(written, &base_lookup));
        // As with Dagu, a listed file that is not there is skipped, not an error.
        let Some(path) = [work_dir.join(&name), dag_file_dir.join(&name)]
            .into_iter()
            .find(|p| p.is_file())
        else {
            warnings.push(format!(
                "dotenv file `{}` not found in `{}` or `{}`; skipped",
                name.display(),
                work_dir.display(),
                dag_file_dir.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("failed to read dotenv file `{}`: {e}", path.display()))?;
        dotenv.extend(
            parse_dotenv(&text).map_err(|e| format!("dotenv file `{}`: {e}", path.display()))?,
        );
    }

    let runtime = dispatch_webhook_params::parse_runtime_params(runtime).unwrap_or_default();
    let mut params = facts.params.clone();
    let shell = Shell::select(None, dag.shell.as_deref());
    for spec in &dag.param_specs {
        let given = given_by_caller(&dag.params, &runtime, &spec.name);
        let mut has_value = given || spec.has_default;
        if let (Some(eval), false) = (&spec.eval, given) {
            let bindings: Vec<_> = spec.bindings.iter().collect();
            let mut env = dotenv.clone();
            env.extend(params.iter().cloned());
            env.extend(binding_values(&bindings, facts, &no_step, &[]));
            let cx = CheckCx {
                shell: &shell,
                env: &env,
                working_dir: &work_dir,
                stop,
                clean_up: std::time::Duration::from_secs(dag.max_clean_up_time_sec),
                limit,
            };
            match evaluate(eval, &cx).await {
                Ok(value) => {
                    match params.iter_mut().find(|(n, _)| *n == spec.name) {
                        Some(slot) => slot.1 = value,
                        None => params.push((spec.name.clone(), value)),
                    }
                    has_value = true;
                }
                // The default stands in for a failed `eval`.
                Err(_) if spec.has_default => {}
                Err(e) => return Err(format!("param `{}`: {e}", spec.name)),
            }
        }
        let value = has_value.then(|| lookup(&params, &spec.name)).flatten();
        check_param(spec, value.as_deref())?;
    }

    Ok(Prepared {
        work_dir,
        dotenv,
        secrets,
        params,
        warnings,
    })
}

/// The value of one of the DAG's `secrets:`, read as a run reads it: an `env` secret from
/// `inherited`, a `file` secret from the file `key` under `work_dir` (one line end at its end
/// dropped). The error names the secret, never a value.
fn resolve_secret(
    secret: &SecretRef,
    work_dir: &Path,
    inherited: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    match secret.provider {
        SecretProvider::Env => inherited(&secret.key).ok_or_else(|| {
            format!(
                "secret `{}`: the environment variable `{}` is not set",
                secret.name, secret.key
            )
        }),
        SecretProvider::File => {
            let path = work_dir.join(&secret.key);
            let mut text = std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "secret `{}`: failed to read `{}`: {e}",
                    secret.name,
                    path.display()
                )
            })?;
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            Ok(text)
        }
    }
}

/// The values of `dag`'s `secrets:` as a run of it would read them now, for masking them in
/// what leaves the machine (the scheduler's log uploads). `env` secrets come from this
/// process's environment; `file` secrets from the DAG's working directory, with `$VAR` in
/// `working_dir` taken from the DAG's `env` and this process's environment (a run's params
/// and references are not known here). A secret that cannot be read is left out: a run of the
/// DAG fails before its first step then, so its value is in no log.
pub fn secret_values(dag: &Dag) -> Vec<String> {
    let inherited = |var: &str| std::env::var(var).ok();
    let dag_env = build_env(
        &EnvLayers {
            literal: &[],
            dag_env: &dag.env,
            outputs: &[],
            step_env: &[],
            builtins: &[],
        },
        &inherited,
    );
    let lookup = |var: &str| lookup(&dag_env, var).or_else(|| inherited(var));
    let Ok(work_dir) = dag_work_dir(dag, &lookup) else {
        return Vec::new();
    };
    dag.secrets
        .iter()
        .filter_map(|secret| resolve_secret(secret, &work_dir, &inherited).ok())
        .collect()
}

/// The DAG's working directory: `working_dir` with `$VAR` and `~` expanded, relative to the
/// DAG file's directory; without one, the DAG file's directory.
fn dag_work_dir(dag: &Dag, lookup: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, String> {
    let file_dir = dag
        .location
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = match &dag.working_dir {
        None => file_dir,
        Some(written) => {
            let text = written.to_string_lossy();
            let expanded = expand_home(&expand(&text, lookup));
            if expanded.as_os_str().is_empty() {
                return Err(format!("`working_dir` `{text}` expands to nothing"));
            }
            file_dir.join(expanded)
        }
    };
    Ok(std::path::absolute(&dir).unwrap_or(dir))
}

/// `~` and `~/x` → the home directory.
pub(crate) fn expand_home(path: &str) -> PathBuf {
    match path.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(rest.trim_start_matches('/')),
            None => PathBuf::from(path),
        },
        _ => PathBuf::from(path),
    }
}

/// `KEY=VALUE` lines of a dotenv file: `#` comments and blank lines are skipped, `export `
/// is allowed, a value in single quotes is literal, one in double quotes understands `\n`,
/// `\"` and `\\`; an unquoted value ends at ` #`. Values are not expanded.
pub(crate) fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected `KEY=VALUE`", n + 1));
        };
        let key = key.trim();
        if key.is_empty()
            || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || key.as_bytes()[0].is_ascii_digit()
        {
            return Err(format!("line {}: invalid variable name `{key}`", n + 1));
        }
        let value = value.trim();
        let value = if let Some(inner) = value.strip_prefix('\'') {
            inner
                .strip_suffix('\'')
                .ok_or_else(|| format!("line {}: unterminated single quote", n + 1))?
                .to_owned()
        } else if let Some(inner) = value.strip_prefix('"') {
            let inner = inner
                .strip_suffix('"')
                .ok_or_else(|| format!("line {}: unterminated double quote", n + 1))?;
            let mut v = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match (c, c == '\\') {
                    (_, true) => match chars.next() {
                        Some('n') => v.push('\n'),
                        Some(other) => v.push(other),
                        None => v.push('\\'),
                    },
                    (c, false) => v.push(c),
                }
            }
            v
        } else {
            match value.find(" #") {
                Some(i) => value[..i].trim_end().to_owned(),
                None => value.to_owned(),
            }
        };
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines() {
        let text = "# comment\n\nA=1\nexport B = two words \nC='$NOT ${EXPANDED}'\nD=\"x\\ny \\\"q\\\"\"\nE=v # note\nF=\n";
        let got = parse_dotenv(text).unwrap();
        let want = crate::env::vars(&[
            ("A", "1"),
            ("B", "two words"),
            ("C", "$NOT ${EXPANDED}"),
            ("D", "x\ny \"q\""),
            ("E", "v"),
            ("F", ""),
        ]);
        assert_eq!(got, want);
        for (bad, want) in [
            ("NOVALUE\n", "line 1: expected `KEY=VALUE`"),
            ("\n1A=x\n", "line 2: invalid variable name `1A`"),
            ("A='x\n", "unterminated single quote"),
        ] {
            let e = parse_dotenv(bad).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn secret_values_are_read_as_a_run_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        std::fs::write(dir.path().join("work/token.txt"), "from-file\n").unwrap();
        // The variable is this test's own: no other test reads or sets it.
        std::env::set_var("DISPATCH_EXECUTOR_TEST_SECRET_VALUE", "from-env");
        let text = "working_dir: $SUB\nenv:\n  - SUB: work\nsecrets:\n  - name: A\n    provider: env\n    key: DISPATCH_EXECUTOR_TEST_SECRET_VALUE\n  - name: B\n    provider: file\n    key: token.txt\n  - name: C\n    provider: env\n    key: DISPATCH_EXECUTOR_TEST_NOT_SET\nsteps:\n  - name: s\n    command: \"true\"\n";
        let dag = dispatch_dag::parse_dag(&dir.path().join("d.yaml"), text).unwrap();
        assert_eq!(secret_values(&dag), ["from-env", "from-file"]);
    }

    #[test]
    fn home_expansion() {
        let home = std::env::var("HOME").unwrap();
        assert_eq!(expand_home("~/x"), PathBuf::from(&home).join("x"));
        assert_eq!(expand_home("~"), PathBuf::from(&home));
        assert_eq!(expand_home("~other/x"), PathBuf::from("~other/x"));
        assert_eq!(expand_home("a/~"), PathBuf::from("a/~"));
    }

    #[test]
    fn working_directory_forms() {
        let dag = |wd: Option<&str>| Dag {
            location: "/srv/dags/d.yaml".into(),
            working_dir: wd.map(PathBuf::from),
            ..Dag::default()
        };
        let vars = |v: &str| (v == "BASE").then(|| "/opt/base".to_owned());
        assert_eq!(
            dag_work_dir(&dag(None), &vars),
            Ok(PathBuf::from("/srv/dags"))
        );
        assert_eq!(
            dag_work_dir(&dag(Some("/abs")), &vars),
            Ok(PathBuf::from("/abs"))
        );
        assert_eq!(
            dag_work_dir(&dag(Some("${BASE}/w")), &vars),
            Ok(PathBuf::from("/opt/base/w"))
        );
        assert_eq!(
            dag_work_dir(&dag(Some("$UNSET_X/w")), &vars),
            Ok(PathBuf::from("/w"))
        );
        assert!(dag_work_dir(&dag(Some("$UNSET_X")), &vars).is_err());
    }
}
