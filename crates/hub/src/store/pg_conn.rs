//! Connections to PostgreSQL: what a store URL asks for ([`PgTarget`]: the `postgres` crate's
//! settings and the authorities TLS trusts), the hub's own session settings, and [`PgConn`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

use super::sql::{Pg, PgSession, Sql};
use crate::error::HubError;

/// A PostgreSQL database to connect to, from a store URL.
#[derive(Clone)]
pub(crate) struct PgTarget {
    /// The URL's settings, as the `postgres` crate takes them.
    config: postgres::Config,
    /// The names of the settings the URL gives (its query's keys): the hub's own session
    /// settings fill in only the others ([`session_config`]).
    given: std::collections::BTreeSet<String>,
    /// The PEM file of the authorities the server's certificate must chain to (`sslrootcert`);
    /// None: the web's public root authorities (webpki-roots).
    root_cert: Option<PathBuf>,
}

impl PgTarget {
    /// From a `postgres://` (or `postgresql://`) URL. Besides what the `postgres` crate reads,
    /// it takes libpq's `sslrootcert=<file>` (`system`: the public authorities) and the
    /// `sslmode`s `verify-ca` and `verify-full`, which mean `require` here: a certificate is
    /// always checked, its chain and its name. With `sslrootcert` TLS is required (no `sslmode`
    /// means `require`; `prefer` or `disable` beside it is refused), so that no one on the path
    /// can make the hub go on in plain text. A `sslrootcert` file is read now, so that a missing
    /// or bad one stops the hub at start. The reason of an error never repeats the URL, which
    /// may hold a password.
    pub fn parse(url: &str) -> Result<PgTarget, String> {
        let url = url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("must be a postgres:// URL (unset it to keep the SQLite store)".into());
        }
        // The user and password run to the first `@` (as the `postgres` crate reads them, so a
        // `?` in a password is not the query's start); the query starts at the `?` after it.
        let after_scheme = url.find("://").map_or(0, |i| i + 3);
        let authority_from = url[after_scheme..]
            .find('@')
            .map_or(after_scheme, |at| after_scheme + at + 1);
        let (base, query) = match url[authority_from..].find('?') {
            Some(q) => (&url[..authority_from + q], &url[authority_from + q + 1..]),
            None => (url, ""),
        };
        let mut kept = Vec::new();
        let mut given = std::collections::BTreeSet::new();
        let mut root_cert = None;
        let mut pinned = false;
        let mut mode = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            given.insert(key.to_owned());
            match (key, value) {
                ("sslrootcert", "system") => {
                    root_cert = None;
                    pinned = true;
                }
                ("sslrootcert", file) => {
                    let file = percent_encoding::percent_decode_str(file)
                        .decode_utf8()
                        .map_err(|_| "has a `sslrootcert` that is not UTF-8".to_owned())?;
                    if file.is_empty() {
                        return Err("has an empty `sslrootcert` (give a PEM file)".into());
                    }
                    root_cert = Some(PathBuf::from(file.as_ref()));
                    pinned = true;
                }
                ("sslmode", "verify-ca" | "verify-full") => mode = Some("require"),
                ("sslmode", other) => mode = Some(other),
                _ => kept.push(pair),
            }
        }
        match (pinned, mode) {
            (true, Some("disable" | "prefer")) => {
                return Err(
                    "has `sslrootcert` with an `sslmode` that lets the server answer \
                            without TLS (use `require`, `verify-ca` or `verify-full`)"
                        .into(),
                )
            }
            (true, None) => mode = Some("require"),
            _ => {}
        }
        let ssl_mode = mode.map(|m| format!("sslmode={m}"));
        kept.extend(ssl_mode.as_deref());
        let rebuilt = match kept.is_empty() {
            true => base.to_owned(),
            false => format!("{base}?{}", kept.join("&")),
        };
        let config: postgres::Config = rebuilt
            .parse()
            .map_err(|e: postgres::Error| format!("is not a valid PostgreSQL URL ({e})"))?;
        if config.get_dbname().is_none() {
            return Err("must name the database (postgres://user@host/<database>)".into());
        }
        if let Some(file) = &root_cert {
            authorities(file)?;
        }
        Ok(PgTarget {
            config,
            given,
            root_cert,
        })
    }

    /// The URL's settings.
    pub fn config(&self) -> &postgres::Config {
        &self.config
    }

    /// TLS as this target asks for it: the server's certificate must chain to the authorities
    /// of `sslrootcert` (read again at each connection, so a renewed file is used without a
    /// restart) or else the web's public ones, and name the host. The URL's `sslmode` decides
    /// whether TLS is used: `require` refuses a server without it, `prefer` (the default) uses
    /// it when the server offers it, and `disable` never does.
    fn tls(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, HubError> {
        let roots = match &self.root_cert {
            Some(file) => authorities(file).map_err(|reason| HubError::PgTls { reason })?,
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HubError::PgTls {
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

/// The authorities in the PEM file `file` (`sslrootcert`); an error names the file.
fn authorities(file: &Path) -> Result<rustls::RootCertStore, String> {
    let named = || format!("sslrootcert `{}`", file.display());
    let pem = std::fs::read(file).map_err(|e| format!("{}: cannot be read ({e})", named()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: is not PEM ({e})", named()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: holds a certificate TLS cannot use ({e})", named()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: holds no PEM certificate", named()));
    }
    Ok(roots)
}

/// How long a connection attempt to PostgreSQL may take before it is an error.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The server ends a session of ours that sits this long inside a transaction waiting for us
/// (`idle_in_transaction_session_timeout`, ms). A write group holds the writers' advisory lock,
/// and with it every replica's writes, until its transaction ends; a replica cut off from the
/// database mid-group without its connection closing (a network partition, a stalled proxy)
/// would otherwise hold it until the server's TCP keepalive gives up, hours later. Our own
/// transactions never wait on us between statements for more than moments.
const PG_IDLE_IN_TRANSACTION_MS: u32 = 30_000;

/// How long data the hub sent may go unacknowledged by the database's machine before the
/// connection is dropped (`TCP_USER_TIMEOUT`), and how soon an idle connection is probed
/// (keepalive after this long less the probes' time, then every [`PG_PROBE_EVERY`], given up
/// after [`PG_PROBES`] unanswered probes). Without them a replica cut off from its database (a
/// network partition, a database machine gone without closing its connections) waits in a call
/// until the kernel gives up, about 15 minutes with data in flight and 2 hours without; with
/// them the call fails within about 30 s, the API answers 503 and the connection is made again.
/// A slow query is not cut: the database's machine acknowledges while the query runs.
const PG_LINK_TIMEOUT: Duration = Duration::from_secs(30);
const PG_PROBE_EVERY: Duration = Duration::from_secs(5);
const PG_PROBES: u32 = 3;

/// The target's settings, and the hub's session settings wherever the store URL does not give
/// its own (a setting the URL names is kept, also `0`, which means the system's default): the
/// connect timeout, the link timeouts ([`PG_LINK_TIMEOUT`]) and
/// `idle_in_transaction_session_timeout`.
fn session_config(target: &PgTarget) -> postgres::Config {
    let mut cfg = target.config.clone();
    let unset = |key: &str| !target.given.contains(key);
    if unset("connect_timeout") {
        cfg.connect_timeout(PG_CONNECT_TIMEOUT);
    }
    if unset("tcp_user_timeout") {
        cfg.tcp_user_timeout(PG_LINK_TIMEOUT);
    }
    if unset("keepalives_idle") {
        cfg.keepalives_idle(PG_LINK_TIMEOUT - PG_PROBE_EVERY * PG_PROBES);
    }
    if unset("keepalives_interval") {
        cfg.keepalives_interval(PG_PROBE_EVERY);
    }
    if unset("keepalives_retries") {
        cfg.keepalives_retries(PG_PROBES);
    }
    let given = cfg.get_options().unwrap_or_default();
    if !given.contains("idle_in_transaction_session_timeout") {
        let ours = format!("-c idle_in_transaction_session_timeout={PG_IDLE_IN_TRANSACTION_MS}");
        cfg.options(format!("{given} {ours}").trim_start());
    }
    cfg
}

/// A PostgreSQL connection with the statements prepared on it.
pub(crate) struct PgConn {
    pub client: postgres::Client,
    pub prepared: RefCell<HashMap<String, postgres::Statement>>,
}

impl PgConn {
    /// Connects to `target`, over TLS as its URL asks ([`PgTarget::tls`]).
    pub fn connect(target: &PgTarget) -> Result<PgConn, HubError> {
        let client = session_config(target)
            .connect(target.tls()?)
            .map_err(HubError::store("connect to PostgreSQL"))?;
        Ok(PgConn {
            client,
            prepared: RefCell::new(HashMap::new()),
        })
    }

    /// A connection whose transactions cannot write, as SQLite's read-only readers.
    pub fn read_only(target: &PgTarget) -> Result<PgConn, HubError> {
        let mut conn = PgConn::connect(target)?;
        conn.client
            .batch_execute("SET default_transaction_read_only = on")
            .map_err(HubError::store("make a read connection read-only"))?;
        Ok(conn)
    }

    /// Runs `f` on the connection outside any transaction.
    pub fn with<T>(
        &mut self,
        f: impl FnOnce(&dyn Sql) -> Result<T, HubError>,
    ) -> Result<T, HubError> {
        let pg = Pg::new(PgSession::Client(&mut self.client), &self.prepared);
        f(&pg)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;

    use super::*;

    /// A server that answers the client's TLS request with `N` (no TLS, as a PostgreSQL server
    /// without `ssl` does) and hands back the next bytes the client sends.
    fn server_without_tls() -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("postgres://u@{}/d", listener.local_addr().unwrap());
        let served = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 8];
            stream.read_exact(&mut request).unwrap();
            // Length 8, then the SSLRequest code 80877103.
            assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47]);
            stream.write_all(b"N").unwrap();
            let mut next = [0u8; 8];
            let n = stream.read(&mut next).unwrap_or(0);
            next[..n].to_vec()
        });
        (url, served)
    }

    #[test]
    fn sslmode_require_refuses_a_server_without_tls_and_prefer_goes_on_without() {
        let (url, served) = server_without_tls();
        let strict = PgTarget::parse(&format!("{url}?sslmode=require")).unwrap();
        let err = PgConn::connect(&strict)
            .err()
            .expect("no TLS, no connection");
        let chain = dispatch_util::error_chain(&err);
        assert!(chain.contains("TLS"), "{chain}");
        assert!(
            served.join().unwrap().is_empty(),
            "nothing after the refusal"
        );

        let (url, served) = server_without_tls();
        let default = PgTarget::parse(&url).unwrap();
        // The server hangs up after its `N`; what matters is what the client sent next.
        let _ = PgConn::connect(&default);
        let next = served.join().unwrap();
        // A plain StartupMessage: a length, then protocol 3.0.
        assert_eq!(next.get(4..8), Some(&[0, 3, 0, 0][..]), "{next:?}");
    }

    /// The throw-away server of `cargo xtask` speaks TLS with a certificate of its own authority
    /// (the file in `DISPATCH_TEST_POSTGRES_CA`): trusted through `sslrootcert`, refused without.
    #[test]
    fn a_private_authority_is_trusted_through_sslrootcert() {
        let (Some(url), Some(ca)) = (
            dispatch_test_support::postgres_url(),
            dispatch_test_support::postgres_ca(),
        ) else {
            return;
        };
        let plain = url.replace("sslmode=disable", "").replace("?&", "?");
        let sep = if plain.contains('?') { '&' } else { '?' };
        let ca_param: String = percent_encoding::utf8_percent_encode(
            &ca.display().to_string(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .collect();
        let trusted = PgTarget::parse(&format!(
            "{plain}{sep}sslmode=verify-full&sslrootcert={ca_param}"
        ))
        .unwrap();
        let mut conn = PgConn::connect(&trusted).unwrap();
        let row = conn
            .client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .unwrap();
        assert!(row.get::<_, bool>(0), "the session is encrypted");

        let public_only = PgTarget::parse(&format!("{plain}{sep}sslmode=require")).unwrap();
        let err = PgConn::connect(&public_only)
            .err()
            .expect("a certificate of an unknown authority is refused");
        let chain = dispatch_util::error_chain(&err);
        assert!(chain.to_lowercase().contains("certificate"), "{chain}");
    }

    #[test]
    fn sslrootcert_and_the_verify_modes_are_read_from_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no such.pem");
        let encoded = missing.display().to_string().replace(' ', "%20");
        let reason = PgTarget::parse(&format!("postgres://u:hunter2@db/d?sslrootcert={encoded}"))
            .err()
            .unwrap();
        assert!(
            reason.contains("no such.pem") && reason.contains("cannot be read"),
            "{reason}"
        );
        assert!(!reason.contains("hunter2"), "{reason}");

        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let reason = PgTarget::parse(&format!(
            "postgres://u@db/d?sslrootcert={}",
            not_pem.display()
        ))
        .err()
        .unwrap();
        assert!(reason.contains("holds no PEM certificate"), "{reason}");

        for mode in ["verify-ca", "verify-full"] {
            let target = PgTarget::parse(&format!(
                "postgres://u@db/d?sslmode={mode}&sslrootcert=system"
            ))
            .unwrap();
            assert_eq!(
                target.config().get_ssl_mode(),
                postgres::config::SslMode::Require
            );
            assert_eq!(target.root_cert, None);
        }
    }

    #[test]
    fn the_hubs_session_settings_fill_in_what_the_url_leaves_out() {
        let bare = PgTarget::parse("postgres://u@db/d").unwrap();
        let ours = session_config(&bare);
        assert_eq!(ours.get_connect_timeout(), Some(&PG_CONNECT_TIMEOUT));
        assert_eq!(ours.get_tcp_user_timeout(), Some(&PG_LINK_TIMEOUT));
        assert_eq!(ours.get_keepalives_idle(), Duration::from_secs(15));
        assert_eq!(ours.get_keepalives_interval(), Some(PG_PROBE_EVERY));
        assert_eq!(ours.get_keepalives_retries(), Some(PG_PROBES));
        assert_eq!(
            ours.get_options(),
            Some("-c idle_in_transaction_session_timeout=30000")
        );
        // What the URL says wins.
        let url = "postgres://u@db/d?connect_timeout=3&tcp_user_timeout=7&keepalives_idle=7200\
                   &keepalives_interval=20&keepalives_retries=9\
                   &options=-c%20idle_in_transaction_session_timeout%3D5000";
        let given = PgTarget::parse(url).unwrap();
        let kept = session_config(&given);
        assert_eq!(kept.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(kept.get_tcp_user_timeout(), Some(&Duration::from_secs(7)));
        assert_eq!(kept.get_keepalives_idle(), Duration::from_secs(7200));
        assert_eq!(
            kept.get_keepalives_interval(),
            Some(Duration::from_secs(20))
        );
        assert_eq!(kept.get_keepalives_retries(), Some(9));
        assert_eq!(
            kept.get_options(),
            Some("-c idle_in_transaction_session_timeout=5000")
        );
        // `0` (the system's default, as in libpq) is kept too, though the `postgres` crate
        // drops it while reading.
        let zero =
            PgTarget::parse("postgres://u@db/d?tcp_user_timeout=0&connect_timeout=0").unwrap();
        let zero = session_config(&zero);
        assert_eq!(zero.get_tcp_user_timeout(), None);
        assert_eq!(zero.get_connect_timeout(), None);
    }

    #[test]
    fn sslrootcert_requires_tls_and_a_question_mark_in_the_password_is_no_query() {
        for url in [
            "postgres://u@db/d?sslrootcert=system",
            "postgres://u@db/d?sslrootcert=system&sslmode=verify-full",
        ] {
            let target = PgTarget::parse(url).unwrap();
            assert_eq!(
                target.config().get_ssl_mode(),
                postgres::config::SslMode::Require,
                "{url}"
            );
        }
        for mode in ["disable", "prefer"] {
            let reason = PgTarget::parse(&format!(
                "postgres://u:pw@db/d?sslmode={mode}&sslrootcert=system"
            ))
            .err()
            .unwrap();
            assert!(
                reason.contains("without TLS") && !reason.contains("pw"),
                "{reason}"
            );
        }
        let target = PgTarget::parse("postgres://u:p?w@db/d?sslmode=verify-full").unwrap();
        assert_eq!(target.config().get_password(), Some(&b"p?w"[..]));
        assert_eq!(
            target.config().get_ssl_mode(),
            postgres::config::SslMode::Require
        );
        assert_eq!(target.config().get_dbname(), Some("d"));
    }
}
