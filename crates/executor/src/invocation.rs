//! Which processes a step's `run` becomes (`docs/dag-format.md`, "Steps"): the shell, one
//! command, a list of commands, a script (through the shell or its `#!` interpreter), or a
//! script with `command` as its interpreter.
//!
//! Pure logic: no IO, tested without a runtime.

use std::ffi::OsString;
use std::path::Path;

use dispatch_dag::Step;

/// A shell with its arguments, as `shell` gives it (`bash -o pipefail`); the default is
/// `sh -e`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shell {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
}

impl Shell {
    /// The step's `shell`, else the DAG's, else `sh -e`.
    pub(crate) fn select(step_shell: Option<&str>, dag_shell: Option<&str>) -> Shell {
        let words: Vec<&str> = step_shell
            .filter(|s| !s.trim().is_empty())
            .or(dag_shell.filter(|s| !s.trim().is_empty()))
            .map(|s| s.split_whitespace().collect())
            .unwrap_or_default();
        match words.split_first() {
            Some((program, args)) => Shell {
                program: (*program).to_owned(),
                args: args.iter().map(|a| (*a).to_owned()).collect(),
            },
            None => Shell {
                program: "sh".to_owned(),
                args: vec!["-e".to_owned()],
            },
        }
    }

    /// `<shell> <args> -c <text>`.
    pub(crate) fn command(&self, text: &str) -> Invocation {
        let mut args: Vec<OsString> = self.args.iter().map(OsString::from).collect();
        args.push("-c".into());
        args.push(text.into());
        Invocation {
            program: self.program.clone(),
            args,
        }
    }

    /// `<shell> <args> -c <text> <shell> <positional...>`: the values are `$1`, `$2`, ... of
    /// the command (arguments, never command text).
    fn command_with(&self, text: &str, positional: &[String]) -> Invocation {
        let mut inv = self.command(text);
        if !positional.is_empty() {
            inv.args.push(self.program.clone().into());
            inv.args.extend(positional.iter().map(OsString::from));
        }
        inv
    }
}

/// One process to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invocation {
    pub(crate) program: String,
    pub(crate) args: Vec<OsString>,
}

/// The interpreter of a script's `#!` line and its one optional argument (Linux passes the
/// rest of the line as a single argument).
pub(crate) fn shebang(script: &str) -> Option<(String, Option<String>)> {
    let line = script.lines().next()?.strip_prefix("#!")?.trim();
    let (interpreter, arg) = match line.split_once(char::is_whitespace) {
        Some((i, a)) => (i, Some(a.trim().to_owned()).filter(|a| !a.is_empty())),
        None => (line, None),
    };
    (!interpreter.is_empty()).then(|| (interpreter.to_owned(), arg))
}

/// The positional params of a run (the params named `1`, `2`, ...) as `$1`, `$2`, ...: the
/// value of the param named `N` at position `N`, the empty string where there is none.
pub(crate) fn positional(params: &[(String, String)]) -> Vec<String> {
    let numbered: Vec<(usize, &str)> = params
        .iter()
        .filter(|(name, _)| !name.starts_with('0') && name.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|(name, value)| Some((name.parse().ok()?, value.as_str())))
        .collect();
    let count = numbered.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let mut out = vec![String::new(); count];
    for (n, value) in numbered {
        out[n - 1] = value.to_owned();
    }
    out
}

/// The processes of a command step, run in order (the first failure ends the step). `script`
/// is the file the step's script was written to (when it has one); `positional` are the run's
/// positional params, given to commands and scripts as `$1`, `$2`, ... (not to a script whose
/// `command` is its interpreter: there `$1` is the script).
pub(crate) fn invocations(
    step: &Step,
    dag_shell: Option<&str>,
    script: Option<&Path>,
    positional: &[String],
) -> Result<Vec<Invocation>, String> {
    let shell = Shell::select(step.shell.as_deref(), dag_shell);
    match (&step.script, script, &step.command) {
        (Some(_), None, _) => Err("the script was not written to a file".to_owned()),
        (Some(text), Some(path), None) => {
            // A `#!` line picks the interpreter unless the step chose its shell (the DAG's
            // shell does not count).
            if let (Some((interpreter, arg)), None) = (shebang(text), &step.shell) {
                let mut args: Vec<OsString> = arg.into_iter().map(OsString::from).collect();
                args.push(path.into());
                args.extend(positional.iter().map(OsString::from));
                return Ok(vec![Invocation {
                    program: interpreter,
                    args,
                }]);
            }
            let mut args: Vec<OsString> = shell.args.iter().map(OsString::from).collect();
            args.push(path.into());
            args.extend(positional.iter().map(OsString::from));
            Ok(vec![Invocation {
                program: shell.program,
                args,
            }])
        }
        (Some(_), Some(path), Some(command)) => {
            // `command` is the interpreter of the script: the file path is its last
            // argument, passed as `$1`, never spliced into the text.
            let mut inv = shell.command(&format!("{command} \"$1\""));
            inv.args.push(shell.program.clone().into());
            inv.args.push(path.into());
            Ok(vec![inv])
        }
        (None, _, Some(command)) => Ok(vec![shell.command_with(command, positional)]),
        (None, _, None) if !step.commands.is_empty() => Ok(step
            .commands
            .iter()
            .map(|c| shell.command_with(c, positional))
            .collect()),
        (None, _, None) => {
            Err("step has nothing to run (no `run`, `command` or `script`)".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(inv: &Invocation) -> Vec<String> {
        std::iter::once(inv.program.clone())
            .chain(inv.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect()
    }

    fn step() -> Step {
        Step::named("s")
    }

    #[test]
    fn shell_selection() {
        assert_eq!(
            Shell::select(None, None),
            Shell {
                program: "sh".into(),
                args: vec!["-e".into()]
            }
        );
        assert_eq!(
            Shell::select(None, Some("bash -o pipefail")).args,
            ["-o", "pipefail"]
        );
        assert_eq!(Shell::select(Some("zsh"), Some("bash")).program, "zsh");
        assert_eq!(Shell::select(Some("  "), None).program, "sh");
    }

    #[test]
    fn shebang_lines() {
        assert_eq!(
            shebang("#!/usr/bin/env python3\nprint(1)\n"),
            Some(("/usr/bin/env".into(), Some("python3".into())))
        );
        assert_eq!(shebang("#!/bin/bash\n"), Some(("/bin/bash".into(), None)));
        assert_eq!(
            shebang("#! /bin/sh -eu \n"),
            Some(("/bin/sh".into(), Some("-eu".into())))
        );
        assert_eq!(shebang("echo\n#!/bin/bash\n"), None);
        assert_eq!(shebang("#!\n"), None);
    }

    #[test]
    fn invocation_table() {
        let path = Path::new("/logs/s.script");
        let mut one = step();
        one.command = Some("echo hi".into());
        let mut list = step();
        list.commands = vec!["echo a".into(), "echo b".into()];
        let mut script = step();
        script.script = Some("echo a\necho b\n".into());
        let mut shebang_script = step();
        shebang_script.script = Some("#!/usr/bin/env python3\nprint(1)\n".into());
        let mut forced = shebang_script.clone();
        forced.shell = Some("bash".into());
        let mut interpreted = script.clone();
        interpreted.command = Some("python3".into());
        type Row<'a> = (&'a Step, Option<&'a str>, Vec<Vec<&'a str>>);
        let table: Vec<Row> = vec![
            (&one, None, vec![vec!["sh", "-e", "-c", "echo hi"]]),
            (
                &one,
                Some("bash -x"),
                vec![vec!["bash", "-x", "-c", "echo hi"]],
            ),
            (
                &list,
                None,
                vec![
                    vec!["sh", "-e", "-c", "echo a"],
                    vec!["sh", "-e", "-c", "echo b"],
                ],
            ),
            (&script, None, vec![vec!["sh", "-e", "/logs/s.script"]]),
            (&script, Some("bash"), vec![vec!["bash", "/logs/s.script"]]),
            (
                &shebang_script,
                Some("bash"),
                vec![vec!["/usr/bin/env", "python3", "/logs/s.script"]],
            ),
            (&forced, None, vec![vec!["bash", "/logs/s.script"]]),
            (
                &interpreted,
                None,
                vec![vec![
                    "sh",
                    "-e",
                    "-c",
                    "python3 \"$1\"",
                    "sh",
                    "/logs/s.script",
                ]],
            ),
        ];
        for (step, dag_shell, want) in table {
            let got: Vec<Vec<String>> = invocations(step, dag_shell, Some(path), &[])
                .unwrap()
                .iter()
                .map(words)
                .collect();
            assert_eq!(got, want, "{step:?}");
        }
        let e = invocations(&step(), None, None, &[]).unwrap_err();
        assert!(e.contains("nothing to run"), "{e}");
    }

    #[test]
    fn positional_params_are_arguments() {
        let params = crate::env::vars;
        assert_eq!(
            positional(&params(&[("1", "a"), ("X", "x"), ("3", "c"), ("01", "no")])),
            ["a", "", "c"]
        );
        assert!(positional(&params(&[("A", "1")])).is_empty());
        let p = vec!["a b".to_owned(), "$(x)".to_owned()];
        let path = Path::new("/logs/s.script");
        let mut one = step();
        one.command = Some("echo \"$1\"".into());
        let mut script = step();
        script.script = Some("echo \"$1\"\n".into());
        let got = |s: &Step| words(&invocations(s, None, Some(path), &p).unwrap()[0]);
        assert_eq!(
            got(&one),
            ["sh", "-e", "-c", "echo \"$1\"", "sh", "a b", "$(x)"]
        );
        assert_eq!(got(&script), ["sh", "-e", "/logs/s.script", "a b", "$(x)"]);
    }
}
