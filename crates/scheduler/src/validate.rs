//! `scheduler validate <file>...`: loads each DAG file as a run would, runs nothing. Prints
//! `ok <file>` (stdout) for a good file and each error of a bad one as `file:line: key: reason`
//! (stderr); fails when any file is invalid.

use dispatch_dag::validate_dag_file;

use crate::cli::ValidateArgs;
use crate::error::AppError;

/// Checks every file of `args`; see the module docs.
pub(crate) fn validate(args: &ValidateArgs) -> Result<(), AppError> {
    let mut invalid = 0;
    for file in &args.files {
        let errors = validate_dag_file(file);
        if errors.is_empty() {
            say!("ok {}", file.display());
        } else {
            invalid += 1;
            for err in errors {
                eprintln!("{err}");
            }
        }
    }
    if invalid == 0 {
        Ok(())
    } else {
        Err(AppError::Invalid {
            invalid,
            total: args.files.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_invalid_files() {
        let dir = tempfile::tempdir().unwrap();
        let dag_file = |name: &str, yaml: Option<&str>| {
            let path = dir.path().join(name);
            if let Some(yaml) = yaml {
                std::fs::write(&path, yaml).unwrap();
            }
            path
        };
        let good = dag_file(
            "good.yaml",
            Some("steps:\n  - name: a\n    command: 'true'\n"),
        );
        let bad = dag_file(
            "bad.yaml",
            Some("steps:\n  - name: a\n    comand: 'true'\n"),
        );
        let missing = dag_file("missing.yaml", None);

        let all = ValidateArgs {
            files: vec![good.clone(), bad, missing],
        };
        match validate(&all) {
            Err(AppError::Invalid { invalid, total }) => assert_eq!((invalid, total), (2, 3)),
            other => panic!("expected invalid files, got {other:?}"),
        }
        assert!(validate(&ValidateArgs { files: vec![good] }).is_ok());
    }
}
