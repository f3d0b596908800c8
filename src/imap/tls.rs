//! The TLS contexts of IMAP sessions, one per set of trust roots, shared by every session that
//! uses them.
//!
//! Building a `native_tls::TlsConnector` creates an OpenSSL `SSL_CTX` and loads the system's CA
//! store into it (the Debian bundle: about 850 KiB of parsed certificates), and each session keeps
//! its context alive for as long as it is open. Built per login, 1,000 idle sessions held about
//! 1 GiB; shared, they hold one context per `ca_file` (usually one for the whole process). A
//! connector is cheap to clone: the clone refers to the same context.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::config::ImapEndpoint;

/// Why no TLS context could be made for an endpoint: its `ca_file` unreadable or not PEM, or
/// OpenSSL refusing the set-up. `connection.rs` reports it as the login's TLS set-up error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(super) struct TlsSetupError(pub String);

/// Contexts kept at most: one per distinct `ca_file` content, and the system store alone. A
/// `ca_file` rewritten in place (a renewed private CA) adds one; past this bound the map starts
/// afresh rather than keep every old one.
const MAX_CONTEXTS: usize = 16;

/// The connectors built so far, keyed by the PEM content of the endpoint's `ca_file` (`None`:
/// the system store alone). Keyed by content, not path, so a renewed `ca_file` is used at the
/// next login without a restart, as it was when every login built its own.
#[derive(Default)]
pub(super) struct TlsContexts {
    built: Mutex<HashMap<Option<Vec<u8>>, native_tls::TlsConnector>>,
}

impl TlsContexts {
    /// The process's one cache: every IMAP login goes through it.
    pub(super) fn shared() -> &'static TlsContexts {
        static SHARED: OnceLock<TlsContexts> = OnceLock::new();
        SHARED.get_or_init(TlsContexts::default)
    }

    /// The connector for `endpoint`'s trust roots, built once per distinct `ca_file` content.
    /// The file is read at every call (it is small) so a changed file takes effect.
    pub(super) fn connector(
        &self,
        endpoint: &ImapEndpoint,
    ) -> Result<tokio_native_tls::TlsConnector, TlsSetupError> {
        let unexpected = TlsSetupError;
        let pem = match &endpoint.ca_file {
            Some(ca_file) => Some(std::fs::read(ca_file).map_err(|e| {
                unexpected(format!("cannot read ca_file {}: {e}", ca_file.display()))
            })?),
            None => None,
        };
        // A panic while holding the lock leaves a map of complete connectors: keep using it.
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(connector) = built.get(&pem) {
            return Ok(connector.clone().into());
        }
        let mut builder = native_tls::TlsConnector::builder();
        if let (Some(pem), Some(ca_file)) = (&pem, &endpoint.ca_file) {
            let cert = native_tls::Certificate::from_pem(pem).map_err(|e| {
                unexpected(format!(
                    "ca_file {} is not a PEM certificate: {e}",
                    ca_file.display()
                ))
            })?;
            builder.add_root_certificate(cert);
        }
        let connector = builder
            .build()
            .map_err(|e| unexpected(format!("cannot set up TLS: {e}")))?;
        if built.len() >= MAX_CONTEXTS {
            built.clear();
        }
        built.insert(pem, connector.clone());
        Ok(connector.into())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.built.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ImapEndpoint, Timeouts, TlsMode};
    use std::time::Duration;

    fn endpoint(ca_file: Option<std::path::PathBuf>) -> ImapEndpoint {
        ImapEndpoint {
            host: "localhost".into(),
            port: 993,
            tls: TlsMode::Implicit,
            ca_file,
            timeouts: Timeouts {
                connect: Duration::from_secs(5),
                command: Duration::from_secs(5),
            },
            logins_per_second: 10,
        }
    }

    /// A self-signed CA certificate made here, written to a file of its own.
    fn ca_file(dir: &std::path::Path, name: &str, common_name: &str) -> std::path::PathBuf {
        use openssl::{asn1::Asn1Time, bn::BigNum, hash::MessageDigest, pkey::PKey, rsa::Rsa};
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut subject = openssl::x509::X509NameBuilder::new().unwrap();
        subject.append_entry_by_text("CN", common_name).unwrap();
        let subject = subject.build();
        let mut cert = openssl::x509::X509Builder::new().unwrap();
        cert.set_version(2).unwrap();
        cert.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        cert.set_subject_name(&subject).unwrap();
        cert.set_issuer_name(&subject).unwrap();
        cert.set_pubkey(&key).unwrap();
        cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        cert.set_not_after(&Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        cert.sign(&key, MessageDigest::sha256()).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, cert.build().to_pem().unwrap()).unwrap();
        path
    }

    #[test]
    fn sessions_with_the_same_trust_roots_share_one_context() {
        let dir = tempfile::tempdir().unwrap();
        let private_ca = ca_file(dir.path(), "ca.pem", "mailintake test CA");
        let contexts = TlsContexts::default();
        for _ in 0..50 {
            contexts
                .connector(&endpoint(Some(private_ca.clone())))
                .unwrap();
            contexts.connector(&endpoint(None)).unwrap();
        }
        assert_eq!(
            contexts.len(),
            2,
            "one for the ca_file, one for the system store"
        );

        // The same certificate under another path is the same trust: no new context.
        let copy = dir.path().join("copy.pem");
        std::fs::copy(&private_ca, &copy).unwrap();
        contexts.connector(&endpoint(Some(copy))).unwrap();
        assert_eq!(contexts.len(), 2);

        // A renewed CA in the same file is used at the next login.
        let renewed = ca_file(dir.path(), "renewed.pem", "mailintake renewed CA");
        std::fs::rename(&renewed, &private_ca).unwrap();
        contexts.connector(&endpoint(Some(private_ca))).unwrap();
        assert_eq!(contexts.len(), 3);
    }

    #[test]
    fn a_bad_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let contexts = TlsContexts::default();
        let missing = dir.path().join("missing.pem");
        let error = contexts
            .connector(&endpoint(Some(missing)))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("cannot read ca_file"), "{error}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let error = contexts
            .connector(&endpoint(Some(garbage)))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("is not a PEM certificate"), "{error}");
        assert_eq!(contexts.len(), 0);
    }
}
