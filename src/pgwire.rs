//! How pgha's SQL sessions reach a server: TCP or a unix socket, TLS as
//! `[postgres] sslmode` asks (libpq's modes and meanings), and a guard that
//! refuses to answer a cleartext or md5 password request unless that is safe.
//!
//! pgha negotiates TLS itself (the `SSLRequest` packet, then rustls) and
//! hands tokio-postgres a stream that is already encrypted, so one code path
//! serves the session and the query cancel request alike.
//!
//! # Why a guard on the stream
//!
//! tokio-postgres answers whatever password request the server sends with
//! the password it was given, and does not say which method was asked for
//! (it has no `require_auth`; `channel_binding = require` would also refuse
//! `trust` and plain SCRAM, which most pg_hba.conf files use). Whoever binds
//! a dead primary's address could ask for a cleartext password and collect
//! the superuser's. So every stream pgha opens reads the server's
//! authentication requests as they arrive ([`AuthWatch`]): a request for a
//! cleartext (`AuthenticationCleartextPassword`) or md5 password fails the
//! read before tokio-postgres sees it, and the password is never sent,
//! unless the stream is a unix socket, or TLS whose certificate chain was
//! verified against `sslrootcert` (then the peer is the server the CA
//! vouches for), or `[postgres] allow_cleartext_password = true`. SCRAM
//! never reveals the password and is always answered.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{PostgresConfig, SslMode};
use crate::files;

/// `[postgres]` TLS and password settings, as every connection applies them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`: PEM file of the CA(s) that sign the servers' certificates.
    pub rootcert: Option<PathBuf>,
    /// `sslcert` and `sslkey`: a client certificate, when pg_hba.conf asks
    /// for one (`cert` or `clientcert=verify-full`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `allow_cleartext_password`.
    pub allow_cleartext_password: bool,
}

impl TlsSettings {
    pub fn from_config(cfg: &PostgresConfig) -> TlsSettings {
        TlsSettings {
            mode: cfg.sslmode,
            rootcert: cfg.sslrootcert.clone(),
            cert: cfg.sslcert.clone(),
            key: cfg.sslkey.clone(),
            allow_cleartext_password: cfg.allow_cleartext_password,
        }
    }
}

/// Why no stream could be opened. `answered`: something at the address
/// spoke (refused TLS, failed the handshake), as in
/// [`crate::postgres::PgError::Connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub message: String,
    pub answered: bool,
}

impl WireError {
    fn answered(message: impl Into<String>) -> WireError {
        WireError {
            message: message.into(),
            answered: true,
        }
    }

    /// A failure on pgha's side (a certificate file, a server name) before
    /// the server was asked: no proof that it is dead, so it counts as
    /// "answered" (alive, unknown), as a broken password file does.
    fn local(message: impl Into<String>) -> WireError {
        WireError {
            message: message.into(),
            answered: true,
        }
    }

    fn io(e: io::Error) -> WireError {
        let answered = !no_answer(e.kind());
        WireError {
            message: e.to_string(),
            answered,
        }
    }
}

/// Whether a socket error means nothing answered at the address (refused,
/// unreachable, no reply in time, no such socket file): the only I/O errors
/// that are no sign of a live server.
pub fn no_answer(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::TimedOut
            | io::ErrorKind::NotFound
    )
}

/// Whether a cleartext or md5 password may be sent to `peer`.
pub fn cleartext_allowed(tls: &TlsSettings, peer: Peer) -> bool {
    tls.allow_cleartext_password || matches!(peer, Peer::Local | Peer::Verified)
}

/// How far the peer of a stream is known to be who it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A unix socket: the local server, guarded by file permissions.
    Local,
    /// TLS with the certificate chain verified against `sslrootcert`.
    Verified,
    /// TLS without verification (`sslmode = prefer/require` without a CA).
    Unverified,
    /// No TLS.
    Plain,
}

impl Peer {
    fn describe(self) -> &'static str {
        match self {
            Peer::Local => "a unix socket",
            Peer::Verified => "verified tls",
            Peer::Unverified => "tls whose certificate is not verified",
            Peer::Plain => "a connection without tls",
        }
    }
}

enum Inner {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// A connection to a server, TLS or not, with the password guard.
pub struct PgStream {
    inner: Inner,
    peer: Peer,
    watch: AuthWatch,
}

impl PgStream {
    fn new(inner: Inner, peer: Peer, tls: &TlsSettings) -> PgStream {
        PgStream {
            inner,
            peer,
            watch: AuthWatch::new(cleartext_allowed(tls, peer)),
        }
    }
}

/// Opens a stream to the server at `host:port` (a `host` starting with `/`
/// is a unix socket directory, where TLS does not apply, as in libpq) and
/// negotiates TLS as `tls.mode` says. Unbounded: the caller bounds it with
/// `connect_timeout` together with the authentication that follows.
pub async fn open(host: &str, port: u16, tls: &TlsSettings) -> Result<PgStream, WireError> {
    if host.starts_with('/') {
        let path = Path::new(host).join(format!(".s.PGSQL.{port}"));
        let s = UnixStream::connect(&path).await.map_err(WireError::io)?;
        return Ok(PgStream::new(Inner::Unix(s), Peer::Local, tls));
    }
    let mut tcp = TcpStream::connect((host, port))
        .await
        .map_err(WireError::io)?;
    if tls.mode == SslMode::Disable {
        return Ok(PgStream::new(Inner::Plain(tcp), Peer::Plain, tls));
    }
    let config = client_config(tls)?;
    // SSLRequest: length 8, code 80877103; the server answers one byte.
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .map_err(WireError::io)?;
    match tcp.read_u8().await.map_err(WireError::io)? {
        b'S' => {}
        b'N' if tls.mode == SslMode::Prefer => {
            return Ok(PgStream::new(Inner::Plain(tcp), Peer::Plain, tls));
        }
        b'N' => {
            return Err(WireError::answered(format!(
                "the server does not offer tls (ssl = off in its postgresql.conf) but [postgres] sslmode = \"{}\" requires it: turn ssl on there, with a certificate for {host}",
                tls.mode
            )));
        }
        other => {
            return Err(WireError::answered(format!(
                "answered the tls request with byte {other:#04x}, not 'S' or 'N': not a postgresql server"
            )));
        }
    }
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| WireError::local(format!("{host} cannot be a tls server name: {e}")))?;
    let peer = if tls.rootcert.is_some() {
        Peer::Verified
    } else {
        Peer::Unverified
    };
    match TlsConnector::from(config).connect(name, tcp).await {
        Ok(s) => Ok(PgStream::new(Inner::Tls(Box::new(s)), peer, tls)),
        // libpq's prefer: a failed handshake falls back to a plain session.
        Err(_) if tls.mode == SslMode::Prefer && tls.rootcert.is_none() => {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(WireError::io)?;
            Ok(PgStream::new(Inner::Plain(tcp), Peer::Plain, tls))
        }
        Err(e) => Err(WireError::answered(format!(
            "tls handshake failed: {e}{}",
            handshake_hint(&e, host, tls)
        ))),
    }
}

fn handshake_hint(e: &io::Error, host: &str, tls: &TlsSettings) -> String {
    let m = e.to_string();
    let root = tls
        .rootcert
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if m.contains("NotValidForName") || m.contains("not valid for name") {
        format!(
            " (the server's certificate does not name {host}: give it a subjectAltName of {host}, or use sslmode = \"verify-ca\")"
        )
    } else if m.contains("UnknownIssuer") || m.contains("issuer") {
        format!(" (the server's certificate is not signed by a CA in sslrootcert {root})")
    } else if m.contains("Expired") || m.contains("NotValidYet") {
        " (the server's certificate is outside its validity dates)".into()
    } else {
        String::new()
    }
}

/// The rustls configuration `tls` asks for. Read at every connect: a renewed
/// CA file is used without a restart, and a broken one fails the connect
/// with its name.
fn client_config(tls: &TlsSettings) -> Result<Arc<ClientConfig>, WireError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| WireError::local(format!("tls: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match &tls.rootcert {
        // libpq: with a root certificate, require (and prefer) verify the
        // chain as verify-ca does.
        Some(path) => {
            let roots = read_roots(path)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| {
                        WireError::local(format!("sslrootcert {}: {e}", path.display()))
                    })?;
            if tls.mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(Lenient {
                    chain: Some(webpki),
                    provider: provider.clone(),
                })
            }
        }
        None if matches!(tls.mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
            return Err(WireError::local(format!(
                "[postgres] sslmode = \"{}\" needs sslrootcert, the CA that signs the servers' certificates",
                tls.mode
            )));
        }
        None => Arc::new(Lenient {
            chain: None,
            provider: provider.clone(),
        }),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert, "sslcert")?;
            let key = read_key(key)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| WireError::local(format!("sslcert {}: {e}", cert.display())))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read_pem(path: &Path, key: &str) -> Result<Vec<u8>, WireError> {
    files::read_regular(path, files::MAX_CONFIG_BYTES)
        .map_err(|e| WireError::local(format!("[postgres] {key} {}: {e}", path.display())))
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, WireError> {
    let pem = read_pem(path, key)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| WireError::local(format!("[postgres] {key} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(WireError::local(format!(
            "[postgres] {key} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_roots(path: &Path) -> Result<RootCertStore, WireError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(path, "sslrootcert")? {
        roots.add(c).map_err(|e| {
            WireError::local(format!("[postgres] sslrootcert {}: {e}", path.display()))
        })?;
    }
    Ok(roots)
}

/// The client key, refused when others may read it (libpq's rule: 0600, or
/// 0640 when root owns it).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, WireError> {
    use std::os::unix::fs::MetadataExt as _;
    let pem = read_pem(path, "sslkey")?;
    if let Ok(meta) = std::fs::metadata(path) {
        let others = if meta.uid() == 0 { 0o037 } else { 0o077 };
        if meta.mode() & others != 0 {
            return Err(WireError::local(format!(
                "[postgres] sslkey {} has mode {:04o}: others may read it; chmod 0600 it",
                path.display(),
                meta.mode() & 0o7777
            )));
        }
    }
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| WireError::local(format!("[postgres] sslkey {}: {e}", path.display())))
}

/// Below verify-full: `verify-ca` (with `chain`): the chain must lead to
/// `sslrootcert`, the name is not checked; `prefer`/`require` without
/// `sslrootcert` (no `chain`): encryption against eavesdroppers only, as in
/// libpq. The handshake signature is checked either way.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // The name is checked last, after the chain.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// ---------------------------------------------------------------------------
// The password guard

/// A password request the guard refused: the authentication code the server
/// sent (3 cleartext, 5 md5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub i32);

/// Reads the server's messages up to `AuthenticationOk` (`R`, code 0) and
/// refuses a request for a cleartext (`R`, 3) or md5 (`R`, 5) password when
/// not `allow`ed. Pure: fed the bytes as they are read; after
/// authentication it costs nothing.
#[derive(Debug, Clone)]
pub struct AuthWatch {
    allow: bool,
    /// The current message's first bytes: type, length, for `R` its code.
    head: Vec<u8>,
    /// Bytes of the current message's body still to skip.
    skip: usize,
    done: bool,
}

impl AuthWatch {
    pub fn new(allow: bool) -> AuthWatch {
        AuthWatch {
            allow,
            head: Vec::with_capacity(9),
            skip: 0,
            done: false,
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Refused> {
        while !data.is_empty() && !self.done {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let need = if self.head.first() == Some(&b'R') {
                9
            } else {
                5
            };
            let take = (need - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.head.len() < need {
                return Ok(()); // the rest comes with the next read
            }
            if self.head[0] == b'R' && self.head.len() < 9 {
                continue; // and its code
            }
            let len = u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]])
                as usize;
            if self.head[0] == b'R' {
                if len < 8 {
                    self.done = true; // malformed: tokio-postgres will say so
                    break;
                }
                let code =
                    i32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]]);
                match code {
                    0 => self.done = true,
                    3 | 5 if !self.allow => return Err(Refused(code)),
                    _ => {}
                }
                self.skip = len - 8;
            } else {
                // NegotiateProtocolVersion, an error, a notice: skip it.
                if len < 4 {
                    self.done = true;
                    break;
                }
                self.skip = len - 4;
            }
            self.head.clear();
        }
        Ok(())
    }
}

fn refusal(code: i32, peer: Peer) -> io::Error {
    let what = if code == 3 { "a cleartext" } else { "an md5" };
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "the server asked for {what} password over {}: refused, the password was not sent (an impostor on this address would collect it); \
             use scram-sha-256 in its pg_hba.conf, or set [postgres] sslmode = \"verify-full\" with sslrootcert, \
             or allow_cleartext_password = true in pgha.toml",
            peer.describe()
        ),
    )
}

impl AsyncRead for PgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = match &mut this.inner {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_read(cx, buf),
        };
        if let Poll::Ready(Ok(())) = &r
            && let Err(Refused(code)) = this.watch.feed(&buf.filled()[before..])
        {
            buf.set_filled(before);
            return Poll::Ready(Err(refusal(code, this.peer)));
        }
        r
    }
}

impl AsyncWrite for PgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Inner::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Inner::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&((8 + extra.len()) as u32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(extra);
        m
    }

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Feeds `data` in pieces of `step` bytes.
    fn feed(allow: bool, data: &[u8], step: usize) -> Result<(), Refused> {
        let mut w = AuthWatch::new(allow);
        data.chunks(step).try_for_each(|c| w.feed(c))
    }

    #[test]
    fn cleartext_and_md5_refused_unless_allowed() {
        let clear = auth(3, &[]);
        let md5 = auth(5, b"salt");
        for step in [1, 2, 3, 5, 100] {
            assert_eq!(feed(false, &clear, step), Err(Refused(3)), "step {step}");
            assert_eq!(feed(false, &md5, step), Err(Refused(5)), "step {step}");
            assert_eq!(feed(true, &clear, step), Ok(()));
            assert_eq!(feed(true, &md5, step), Ok(()));
        }
    }

    #[test]
    fn scram_and_trust_pass_and_the_session_after_is_not_read() {
        let mut s = auth(10, b"SCRAM-SHA-256\0\0");
        s.extend(auth(11, b"r=abc,s=salt,i=4096"));
        s.extend(auth(12, b"v=proof"));
        s.extend(auth(0, &[]));
        // After AuthenticationOk anything goes, even bytes that look like a
        // cleartext request (a row value, say).
        s.extend(auth(3, &[]));
        for step in [1, 4, 7, 1000] {
            assert_eq!(feed(false, &s, step), Ok(()), "step {step}");
        }
        let mut trust = auth(0, &[]);
        trust.extend(msg(b'S', b"server_version\x0015\0"));
        assert_eq!(feed(false, &trust, 1), Ok(()));
    }

    #[test]
    fn other_messages_before_auth_are_skipped() {
        // A NegotiateProtocolVersion, then a cleartext request: still seen.
        let mut s = msg(b'v', &[0, 0, 0, 0, 0, 0, 0, 0]);
        s.extend(auth(3, &[]));
        assert_eq!(feed(false, &s, 3), Err(Refused(3)));
        // An error instead of a request: nothing to refuse.
        assert_eq!(
            feed(false, &msg(b'E', b"SFATAL\0Mno pg_hba.conf entry\0\0"), 2),
            Ok(())
        );
    }

    #[test]
    fn malformed_lengths_stop_the_watch() {
        assert_eq!(feed(false, &[b'R', 0, 0, 0, 2, 0, 0, 0, 3], 1), Ok(()));
    }

    #[test]
    fn verify_modes_need_a_root_certificate() {
        let tls = TlsSettings {
            mode: SslMode::VerifyFull,
            ..TlsSettings::default()
        };
        let e = client_config(&tls).unwrap_err();
        assert!(e.message.contains("needs sslrootcert"), "{e:?}");
        assert!(
            e.answered,
            "a local failure is no proof that the server is dead"
        );
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not pem\n").unwrap();
        let tls = TlsSettings {
            rootcert: Some(bad.clone()),
            ..tls
        };
        let e = client_config(&tls).unwrap_err();
        assert!(
            e.message.contains("sslrootcert") && e.message.contains(&bad.display().to_string()),
            "{e:?}"
        );
        // prefer and require without a CA build (no verification).
        for mode in [SslMode::Prefer, SslMode::Require] {
            let tls = TlsSettings {
                mode,
                ..TlsSettings::default()
            };
            assert!(client_config(&tls).is_ok());
        }
    }

    #[test]
    fn only_local_and_verified_peers_get_cleartext() {
        let mut tls = TlsSettings::default();
        assert!(cleartext_allowed(&tls, Peer::Local));
        assert!(cleartext_allowed(&tls, Peer::Verified));
        assert!(!cleartext_allowed(&tls, Peer::Unverified));
        assert!(!cleartext_allowed(&tls, Peer::Plain));
        tls.allow_cleartext_password = true;
        assert!(cleartext_allowed(&tls, Peer::Plain));
    }
}
