//! The journal's connections: a few, used in turn and made again when one breaks,
//! each over TLS as the URL's `sslmode` says (rustls, the system's roots and any given).

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::schema::sql;
use crate::journal::JournalError;

/// Where the database is and how to reach it.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) tls: MakeRustlsConnect,
    pub(super) url: String,
}

impl Target {
    /// A new connection, its I/O running beside the journal, asking for synchronous
    /// commits.
    pub(super) async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&self.url, self.tls.clone()).await?;
        // The connection's I/O ends when the client is dropped or the server goes away
        // (then the next call connects again).
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client.batch_execute("SET synchronous_commit = on").await?;
        Ok(client)
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: it stays out of debug output.
        f.debug_struct("Target").finish_non_exhaustive()
    }
}

/// What the journal's clones share: where the database is, and a few connections for
/// every statement but the group writer's, used in turn (queries from many tasks are
/// pipelined on each), each made again if it breaks.
pub(super) struct Shared {
    pub(super) target: Target,
    pub(super) namespace: String,
    pub(super) connections: Vec<tokio::sync::Mutex<Option<Arc<Client>>>>,
    pub(super) next: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// The next connection in turn, made (again) if there is none or it broke.
    pub(super) async fn client(&self) -> Result<Arc<Client>, JournalError> {
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut slot = self.connections[turn % self.connections.len()].lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = Arc::new(
            self.target
                .connect()
                .await
                .map_err(sql("could not connect to the journal's database"))?,
        );
        *slot = Some(client.clone());
        Ok(client)
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("namespace", &self.namespace)
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

/// The TLS connector: the system's roots and `extra` (PEM), rustls with aws-lc-rs.
pub(super) fn tls(extra: &[Vec<u8>]) -> Result<MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    // A system without a certificate store still connects where TLS is not asked
    // for, or to a server whose authority was given.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for pem in extra {
        let mut found = false;
        for cert in CertificateDer::pem_slice_iter(pem) {
            found = true;
            let cert =
                cert.map_err(|e| format!("tls_root_certificate: not a PEM certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("tls_root_certificate: {e}"))?;
        }
        if !found {
            return Err("tls_root_certificate: no PEM certificate in it".into());
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
