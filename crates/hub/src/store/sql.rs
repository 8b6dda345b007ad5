//! One face for the two databases the store runs on: SQLite (the default, a file in the data
//! directory) and PostgreSQL (`store_url = "postgres://…"`, for several hub replicas).
//!
//! The table files write their SQL once, with SQLite's numbered placeholders (`?1`, `?2`, …),
//! and run it through a [`Sql`] connection: [`Sql::execute`], [`Sql::rows`], `query_row` and
//! `map`, with arguments built by [`args!`] and rows read by [`Row::get`]. A statement
//! that differs between the two dialects asks [`Sql::dialect`] (say, JSON field access); most SQL
//! is the common part of both (`INSERT … ON CONFLICT`, `COALESCE`, `CAST(… AS BIGINT)`).
//!
//! Values cross in four kinds only (integers, text, bytes, null): every integer column is 64
//! bits in both schemas, so nothing is narrowed on the way in or out.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use postgres::types::{ToSql, Type};

use super::state::{JobState, UnknownJobState};

/// Which SQL the connection speaks, for the few statements the two write differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// An expression reading the text at `path` (dot-separated keys) of the JSON text in
    /// `column`; NULL where the path is absent.
    pub fn json_text(self, column: &str, path: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_extract({column}, '$.{path}')"),
            Dialect::Postgres => {
                format!("({column}::jsonb #>> '{{{}}}')", path.replace('.', ","))
            }
        }
    }

    /// As [`Dialect::json_text`], read as a 64-bit integer.
    pub fn json_int(self, column: &str, path: &str) -> String {
        format!("CAST({} AS BIGINT)", self.json_text(column, path))
    }
}

/// An argument of a statement, borrowed where it can be.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg<'a> {
    Null,
    Int(i64),
    Text(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
}

/// Builds the arguments of a statement: `args![job_id, now_ms, JobState::Queued]`. Each value
/// is borrowed, as rusqlite's `params!` does.
macro_rules! args {
    () => { &[] as &[$crate::store::sql::Arg<'_>] };
    ($($value:expr),+ $(,)?) => {
        &[$($crate::store::sql::ToArg::to_arg(&$value)),+] as &[$crate::store::sql::Arg<'_>]
    };
}
pub(crate) use args;

/// A value that can be a statement's argument.
pub(crate) trait ToArg {
    fn to_arg(&self) -> Arg<'_>;
}

impl ToArg for i64 {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Int(*self)
    }
}

impl ToArg for i32 {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Int(i64::from(*self))
    }
}

impl ToArg for u32 {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Int(i64::from(*self))
    }
}

/// Counts and sizes past `i64::MAX` (none the store keeps) are stored as `i64::MAX`.
impl ToArg for usize {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToArg for u64 {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToArg for bool {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Int(i64::from(*self))
    }
}

impl ToArg for str {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Text(Cow::Borrowed(self))
    }
}

impl ToArg for String {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Text(Cow::Borrowed(self))
    }
}

impl ToArg for [u8] {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Bytes(Cow::Borrowed(self))
    }
}

impl ToArg for Vec<u8> {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Bytes(Cow::Borrowed(self))
    }
}

impl ToArg for JobState {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Text(Cow::Borrowed(self.as_str()))
    }
}

impl<T: ToArg + ?Sized> ToArg for &T {
    fn to_arg(&self) -> Arg<'_> {
        (**self).to_arg()
    }
}

impl<T: ToArg> ToArg for Option<T> {
    fn to_arg(&self) -> Arg<'_> {
        self.as_ref().map_or(Arg::Null, ToArg::to_arg)
    }
}

/// A value read from a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int(_) => "integer",
            Value::Real(_) => "real",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
        }
    }
}

/// A row of a result, its columns in the order the statement named them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row(Vec<Value>);

impl Row {
    /// Column `index` as a `T`; a missing column or one of another kind is an error naming both.
    pub fn get<T: FromValue>(&self, index: usize) -> Result<T, SqlError> {
        let value = self.0.get(index).ok_or(SqlError::NoColumn { index })?;
        T::from_value(value).map_err(|want| match want {
            Mismatch::Kind(want) => SqlError::ColumnKind {
                index,
                want,
                found: value.kind(),
            },
            Mismatch::State(e) => SqlError::State { index, source: e },
        })
    }
}

/// Why a column could not be read as the type asked for.
pub(crate) enum Mismatch {
    Kind(&'static str),
    State(UnknownJobState),
}

/// A type a column can be read as.
pub(crate) trait FromValue: Sized {
    fn from_value(value: &Value) -> Result<Self, Mismatch>;
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<Self, Mismatch> {
        match value {
            Value::Int(v) => Ok(*v),
            _ => Err(Mismatch::Kind("integer")),
        }
    }
}

impl FromValue for i32 {
    fn from_value(value: &Value) -> Result<Self, Mismatch> {
        match value {
            Value::Int(v) => i32::try_from(*v).map_err(|_| Mismatch::Kind("32-bit integer")),
            _ => Err(Mismatch::Kind("integer")),
        }
    }
}

impl FromValue for u64 {
    fn from_value(value: &Value) -> Result<Self, Mismatch> {
        match value {
            Value::Int(v) => u64::try_from(*v).map_err(|_| Mismatch::Kind("unsigned integer")),
            _ => Err(Mismatch::Kind("integer")),
        }
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Result<Self, Mismatch> {
        match value {
            Value::Int(v) => Ok(*v != 0),
            _ => Err(Mismatch::Kind("integer")),
        }
    }
}

impl FromValue for f64 {
    fn from_value(value: &Value) -> Result<Self, Mismatch> {
        match value {
            Value::Real(v) => Ok(*v),
            // Integers widen (a whole average, say); this is only for figures shown on pages.
            #[allow(clippy::cast_precision_loss)]
            Value::Int(v) => Ok(*v as f64),
            _ => Err(Mismatch::Kind("real")),
        }
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, Mismatch> {
        match value {
            Value::Text(v) => Ok(v.clone()),
            _ => Err(Mismatch::Kind("text")),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self, Mismatch> {
        match value {
            Value::Bytes(v) => Ok(v.clone()),
            // SQLite hands back what was stored; text stored where bytes are read is still bytes.
            Value::Text(v) => Ok(v.clone().into_bytes()),
            _ => Err(Mismatch::Kind("bytes")),
        }
    }
}

impl FromValue for JobState {
    fn from_value(value: &Value) -> Result<Self, Mismatch> {
        match value {
            Value::Text(v) => v.parse().map_err(Mismatch::State),
            _ => Err(Mismatch::Kind("text")),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, Mismatch> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// A failed statement, or a row that does not read as asked.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// SQLite refused or failed the statement.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused or failed the statement, or the connection broke.
    #[error(transparent)]
    Postgres(#[from] postgres::Error),
    /// The connection to the database is gone and could not be opened again.
    #[error("the database connection is lost: {0}")]
    Lost(String),
    /// A query that must give a row gave none.
    #[error("the statement gave no row")]
    NoRow,
    /// A column past the row's end was asked for.
    #[error("the row has no column {index}")]
    NoColumn {
        /// The column asked for.
        index: usize,
    },
    /// A column holds another kind of value than the one asked for.
    #[error("column {index} holds {found}, not {want}")]
    ColumnKind {
        /// The column.
        index: usize,
        /// The kind asked for.
        want: &'static str,
        /// The kind found.
        found: &'static str,
    },
    /// A job-state column holds a word that is no state.
    #[error("column {index}")]
    State {
        /// The column.
        index: usize,
        /// The word found.
        #[source]
        source: UnknownJobState,
    },
    /// A PostgreSQL result column of a type the store does not read.
    #[error("PostgreSQL column type `{name}` is not one the store reads")]
    PgType {
        /// The type's name.
        name: String,
    },
    /// An argument that does not fit the type PostgreSQL inferred for its parameter.
    #[error("argument {index} ({given}) does not fit PostgreSQL type `{name}`")]
    PgArg {
        /// The argument, counted from 1 as in the SQL.
        index: usize,
        /// What was given.
        given: &'static str,
        /// The parameter's type.
        name: String,
    },
}

impl SqlError {
    /// Whether the database could not be reached (the connection broke, the server is shutting
    /// down or starting): the call may succeed later, once the store has reconnected.
    pub fn is_unavailable(&self) -> bool {
        match self {
            SqlError::Lost(_) => true,
            SqlError::Postgres(e) => {
                let code = e.code().map(postgres::error::SqlState::code);
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
                let mut io = false;
                while let Some(c) = cause {
                    io |= c.is::<std::io::Error>();
                    cause = c.source();
                }
                e.is_closed()
                    || io
                    || code.is_some_and(|c| c.starts_with("08") || c.starts_with("57P"))
            }
            _ => false,
        }
    }

    /// The SQLite error underneath, if this is one.
    pub fn sqlite(&self) -> Option<&rusqlite::Error> {
        match self {
            SqlError::Sqlite(e) => Some(e),
            _ => None,
        }
    }
}

/// A connection (or a transaction on one) the table files run their SQL through.
pub(crate) trait Sql {
    /// Which SQL it speaks.
    fn dialect(&self) -> Dialect;
    /// Runs a statement; returns how many rows it changed.
    fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<usize, SqlError>;
    /// Runs a query; returns every row.
    fn rows(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError>;
    /// Runs statements without arguments, separated by `;` (tests' edits by hand).
    #[cfg(test)]
    fn execute_batch(&self, sql: &str) -> Result<(), SqlError>;
}

impl dyn Sql + '_ {
    /// The first row of a query, if any.
    pub fn row(&self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Row>, SqlError> {
        Ok(self.rows(sql, args)?.into_iter().next())
    }

    /// The first row of a query, which must give one.
    pub fn one(&self, sql: &str, args: &[Arg<'_>]) -> Result<Row, SqlError> {
        self.row(sql, args)?.ok_or(SqlError::NoRow)
    }

    /// The first row read through `f`; no row is [`SqlError::NoRow`] (see [`Optional`]).
    pub fn query_row<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        f: impl FnOnce(&Row) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        f(&self.one(sql, args)?)
    }

    /// A statement to run with arguments (rusqlite's shape: `prepare_cached(sql)?.query_map(..)`).
    pub fn prepare_cached<'s>(&'s self, sql: &str) -> Result<Statement<'s>, SqlError> {
        Ok(Statement {
            db: self,
            sql: sql.to_owned(),
        })
    }

    /// [`prepare_cached`](Self::prepare_cached): every statement is cached by its text.
    pub fn prepare<'s>(&'s self, sql: &str) -> Result<Statement<'s>, SqlError> {
        self.prepare_cached(sql)
    }
}

/// A statement's text on its connection.
pub(crate) struct Statement<'s> {
    db: &'s dyn Sql,
    sql: String,
}

impl Statement<'_> {
    /// Every row read through `f`, as an iterator of results (collect it).
    pub fn query_map<T>(
        &mut self,
        args: &[Arg<'_>],
        f: impl FnMut(&Row) -> Result<T, SqlError>,
    ) -> Result<std::vec::IntoIter<Result<T, SqlError>>, SqlError> {
        let rows = self.db.rows(&self.sql, args)?;
        Ok(rows.iter().map(f).collect::<Vec<_>>().into_iter())
    }

    /// Its rows, read one by one (`while let Some(row) = rows.next()?`).
    pub fn query(&mut self, args: &[Arg<'_>]) -> Result<Rows, SqlError> {
        Ok(Rows(self.db.rows(&self.sql, args)?.into_iter()))
    }

    /// Its first row read through `f`; no row is [`SqlError::NoRow`].
    pub fn query_row<T>(
        &mut self,
        args: &[Arg<'_>],
        f: impl FnOnce(&Row) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        self.db.query_row(&self.sql, args, f)
    }

    /// Runs it; returns how many rows it changed.
    pub fn execute(&mut self, args: &[Arg<'_>]) -> Result<usize, SqlError> {
        self.db.execute(&self.sql, args)
    }
}

/// The rows of [`Statement::query`].
pub(crate) struct Rows(std::vec::IntoIter<Row>);

impl Rows {
    /// The next row, if any (a `Result` as rusqlite's, though the rows are already read).
    #[allow(clippy::should_implement_trait, clippy::unnecessary_wraps)]
    pub fn next(&mut self) -> Result<Option<Row>, SqlError> {
        Ok(self.0.next())
    }
}

/// `Option` of a row that may be missing: [`SqlError::NoRow`] becomes `None`.
pub(crate) trait Optional<T> {
    fn optional(self) -> Result<Option<T>, SqlError>;
}

impl<T> Optional<T> for Result<T, SqlError> {
    fn optional(self) -> Result<Option<T>, SqlError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(SqlError::NoRow) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

// --- SQLite ---

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Arg::Null => ValueRef::Null,
            Arg::Int(v) => ValueRef::Integer(*v),
            Arg::Text(v) => ValueRef::Text(v.as_bytes()),
            Arg::Bytes(v) => ValueRef::Blob(v.as_ref()),
        }))
    }
}

fn sqlite_row(row: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Row> {
    use rusqlite::types::ValueRef;
    let mut values = Vec::with_capacity(columns);
    for i in 0..columns {
        values.push(match row.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Real(v) => Value::Real(v),
            ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
            ValueRef::Blob(v) => Value::Bytes(v.to_vec()),
        });
    }
    Ok(Row(values))
}

impl Sql for rusqlite::Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<usize, SqlError> {
        let mut stmt = self.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(args))?)
    }

    fn rows(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError> {
        let mut stmt = self.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| sqlite_row(r, columns))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    #[cfg(test)]
    fn execute_batch(&self, sql: &str) -> Result<(), SqlError> {
        Ok(rusqlite::Connection::execute_batch(self, sql)?)
    }
}

// --- PostgreSQL ---

/// The PostgreSQL session a [`Pg`] runs its statements on.
pub(crate) enum PgSession<'c, 't> {
    /// A connection outside any transaction (reads).
    Client(&'c mut postgres::Client),
    /// A transaction (writes).
    Tx(&'c mut postgres::Transaction<'t>),
}

/// A PostgreSQL connection or transaction, with the statements it has prepared (a statement is
/// prepared once per connection, as SQLite's `prepare_cached` does).
pub(crate) struct Pg<'c, 't> {
    session: RefCell<PgSession<'c, 't>>,
    prepared: &'c RefCell<HashMap<String, postgres::Statement>>,
}

impl<'c, 't> Pg<'c, 't> {
    pub fn new(
        session: PgSession<'c, 't>,
        prepared: &'c RefCell<HashMap<String, postgres::Statement>>,
    ) -> Pg<'c, 't> {
        Pg {
            session: RefCell::new(session),
            prepared,
        }
    }

    fn statement(&self, sql: &str) -> Result<postgres::Statement, SqlError> {
        if let Some(stmt) = self.prepared.borrow().get(sql) {
            return Ok(stmt.clone());
        }
        let numbered = numbered(sql);
        let stmt = match &mut *self.session.borrow_mut() {
            PgSession::Client(c) => c.prepare(&numbered)?,
            PgSession::Tx(t) => t.prepare(&numbered)?,
        };
        self.prepared
            .borrow_mut()
            .insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }
}

/// SQLite's `?N` placeholders as PostgreSQL's `$N` (outside quoted text).
pub(crate) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

/// One argument as the Rust type PostgreSQL expects for the parameter's type.
fn pg_arg(index: usize, arg: &Arg<'_>, ty: &Type) -> Result<Box<dyn ToSql + Sync>, SqlError> {
    let misfit = |given| SqlError::PgArg {
        index: index + 1,
        given,
        name: ty.name().to_owned(),
    };
    Ok(match (arg, ty) {
        (Arg::Null, t) if *t == Type::INT8 => Box::new(None::<i64>),
        (Arg::Null, t) if *t == Type::INT4 => Box::new(None::<i32>),
        (Arg::Null, t) if *t == Type::BYTEA => Box::new(None::<Vec<u8>>),
        (Arg::Null, t) if *t == Type::BOOL => Box::new(None::<bool>),
        (Arg::Null, _) => Box::new(None::<String>),
        (Arg::Int(v), t) if *t == Type::INT8 => Box::new(*v),
        (Arg::Int(v), t) if *t == Type::INT4 => {
            Box::new(i32::try_from(*v).map_err(|_| misfit("a 64-bit integer"))?)
        }
        (Arg::Int(v), t) if *t == Type::INT2 => {
            Box::new(i16::try_from(*v).map_err(|_| misfit("a 64-bit integer"))?)
        }
        (Arg::Int(v), t) if *t == Type::BOOL => Box::new(*v != 0),
        (Arg::Int(v), t) if *t == Type::TEXT || *t == Type::VARCHAR => Box::new(v.to_string()),
        (Arg::Int(_), _) => return Err(misfit("an integer")),
        (Arg::Text(v), t) if *t == Type::TEXT || *t == Type::VARCHAR || *t == Type::BPCHAR => {
            Box::new(v.to_string())
        }
        (Arg::Text(v), t) if *t == Type::BYTEA => Box::new(v.as_bytes().to_vec()),
        (Arg::Text(_), _) => return Err(misfit("text")),
        (Arg::Bytes(v), t) if *t == Type::BYTEA => Box::new(v.to_vec()),
        (Arg::Bytes(_), _) => return Err(misfit("bytes")),
    })
}

fn pg_row(row: &postgres::Row) -> Result<Row, SqlError> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(i64::from(v)))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(i64::from(v)))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(i64::from(v)))
        } else if *ty == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(i)?.map(Value::Real)
        } else if *ty == Type::FLOAT4 {
            row.try_get::<_, Option<f32>>(i)?
                .map(|v| Value::Real(f64::from(v)))
        } else if *ty == Type::TEXT
            || *ty == Type::VARCHAR
            || *ty == Type::BPCHAR
            || *ty == Type::NAME
        {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Bytes)
        } else {
            return Err(SqlError::PgType {
                name: ty.name().to_owned(),
            });
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

impl Pg<'_, '_> {
    fn bound(
        &self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<(postgres::Statement, Vec<Box<dyn ToSql + Sync>>), SqlError> {
        let stmt = self.statement(sql)?;
        let bound = args
            .iter()
            .zip(stmt.params())
            .enumerate()
            .map(|(i, (arg, ty))| pg_arg(i, arg, ty))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((stmt, bound))
    }
}

fn refs(bound: &[Box<dyn ToSql + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    bound.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect()
}

impl Sql for Pg<'_, '_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<usize, SqlError> {
        let (stmt, bound) = self.bound(sql, args)?;
        let args = refs(&bound);
        let changed = match &mut *self.session.borrow_mut() {
            PgSession::Client(c) => c.execute(&stmt, &args)?,
            PgSession::Tx(t) => t.execute(&stmt, &args)?,
        };
        Ok(usize::try_from(changed).unwrap_or(usize::MAX))
    }

    fn rows(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, SqlError> {
        let (stmt, bound) = self.bound(sql, args)?;
        let args = refs(&bound);
        let rows = match &mut *self.session.borrow_mut() {
            PgSession::Client(c) => c.query(&stmt, &args)?,
            PgSession::Tx(t) => t.query(&stmt, &args)?,
        };
        rows.iter().map(pg_row).collect()
    }

    #[cfg(test)]
    fn execute_batch(&self, sql: &str) -> Result<(), SqlError> {
        match &mut *self.session.borrow_mut() {
            PgSession::Client(c) => c.batch_execute(sql)?,
            PgSession::Tx(t) => t.batch_execute(sql)?,
        }
        Ok(())
    }
}

impl fmt::Debug for Pg<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pg")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_quoted_text() {
        assert_eq!(
            numbered("SELECT ?1, '?2', ?12 WHERE a = ?3"),
            "SELECT $1, '?2', $12 WHERE a = $3"
        );
        assert_eq!(numbered("SELECT 'it''s ?1', ?2"), "SELECT 'it''s ?1', $2");
    }

    #[test]
    fn sqlite_rows_read_every_kind_and_name_a_mismatch() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let db: &dyn Sql = &conn;
        db.execute_batch("CREATE TABLE t (i INTEGER, s TEXT, b BLOB, n INTEGER)")
            .unwrap();
        let changed = db
            .execute(
                "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
                args![7, "queued", b"\x00\x01"[..], None::<i64>],
            )
            .unwrap();
        assert_eq!(changed, 1);
        let row = db.one("SELECT i, s, b, n FROM t", args![]).unwrap();
        assert_eq!(row.get::<i64>(0).unwrap(), 7);
        assert_eq!(row.get::<JobState>(1).unwrap(), JobState::Queued);
        assert_eq!(row.get::<Vec<u8>>(2).unwrap(), vec![0, 1]);
        assert_eq!(row.get::<Option<i64>>(3).unwrap(), None);
        let err = row.get::<i64>(1).unwrap_err();
        assert_eq!(err.to_string(), "column 1 holds text, not integer");
        assert!(matches!(
            row.get::<i64>(9),
            Err(SqlError::NoColumn { index: 9 })
        ));
        db.execute("UPDATE t SET s = 'lost'", args![]).unwrap();
        let err = db
            .one("SELECT s FROM t", args![])
            .unwrap()
            .get::<JobState>(0);
        let chain = dispatch_util::error_chain(&err.unwrap_err());
        assert!(chain.contains("unknown job state `lost`"), "{chain}");
        assert!(db
            .row("SELECT i FROM t WHERE i = ?1", args![8])
            .unwrap()
            .is_none());
        assert!(matches!(
            db.one("SELECT i FROM t WHERE i = ?1", args![8]),
            Err(SqlError::NoRow)
        ));
    }
}
